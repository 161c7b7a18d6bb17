"""LION/Shikra target formatting: normalised `[x1,y1,x2,y2]` boxes with 3 decimals.

Kept local to the data package so the readers and the synthetic generator do not depend on
the runtime's box parser; both follow Shikra's `PlainBoxFormatter` (see the LION notes, §5).
"""
from __future__ import annotations

from typing import Sequence

from lion_ros.data.sample import Box

ANSWER_PREFIX = "Answer: "


def normalize_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """Pixel xyxy to [0, 1] xyxy, clamped and rounded to 3 decimals (Shikra's norm_box_xyxy)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")

    def norm(v: float, size: float) -> float:
        return round(min(max(v / size, 0.0), 1.0), 3)

    return (norm(x1, width), norm(y1, height), norm(x2, width), norm(y2, height))


def xywh_to_normalized_xyxy(x: float, y: float, w: float, h: float, width: float, height: float) -> Box:
    """COCO / Visual Genome pixel `[x, y, w, h]` to normalised xyxy."""
    return normalize_box(x, y, x + w, y + h, width, height)


def format_boxes(boxes: Sequence[Box]) -> str:
    """One bracket, boxes separated by `;`, coordinates by `,` without spaces."""
    return "[" + ";".join(",".join(f"{v:.3f}" for v in box) for box in boxes) + "]"


def rec_target(box: Box) -> str:
    return ANSWER_PREFIX + format_boxes([box])


def boxes_target(boxes: Sequence[Box]) -> str:
    return ANSWER_PREFIX + format_boxes(boxes)
