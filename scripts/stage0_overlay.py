"""Write the stage-0 overlay of a model that stages 1-3 trained: the stage-0 values of what those
stages train (both visual branches and the soft prompt, 4.5 MB for lion-nano), so that the
trained model plus the overlay is the stage-0 model stages 1 and 2 start from.

    python scripts/stage0_overlay.py --stage0 runs/nano/stage0-reasoned-restart8/model \\
        --trained lion_ros/assets/lion-nano --out lion_ros/assets/lion-nano/stage0.safetensors

The ViT and T5 are not stored: stages 1-3 keep them frozen, so the trained model holds their
stage-0 values (checked here, tensor by tensor). Re-run the stages from it with
`init.path=<trained> init.overlay=<out>` (scripts/train_nano.sh --from-stage0).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import save_file

from lion_ros.train.stages import stage0_overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage0", type=Path, required=True,
                        help="the stage-0 model directory stages 1 and 2 started from")
    parser.add_argument("--trained", type=Path, required=True, help="the stage-3 model directory trained from it")
    parser.add_argument("--out", type=Path, required=True, help="the overlay file to write (.safetensors)")
    args = parser.parse_args()
    overlay = stage0_overlay(args.stage0, args.trained)
    save_file({name: tensor.contiguous() for name, tensor in overlay.items()}, args.out, metadata={"format": "pt"})
    size = sum(t.numel() * t.element_size() for t in overlay.values())
    print(f"{args.out}: {len(overlay)} tensors, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
