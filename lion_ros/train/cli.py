"""`lion-train --config <yaml> [key.sub=value ...]`: run one training stage.

Multi-GPU / multi-node: launch the same command under torchrun, e.g.
    torchrun --nproc_per_node 8 -m lion_ros.train --config stage1.yaml
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from .config import TrainConfig
from .trainer import train


def packaged_config(name: str) -> Path:
    """A stage YAML shipped with the package, e.g. `nano-stage0.yaml`."""
    return Path(__file__).resolve().parent.parent / "configs" / "train" / name


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lion-train",
        description="Train one LION stage (stage0 pretraining for nano, stages 1-3 as in the paper, or the "
        "one-stage 'mixed' baseline) from a YAML config. Works unchanged under torchrun (DDP/FSDP).",
    )
    parser.add_argument("--config", required=True,
                        help="stage YAML: a path, or the name of a packaged one (e.g. nano-stage1.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. optim.steps=200 run.output_dir=runs/x")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = Path(args.config)
    if not path.exists():
        path = packaged_config(args.config)
    config = TrainConfig.load(path, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    result = train(config)
    if result.model_dir is not None:
        logging.info("finished at step %d (loss %.4f) in %.0f s; model in %s",
                     result.step, result.final_loss, result.seconds, result.model_dir)
    return 0
