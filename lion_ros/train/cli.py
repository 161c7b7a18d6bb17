"""`lion-train --config <yaml> [key.sub=value ...]`: run one training stage.

`lion-train --lineage <yaml> --step NAME` runs one step of a lineage (see lineage.py) instead.
Multi-GPU / multi-node: launch the same command under torchrun, e.g.
    torchrun --nproc_per_node 8 -m lion_ros.train --config lion-4b-stage1.yaml
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from .config import TrainConfig
from .lineage import find_step, load_lineage, plan
from .trainer import train


def packaged_config(name: str) -> Path:
    """A stage YAML or lineage shipped with the package, e.g. `nano-stage0.yaml`."""
    return Path(__file__).resolve().parent.parent / "configs" / "train" / name


def config_path(name: str) -> Path:
    """`name` as a path if it exists, else the packaged file of that name."""
    path = Path(name)
    return path if path.exists() else packaged_config(name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lion-train",
        description="Train one LION stage (stage0 pretraining for nano, stages 1-3 as in the paper, or the "
        "one-stage 'mixed' baseline) from a YAML config. Works unchanged under torchrun (DDP/FSDP).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="stage YAML: a path, or the name of a packaged one (e.g. nano-stage1.yaml)")
    source.add_argument("--lineage", help="lineage YAML, a path or a packaged one (nano-lineage.yaml): "
                        "train its --step, or print its --plan")
    parser.add_argument("--step", help="the lineage step to train")
    parser.add_argument("--plan", action="store_true",
                        help="print the lineage's step names in order, one line per group that runs side by side")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. optim.steps=200 run.output_dir=runs/x")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    if args.lineage is None and (args.step is not None or args.plan):
        parser.error("--step and --plan read a --lineage")
    if args.lineage is not None and (args.step is None) == (not args.plan):
        parser.error("--lineage needs either --step NAME or --plan")
    if args.plan and (args.overrides or args.print_config):
        parser.error("--plan prints the step names only; it takes no overrides or --print-config")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.lineage is None:
        config = TrainConfig.load(config_path(args.config), args.overrides)
    else:
        steps = load_lineage(config_path(args.lineage))
        if args.plan:
            print("\n".join(" ".join(group) for group in plan(steps)))
            return 0
        config = find_step(steps, args.step).config(args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    result = train(config)
    if result.model_dir is not None:
        logging.info("%s at step %d of %d (loss %.4f) in %.0f s; model in %s%s",
                     "stopped by time" if result.stopped_by_time else "finished", result.step, config.optim.steps,
                     result.final_loss, result.seconds, result.model_dir,
                     f"; best on data.val_files in {result.best_dir}" if result.best_dir else "")
    return 0
