"""Target text for boxes, via the runtime's `BoxCodec` so training targets and the parser that
reads model output agree on one format (`[x1,y1,x2,y2]`, 3 decimals, `Answer: ` prefix)."""
from __future__ import annotations

from collections.abc import Sequence

from lion_ros import boxes
from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.data.sample import Box


def normalize_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float) -> Box:
    """Pixel xyxy to [0, 1] xyxy: the codec's clamped, ordered box, rounded to 3 decimals
    (Shikra's norm_box_xyxy). Rounding here keeps the structured targets equal to what parsing
    the target text gives."""
    return tuple(round(v, 3) for v in boxes.normalize_box((x1, y1, x2, y2), width, height))


def xywh_to_normalized_xyxy(x: float, y: float, w: float, h: float, width: float, height: float) -> Box:
    """COCO / Visual Genome pixel `[x, y, w, h]` to normalised xyxy."""
    return normalize_box(x, y, x + w, y + h, width, height)


def format_boxes(boxes: Sequence[Box]) -> str:
    return DEFAULT_CODEC.format_boxes(boxes)


def rec_target(box: Box) -> str:
    return DEFAULT_CODEC.format_answer([box])


def boxes_target(boxes: Sequence[Box]) -> str:
    return DEFAULT_CODEC.format_answer(boxes)
