"""lion-ask: ask LION a question about an image file, without ROS.

    lion-ask --image kitchen.jpg "where is the red cup?"
    lion-ask --model models/lion-4b --device cuda --image kitchen.jpg --tags cup,table \\
        --save-annotated out.png --json "In the image <image>, can you locate the cup left of the bowl?"

Prints the answer, the boxes in pixels of the image with their phrase and score, and the
timings; --json prints one JSON object instead. Exit status: 0 answered, 1 failed (the message
says why), 2 bad command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lion_ros.api import Answer, TaskKind, model_generation_defaults
from lion_ros.runtime.base import GenerationSettings
from lion_ros.serving.parameters import SHIPPED_MODEL

TASKS = {"auto": None, "image": TaskKind.IMAGE, "region": TaskKind.REGION}
DEFAULTS = GenerationSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-ask",
        description="Ask LION a question about an image file; prints the answer, boxes and timings.",
        epilog=f"Default model: the shipped lion-nano ({SHIPPED_MODEL}).",
    )
    parser.add_argument("question", help="the question, e.g. \"where is the red cup?\"")
    parser.add_argument("--image", required=True, type=Path, help="image file (anything OpenCV reads)")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="model directory (default: lion-nano)")
    parser.add_argument("--tags", default="", help="comma-separated image tags for the tag prompt, e.g. cup,table")
    parser.add_argument("--task", choices=sorted(TASKS), default="auto",
                        help="router row: image-level, region-level, or inferred from the question (default)")
    parser.add_argument("--beams", type=_positive, default=DEFAULTS.num_beams,
                        help=f"beam width; 1 = greedy (default {DEFAULTS.num_beams})")
    parser.add_argument("--max-new-tokens", type=_positive, default=DEFAULTS.max_new_tokens,
                        help=f"answer length limit in tokens (default {DEFAULTS.max_new_tokens})")
    parser.add_argument("--repetition-penalty", type=_positive_float, metavar="P",
                        help="repetition penalty (default: the model's own, from its generation_config.json; "
                             f"without one the reference {DEFAULTS.repetition_penalty})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="PyTorch device (default cpu)")
    parser.add_argument("--no-box-constraint", action="store_true",
                        help="let region questions answer in free text (default: REC-style questions "
                             "are decoded as boxes)")
    parser.add_argument("--save-annotated", type=Path, metavar="PNG", help="write the image with the boxes drawn")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        answer, rgb = _ask(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"lion-ask: error: {exc}", file=sys.stderr)
        return 1
    if args.save_annotated is not None:
        from lion_ros.serving.annotate import annotate  # plain OpenCV, no ROS

        args.save_annotated.parent.mkdir(parents=True, exist_ok=True)
        annotated = annotate(rgb, answer.boxes, answer.text)
        if not cv2.imwrite(str(args.save_annotated), cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR)):
            print(f"lion-ask: error: cannot write {args.save_annotated}", file=sys.stderr)
            return 1
    print(json.dumps(answer_dict(answer), indent=2) if args.json else format_answer(answer))
    return 0


def _ask(args: argparse.Namespace) -> tuple[Answer, np.ndarray]:
    from lion_ros.runtime.pipeline import RuntimeConfig
    from lion_ros.runtime.pytorch import PyTorchRuntime  # torch is slow to import: after parsing

    if not args.model.is_dir():
        hint = " (the shipped lion-nano is produced by the training scripts)" if args.model == SHIPPED_MODEL else ""
        raise FileNotFoundError(f"model directory {args.model} does not exist{hint}; pass --model DIR")
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read an image from {args.image}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    runtime = PyTorchRuntime.from_pretrained(
        args.model, device=args.device, runtime_config=RuntimeConfig(constrain_boxes=not args.no_box_constraint)
    )
    settings = generation_settings(args)
    tags = [tag.strip() for tag in args.tags.split(",") if tag.strip()]
    answer = runtime.answer(
        runtime.encode_image(rgb), args.question, tags=tags, task=TASKS[args.task], settings=settings
    )
    return answer, rgb


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The decoding settings of the command line, over the model directory's own defaults."""
    settings = GenerationSettings(num_beams=args.beams, max_new_tokens=args.max_new_tokens,
                                  **model_generation_defaults(args.model))
    if args.repetition_penalty is not None:
        settings = dataclasses.replace(settings, repetition_penalty=args.repetition_penalty)
    return settings


def answer_dict(answer: Answer) -> dict:
    return {
        "text": answer.text,
        "task": answer.task.name.lower(),
        "boxes": [dataclasses.asdict(box) for box in answer.boxes],
        "timings": dataclasses.asdict(answer.timings),
    }


def format_answer(answer: Answer) -> str:
    t = answer.timings
    lines = [f"answer: {answer.text}", f"task: {answer.task.name.lower()}"]
    for box in answer.boxes:
        lines.append(
            f"box: {box.phrase or '-'} [{box.x1:.1f}, {box.y1:.1f}, {box.x2:.1f}, {box.y2:.1f}] px, "
            f"score {box.score:.2f}"
        )
    lines.append(
        f"timings: encode {t.image_encode_ms:.0f} ms, prefill {t.prefill_ms:.0f} ms, decode {t.decode_ms:.0f} ms, "
        f"total {t.total_ms:.0f} ms, {t.tokens_generated} tokens"
    )
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
