"""Target text for boxes, via the runtime's `BoxCodec` so training targets and the parser that
reads model output agree on one format (`[x1,y1,x2,y2]`, 3 decimals, `Answer: ` prefix)."""
from __future__ import annotations

from typing import Sequence

from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.data.sample import Box


def normalize_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """Pixel xyxy to [0, 1] xyxy, clamped and rounded to 3 decimals (Shikra's norm_box_xyxy).

    Rounding here keeps the structured targets equal to what parsing the target text gives.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")

    def norm(v: float, size: float) -> float:
        return round(min(max(v / size, 0.0), 1.0), 3)

    return (norm(x1, width), norm(y1, height), norm(x2, width), norm(y2, height))


def xywh_to_normalized_xyxy(x: float, y: float, w: float, h: float, width: float, height: float) -> Box:
    """COCO / Visual Genome pixel `[x, y, w, h]` to normalised xyxy."""
    return normalize_box(x, y, x + w, y + h, width, height)


def format_boxes(boxes: Sequence[Box]) -> str:
    return DEFAULT_CODEC.format_boxes(boxes)


def rec_target(box: Box) -> str:
    return DEFAULT_CODEC.format_answer([box])


def boxes_target(boxes: Sequence[Box]) -> str:
    return DEFAULT_CODEC.format_answer(boxes)
