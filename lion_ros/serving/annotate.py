"""Boxes and labels drawn on an RGB image (for the ~/annotated topic and the demo)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lion_ros.api import GroundedBox

_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def annotate(rgb: np.ndarray, boxes: Sequence[GroundedBox], caption: str = "",
             positions: Sequence[tuple[float, float, float] | None] | None = None) -> np.ndarray:
    out = rgb.copy()
    scale = max(0.4, min(out.shape[:2]) / 800.0)
    thickness = max(1, round(scale * 2))
    for i, box in enumerate(boxes):
        colour = _COLOURS[i % len(_COLOURS)]
        p1, p2 = (round(box.x1), round(box.y1)), (round(box.x2), round(box.y2))
        cv2.rectangle(out, p1, p2, colour, thickness)
        label = f"{box.phrase} {box.score:.2f}"
        position = positions[i] if positions else None
        if position is not None:
            label += f" {position[2]:.2f}m"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(p1[1] - th - base - 2, 0)
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, label, (p1[0] + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    if caption:
        cv2.putText(out, caption[:120], (4, out.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8,
                    (255, 255, 0), thickness, cv2.LINE_AA)
    return out
