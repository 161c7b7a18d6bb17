"""3D positions of boxes from a depth image and pinhole intrinsics (camera optical frame)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# The statistic uses the central part of the box first: a box around a thin or round object
# contains mostly background at its edges, and the median of the middle is the object's depth.
_CENTRE_FRACTION = 0.5


DepthRange = tuple[float, float]  # metres; readings outside count as no reading
ANY_DEPTH: DepthRange = (0.0, math.inf)


def _median_in(depth_m: np.ndarray, x1: float, y1: float, x2: float, y2: float,
               depth_range: DepthRange) -> float | None:
    h, w = depth_m.shape
    c0, c1 = int(np.clip(np.floor(x1), 0, w)), int(np.clip(np.ceil(x2), 0, w))
    r0, r1 = int(np.clip(np.floor(y1), 0, h)), int(np.clip(np.ceil(y2), 0, h))
    patch = depth_m[r0:r1, c0:c1]
    with np.errstate(invalid="ignore"):  # NaN compares False: it is no reading, as intended
        valid = patch[(patch > 0) & (patch >= depth_range[0]) & (patch <= depth_range[1])]
    return float(np.median(valid)) if valid.size else None


def box_depth(depth_m: np.ndarray, box: Sequence[float], image_size: tuple[int, int],
              depth_range: DepthRange = ANY_DEPTH) -> float | None:
    """Robust depth (metres) of a box given in pixels of an image of `image_size` (w, h).

    The depth image may have another resolution (registered, same field of view): the box is
    scaled onto it. Zeros, NaN, inf and readings outside `depth_range` are ignored; None when
    no valid pixel is left.
    """
    sx, sy = depth_m.shape[1] / image_size[0], depth_m.shape[0] / image_size[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    mx, my = (x2 - x1) * (1 - _CENTRE_FRACTION) / 2, (y2 - y1) * (1 - _CENTRE_FRACTION) / 2
    centre = _median_in(depth_m, x1 + mx, y1 + my, x2 - mx, y2 - my, depth_range)
    return centre if centre is not None else _median_in(depth_m, x1, y1, x2, y2, depth_range)


def scaled_k(k: Sequence[float], info_size: tuple[int, int], image_size: tuple[int, int]) -> list[float]:
    """Intrinsics of CameraInfo `k` (row-major 3x3) rescaled to an image of another resolution."""
    if info_size == image_size or 0 in info_size:
        return list(k)
    sx, sy = image_size[0] / info_size[0], image_size[1] / info_size[1]
    return [k[0] * sx, k[1], k[2] * sx, k[3], k[4] * sy, k[5] * sy, k[6], k[7], k[8]]


def back_project(u: float, v: float, z: float, k: Sequence[float]) -> tuple[float, float, float]:
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    return ((u - cx) * z / fx, (v - cy) * z / fy, z)


def intrinsics_valid(k: Sequence[float] | None) -> bool:
    """A usable pinhole K: finite positive focal lengths, finite principal point. An
    uncalibrated camera publishes zeros; a broken driver NaN."""
    if k is None or len(k) != 9:
        return False
    fx, cx, fy, cy = (float(v) for v in (k[0], k[2], k[4], k[5]))
    return fx > 0 and fy > 0 and all(math.isfinite(v) for v in (fx, cx, fy, cy))


def box_position(depth_m: np.ndarray | None, k: Sequence[float] | None,
                 box: Sequence[float], image_size: tuple[int, int],
                 depth_range: DepthRange = ANY_DEPTH) -> tuple[float, float, float] | None:
    """Point (x, y, z) in metres at the box centre; None without depth, usable intrinsics, a
    valid reading in `depth_range`, or a finite result."""
    if depth_m is None or not intrinsics_valid(k):
        return None
    z = box_depth(depth_m, box, image_size, depth_range)
    if z is None:
        return None
    # Box edges are continuous coordinates (pixel i spans [i, i+1)); K's principal point uses
    # pixel centres (pixel i is at i), hence the half-pixel shift.
    point = back_project((box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5, z, k)
    return point if all(math.isfinite(v) for v in point) else None
