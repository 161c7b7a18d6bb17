"""Synthetic tabletop scenes and the instruction samples generated from them.

A pinhole camera (height `camera_height_m`, pitched down by `camera_pitch_deg`) looks at a
table that ends at a back wall. Objects stand on the table; they are drawn as 2-D shaded
silhouettes scaled by their true depth, in painter's order (far first), so occlusion, the
depth image and the visible-part boxes all agree. Everything is a pure function of the
seed, so the camera node, the trainer and the evaluator see identical scenes.

Splits: scene seeds are `base_seed * 2**40 + 3 * index + code` with code 0 (train),
1 (test) and 2 (compositional), so the splits never share a seed. Train and test scenes never
contain a held-out (colour, category) pair; every compositional scene contains at least one,
and its questions are asked about held-out objects whenever the task allows.

Questions are worded by the templates of `lion_ros.prompts` or, with `SyntheticConfig.phrasing`,
by the phrasing grammar of `lion_ros.data.phrasing`, whose held-out productions make the `phrasing`
evaluation split; the answers are the same either way.
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from lion_ros import prompts
from lion_ros.api import TaskKind
from lion_ros.data import templates
from lion_ros.data.formatting import boxes_target, format_boxes, normalize_box, rec_target
from lion_ros.data.phrasing import PHRASINGS, Phraser
from lion_ros.data.sample import Box, RegionTarget, Sample

# "cube", not "box": the word box means a bounding box in region-level prompts.
CATEGORIES: tuple[str, ...] = ("cup", "bowl", "cube", "ball", "bottle", "can", "book")
PLURALS: dict[str, str] = {
    "cup": "cups", "bowl": "bowls", "cube": "cubes", "ball": "balls",
    "bottle": "bottles", "can": "cans", "book": "books",
}
COLOURS: dict[str, tuple[int, int, int]] = {  # RGB; hues far apart so shading keeps names valid
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 210, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 210),
    "purple": (125, 55, 175),
    "pink": (240, 125, 185),
    "white": (236, 236, 236),
}
SIZES: tuple[str, ...] = ("small", "large")
# Table name (used in captions) -> base RGB; wood is the only one with grain so the name
# always matches the look.
TABLES: dict[str, tuple[int, int, int]] = {
    "wooden": (140, 95, 60),
    "grey": (128, 128, 132),
    "beige": (196, 182, 152),
    "dark": (58, 60, 66),
}
# One pair per category, each with a different colour; white is never held out, so every
# colour and every category still appears in training.
DEFAULT_HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "bowl"), ("blue", "ball"), ("green", "bottle"), ("yellow", "cup"),
    ("purple", "cube"), ("orange", "can"), ("pink", "book"),
)
SPLIT_CODES: dict[str, int] = {"train": 0, "test": 1, "compositional": 2}

# Silhouette extents in units of the object's pixel scale: (left, right, up, down) from the
# base centre, i.e. the point where the object touches the table.
_EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "cup": (0.31, 0.50, 0.77, 0.04),
    "bowl": (0.50, 0.50, 0.52, 0.0),
    "cube": (0.30, 0.45, 0.78, 0.0),
    "ball": (0.30, 0.30, 0.60, 0.0),
    "bottle": (0.15, 0.15, 1.10, 0.0),
    "can": (0.20, 0.20, 0.65, 0.0),
    "book": (0.45, 0.55, 0.36, 0.0),
}


def _tuple_of(value: Any) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)


@dataclass
class SceneConfig:
    """Camera and scene-content parameters (YAML-friendly: lists are accepted for tuples)."""

    width: int = 640
    height: int = 480
    hfov_deg: float = 60.0
    camera_height_m: float = 0.6
    camera_pitch_deg: float = 55.0
    table_length_m: float = 0.8  # forward distance from the camera foot to the back wall
    near_m: float = 0.18  # forward range where objects stand
    far_m: float = 0.6
    # Close-range objects (a robot arm's view of its workspace): a small object still spans
    # about one 16-pixel patch of a 160-pixel ViT input. At 0.09/0.15 m it covered well under
    # one and a from-scratch lion-nano never learned to look (answers image-blind).
    small_size_m: float = 0.18
    large_size_m: float = 0.28
    min_objects: int = 2
    max_objects: int = 6
    max_categories: int = 4  # per scene; few categories per scene makes counts > 1 common
    min_visible_fraction: float = 0.5
    max_box_overlap: float = 0.5  # of the smaller silhouette box; allows partial occlusion
    colour_jitter: int = 12
    categories: tuple[str, ...] = CATEGORIES
    colours: tuple[str, ...] = tuple(COLOURS)
    heldout_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT

    def __post_init__(self) -> None:
        self.categories = _tuple_of(self.categories)
        self.colours = _tuple_of(self.colours)
        self.heldout_pairs = _tuple_of(self.heldout_pairs)
        unknown = [c for c in self.categories if c not in _EXTENTS]
        unknown += [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown categories/colours in SceneConfig: {unknown}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.width < 64 or self.height < 64:
            raise ValueError(f"image too small: {self.width}x{self.height}")


SPATIAL_ANSWERS = ("plain", "grounded", "reasoned")


@dataclass
class TaskMix:
    """How many samples of each task one scene yields."""

    caption: int = 1
    spatial: int = 3
    count: int = 2
    attribute: int = 2
    rec: int = 3
    reg: int = 1
    grounded_caption: int = 1
    find_all: int = 1

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @classmethod
    def only(cls, counts: Mapping[str, int]) -> TaskMix:
        """Exactly the tasks named (the others yield nothing), as a config's `tasks:` reads.

        A partial mapping does not inherit the defaults: `{spatial: 1}` means spatial questions
        only, not spatial plus the default captions, counting, REC and so on."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(counts) - set(names))
        if unknown:
            raise ValueError(f"unknown synthetic tasks {unknown}; expected some of {names}")
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
        if bad:
            raise ValueError(f"task counts must be integers >= 0, got {bad}")
        mix = cls(**{name: int(counts.get(name, 0)) for name in names})
        if mix.total() == 0:
            raise ValueError("the synthetic task mix yields no samples; give at least one task a count > 0")
        return mix


@dataclass
class SyntheticConfig:
    scene: SceneConfig = field(default_factory=SceneConfig)
    tasks: TaskMix = field(default_factory=TaskMix)
    base_seed: int = 0
    prompt_variety: bool = True  # False: always the canonical template of each task
    # "plain": spatial questions are answered "yes"/"no" (VSR). "grounded": the answer first
    # finds both objects, then decides, e.g. "the cup[0.1,..] is left of the ball[0.6,..]: yes",
    # so the decision reads two boxes the model has just written (docs/experiments/lion-nano.md).
    spatial_answer: str = "plain"
    # The relations spatial questions ask about. With all four, the verdict is an XOR of the
    # relation's direction and the objects' order, so no single-object cue predicts it; asking
    # only "left"/"front" first is a curriculum (docs/experiments/lion-nano.md).
    spatial_relations: tuple[str, ...] = field(default_factory=lambda: tuple(RELATION_PHRASES))
    # How questions are worded (lion_ros.data.phrasing): "templates" (the prompts' templates, what the
    # shipped lineage trained on), "grammar" (the phrasing grammar's training productions) or
    # "heldout" (its held-out productions: the `phrasing` evaluation split, refused on train scenes).
    # Only the wording changes: the same scene asks about the same objects with the same answers.
    phrasing: str = "templates"

    def __post_init__(self) -> None:
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {PHRASINGS}, got {self.phrasing!r}")
        if self.spatial_answer not in SPATIAL_ANSWERS:
            raise ValueError(f"spatial_answer must be one of {SPATIAL_ANSWERS}, got {self.spatial_answer!r}")
        self.spatial_relations = tuple(self.spatial_relations)
        unknown = sorted(set(self.spatial_relations) - set(RELATION_PHRASES))
        if unknown or not self.spatial_relations:
            raise ValueError(f"spatial_relations must be a non-empty subset of {list(RELATION_PHRASES)}, "
                             f"got {list(self.spatial_relations)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SyntheticConfig:
        data = dict(data)
        return cls(
            scene=SceneConfig(**data.pop("scene", {})),
            tasks=TaskMix.only(data.pop("tasks")) if "tasks" in data else TaskMix(),
            **data,
        )


@dataclass(frozen=True)
class Intrinsics:
    """CameraInfo-style pinhole intrinsics (no distortion)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def k(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass(frozen=True)
class SceneObject:
    category: str
    colour: str
    size: str
    position_m: tuple[float, float, float]  # base centre in the camera frame (x right, y down, z fwd)
    depth_m: float  # z-depth of the drawn front surface
    full_box: tuple[int, int, int, int]  # whole (amodal) silhouette, pixels, x2/y2 exclusive
    box: tuple[int, int, int, int]  # visible part, pixels, x2/y2 exclusive
    visible_fraction: float

    @property
    def description(self) -> str:
        return f"{self.size} {self.colour} {self.category}"

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


@dataclass
class Scene:
    seed: int
    split: str
    rgb: np.ndarray  # HxWx3 uint8, RGB order
    depth: np.ndarray  # HxW float32 metres (z-depth, as in ROS depth images)
    intrinsics: Intrinsics
    objects: list[SceneObject]
    table: str

    @property
    def width(self) -> int:
        return self.intrinsics.width

    @property
    def height(self) -> int:
        return self.intrinsics.height

    def normalized_box(self, obj: SceneObject) -> Box:
        return normalize_box(*obj.box, self.width, self.height)

    @property
    def tags(self) -> list[str]:
        return [*sorted({o.category for o in self.objects}), "table"]


def scene_seed(split: str, index: int, base_seed: int = 0) -> int:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    if index < 0:
        raise ValueError("scene index must be >= 0")
    return base_seed * 2**40 + 3 * index + SPLIT_CODES[split]


def make_intrinsics(config: SceneConfig) -> Intrinsics:
    fx = (config.width / 2.0) / math.tan(math.radians(config.hfov_deg) / 2.0)
    return Intrinsics(config.width, config.height, fx, fx, (config.width - 1) / 2.0, (config.height - 1) / 2.0)


@functools.lru_cache(maxsize=8)
def _background_geometry(
    width: int, height: int, fx: float, cx: float, cy: float, cam_h: float, pitch_deg: float, table_len: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel z-depth, table mask and table-plane coordinates (lateral x, forward s).

    Shared by every scene of one camera, so it is computed once.
    """
    th = math.radians(pitch_deg)
    dx = ((np.arange(width, dtype=np.float64) - cx) / fx)[None, :]
    dy = ((np.arange(height, dtype=np.float64) - cy) / fx)[:, None]
    g_dot = math.cos(th) * dy + math.sin(th)  # ray . world-down
    f_dot = -math.sin(th) * dy + math.cos(th)  # ray . world-forward
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = np.where(g_dot > 1e-6, cam_h / g_dot, np.inf)
    forward = t_table * f_dot
    is_table = np.broadcast_to(np.isfinite(t_table) & (forward <= table_len), (height, width))
    t_wall = table_len / f_dot
    depth = np.where(is_table, t_table, np.broadcast_to(t_wall, (height, width)))
    lateral = np.where(is_table, t_table * dx, 0.0)
    forward = np.where(is_table, np.broadcast_to(forward, (height, width)), 0.0)
    out = (depth.astype(np.float32), np.array(is_table), lateral.astype(np.float32), forward.astype(np.float32))
    for a in out:
        a.setflags(write=False)  # cached and shared: callers copy before drawing
    return out


def _jitter(rgb: tuple[int, int, int], amount: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _render_background(
    config: SceneConfig, intr: Intrinsics, table: str, rng: np.random.Generator, gain_u: np.ndarray, gain_v: np.ndarray
) -> np.ndarray:
    """Wall + textured table, rendered at half resolution (texture is smooth) and upsampled."""
    _depth, is_table, lateral, forward = _background_geometry(
        intr.width, intr.height, intr.fx, intr.cx, intr.cy,
        config.camera_height_m, config.camera_pitch_deg, config.table_length_m,
    )
    w2, h2 = max(intr.width // 2, 1), max(intr.height // 2, 1)
    mask2 = is_table[::2, ::2][:h2, :w2]
    lat2 = lateral[::2, ::2][:h2, :w2]
    fwd2 = forward[::2, ::2][:h2, :w2]
    blotches = cv2.resize(rng.normal(0.0, 1.0, (max(h2 // 12, 2), max(w2 // 12, 2))).astype(np.float32), (w2, h2))
    if table == "wooden":
        period = rng.uniform(0.03, 0.06)
        tex = 0.9 + 0.08 * np.sin(2 * np.pi * fwd2 / period + 0.8 * blotches)
        plank = rng.uniform(0.12, 0.2)
        tex -= 0.18 * (np.mod(fwd2, plank) < 0.006)
    elif rng.random() < 0.4:
        tile = rng.uniform(0.08, 0.15)
        tex = 0.93 + 0.07 * ((np.floor(lat2 / tile) + np.floor(fwd2 / tile)) % 2) + 0.02 * blotches
    else:
        tex = 0.97 + 0.04 * blotches
    table_rgb = _jitter(TABLES[table], 10, rng)
    # Pale, desaturated wall so it never reads as one of the object colours.
    wall_rgb = np.full(3, rng.uniform(150, 230), np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    shade = np.where(mask2, tex, 1.0 + 0.03 * blotches)[..., None]
    base = np.where(mask2[..., None], table_rgb, wall_rgb) * shade
    base *= (gain_v[::2][:h2, None] + gain_u[::2][None, :w2])[..., None]
    small = np.clip(base, 0, 255).astype(np.uint8)
    return cv2.resize(small, (intr.width, intr.height), interpolation=cv2.INTER_LINEAR)


def _poly(points: Sequence[tuple[float, float]], bx: float, by: float, s: float) -> np.ndarray:
    return np.array([[round(bx + px * s), round(by - py * s)] for px, py in points], np.int32)


def _draw_silhouette(
    category: str, s: float, rgb: np.ndarray, patch: np.ndarray, mask: np.ndarray, bx: float, by: float
) -> None:
    """Draw one object into `patch` (float RGB) and `mask` with its base centre at (bx, by).

    Flat colours per part; the caller adds curvature shading and the outline.
    """
    dark = tuple(float(c) for c in rgb * 0.5)
    col = tuple(float(c) for c in rgb)

    def fill(points: Sequence[tuple[float, float]], colour: tuple[float, ...]) -> None:
        pts = _poly(points, bx, by, s)
        cv2.fillPoly(patch, [pts], colour)
        cv2.fillPoly(mask, [pts], 255)

    def ellipse(cxy: tuple[float, float], axes: tuple[float, float], colour: tuple[float, ...],
                start: float = 0, end: float = 360, on_mask: bool = True) -> None:
        centre = (round(bx + cxy[0] * s), round(by - cxy[1] * s))
        ax = (max(round(axes[0] * s), 1), max(round(axes[1] * s), 1))
        cv2.ellipse(patch, centre, ax, 0, start, end, colour, -1)
        if on_mask:
            cv2.ellipse(mask, centre, ax, 0, start, end, 255, -1)

    if category == "cup":
        centre = (round(bx + 0.33 * s), round(by - 0.38 * s))
        axes = (max(round(0.13 * s), 2), max(round(0.17 * s), 2))
        thick = max(round(0.06 * s), 2)
        cv2.ellipse(patch, centre, axes, 0, -90, 90, col, thick)
        cv2.ellipse(mask, centre, axes, 0, -90, 90, 255, thick)
        fill([(-0.24, 0), (0.24, 0), (0.31, 0.7), (-0.31, 0.7)], col)
        ellipse((0, 0), (0.24, 0.04), col)
        ellipse((0, 0.7), (0.31, 0.07), dark)
    elif category == "bowl":
        ellipse((0, 0.42), (0.5, 0.42), col, 0, 180)
        ellipse((0, 0.42), (0.5, 0.1), col)
        ellipse((0, 0.42), (0.45, 0.075), dark, on_mask=False)
    elif category == "cube":
        fill([(-0.3, 0), (0.3, 0), (0.3, 0.6), (-0.3, 0.6)], tuple(c * 0.9 for c in col))
        fill([(-0.3, 0.6), (0.3, 0.6), (0.45, 0.78), (-0.15, 0.78)], tuple(min(c * 1.18, 255) for c in col))
        fill([(0.3, 0), (0.45, 0.18), (0.45, 0.78), (0.3, 0.6)], tuple(c * 0.62 for c in col))
    elif category == "ball":
        ellipse((0, 0.3), (0.3, 0.3), col)
    elif category == "bottle":
        fill([(-0.15, 0), (0.15, 0), (0.15, 0.62), (-0.15, 0.62)], col)
        fill([(-0.15, 0.62), (0.15, 0.62), (0.065, 0.8), (-0.065, 0.8)], col)
        fill([(-0.065, 0.8), (0.065, 0.8), (0.065, 1.0), (-0.065, 1.0)], col)
        fill([(-0.075, 1.0), (0.075, 1.0), (0.075, 1.1), (-0.075, 1.1)], dark)
        label = tuple(float(c) for c in rgb * 0.55 + 110)
        fill([(-0.15, 0.22), (0.15, 0.22), (0.15, 0.42), (-0.15, 0.42)], label)
    elif category == "can":
        fill([(-0.2, 0.05), (0.2, 0.05), (0.2, 0.6), (-0.2, 0.6)], col)
        ellipse((0, 0.05), (0.2, 0.05), col)
        ellipse((0, 0.6), (0.2, 0.05), (190.0, 190.0, 196.0))
    elif category == "book":
        fill([(-0.45, 0), (0.45, 0), (0.45, 0.14), (-0.45, 0.14)], (228.0, 222.0, 200.0))
        fill([(-0.45, 0.0), (0.45, 0.0), (0.45, 0.03), (-0.45, 0.03)], col)
        fill([(-0.45, 0.14), (0.45, 0.14), (0.55, 0.36), (-0.35, 0.36)], col)
        fill([(0.45, 0), (0.55, 0.22), (0.55, 0.36), (0.45, 0.14)], tuple(c * 0.7 for c in col))
    else:  # guarded by SceneConfig validation
        raise ValueError(f"unknown category {category!r}")


_ROUND = {"cup", "bowl", "bottle", "can"}
_OUTLINE_KERNEL = np.ones((3, 3), np.uint8)


@dataclass
class _Placed:
    category: str
    colour: str
    size: str
    scale_px: float
    u: float  # base centre, pixels
    v: float
    position_m: tuple[float, float, float]
    roi: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive) of the silhouette patch


def _choose_objects(config: SceneConfig, split: str, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    heldout = set(config.heldout_pairs)
    allowed = [(col, cat) for col in config.colours for cat in config.categories]
    if split != "compositional":
        allowed = [p for p in allowed if p not in heldout]
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    triples: list[tuple[str, str, str]] = []
    if split == "compositional":
        pairs = [p for p in config.heldout_pairs if p[0] in config.colours and p[1] in config.categories]
        if not pairs:
            raise ValueError("the compositional split needs at least one usable heldout pair")
        col, cat = pairs[int(rng.integers(len(pairs)))]
        triples.append((SIZES[int(rng.integers(2))], col, cat))
    kmax = min(n, config.max_categories, len({p[1] for p in allowed}))
    k = int(rng.integers(min(max(1, n // 3 + 1), kmax), kmax + 1))
    pool = [str(c) for c in rng.choice(sorted({p[1] for p in allowed}), size=k, replace=False)]
    if triples and triples[0][2] not in pool:
        pool[0] = triples[0][2]
    for _ in range(50 * n):
        if len(triples) >= n:
            break
        cat = pool[int(rng.integers(len(pool)))]
        cols = [c for c, ca in allowed if ca == cat]
        t = (SIZES[int(rng.integers(2))], cols[int(rng.integers(len(cols)))], cat)
        if t not in triples:  # unique (size, colour, category) keeps full descriptions unique
            triples.append(t)
    order = rng.permutation(len(triples))
    return [triples[i] for i in order]


def _place(config: SceneConfig, intr: Intrinsics, triples: list[tuple[str, str, str]],
           rng: np.random.Generator) -> list[_Placed]:
    th = math.radians(config.camera_pitch_deg)
    h = config.camera_height_m
    placed: list[_Placed] = []
    margin = 2
    for size, colour, cat in triples:
        size_m = config.small_size_m if size == "small" else config.large_size_m
        left, right, up, down = _EXTENTS[cat]
        for _ in range(40):
            fwd = rng.uniform(config.near_m, config.far_m)
            z = fwd * math.cos(th) + h * math.sin(th)
            y = -fwd * math.sin(th) + h * math.cos(th)
            v = intr.cy + intr.fy * y / z
            s = intr.fx * size_m / z
            lo, hi = margin + left * s, intr.width - margin - right * s
            if hi <= lo:
                continue
            u = rng.uniform(lo, hi)
            roi = (math.floor(u - left * s) - 1, math.floor(v - up * s) - 1,
                   math.ceil(u + right * s) + 2, math.ceil(v + down * s) + 2)
            if roi[1] < 0 or roi[3] > intr.height:
                continue
            area = (roi[2] - roi[0]) * (roi[3] - roi[1])
            ok = True
            for p in placed:
                iw = min(roi[2], p.roi[2]) - max(roi[0], p.roi[0])
                ih = min(roi[3], p.roi[3]) - max(roi[1], p.roi[1])
                other = (p.roi[2] - p.roi[0]) * (p.roi[3] - p.roi[1])
                if iw > 0 and ih > 0 and iw * ih > config.max_box_overlap * min(area, other):
                    ok = False
                    break
            if ok:
                x = (u - intr.cx) * z / intr.fx
                placed.append(_Placed(cat, colour, size, s, u, v, (x, y, z), roi))
                break
    return placed


def _render_objects(
    config: SceneConfig, placed: list[_Placed], rgb: np.ndarray, depth: np.ndarray,
    gain_u: np.ndarray, gain_v: np.ndarray, rng: np.random.Generator,
) -> list[SceneObject] | None:
    """Painter's-order compositing; None when some object ends up too occluded."""
    owner = np.full(depth.shape, -1, np.int16)
    order = sorted(range(len(placed)), key=lambda i: -placed[i].position_m[2])
    areas = [0] * len(placed)
    depths = [0.0] * len(placed)
    full_boxes: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * len(placed)
    for i in order:
        p = placed[i]
        x1, y1, x2, y2 = p.roi
        w, h = x2 - x1, y2 - y1
        patch = np.zeros((h, w, 3), np.float32)
        mask = np.zeros((h, w), np.uint8)
        base = _jitter(COLOURS[p.colour], config.colour_jitter, rng)
        _draw_silhouette(p.category, p.scale_px, base, patch, mask, p.u - x1, p.v - y1)
        cols = np.arange(w, dtype=np.float32)
        if p.category in _ROUND:
            t = np.clip((cols - (p.u - x1 - _EXTENTS[p.category][0] * p.scale_px))
                        / (2 * _EXTENTS[p.category][0] * p.scale_px), 0, 1)
            patch *= (0.7 + 0.42 * np.abs(np.sin(np.pi * t)) ** 0.7)[None, :, None]
        elif p.category == "ball":
            rows = np.arange(h, dtype=np.float32)[:, None]
            hx, hy = p.u - x1 - 0.1 * p.scale_px, p.v - y1 - 0.42 * p.scale_px
            dist = np.sqrt((cols[None, :] - hx) ** 2 + (rows - hy) ** 2) / (0.6 * p.scale_px)
            patch *= np.clip(1.2 - 0.75 * dist, 0.45, 1.2)[..., None]
        patch *= (gain_v[y1:y2, None] + gain_u[None, x1:x2])[..., None]
        edge = (mask > 0) & ~(cv2.erode(mask, _OUTLINE_KERNEL) > 0)
        patch[edge] *= 0.45
        sel = mask > 0
        areas[i] = int(sel.sum())
        rows_any, cols_any = np.nonzero(sel.any(axis=1))[0], np.nonzero(sel.any(axis=0))[0]
        full_boxes[i] = (x1 + int(cols_any[0]), y1 + int(rows_any[0]), x1 + int(cols_any[-1]) + 1,
                         y1 + int(rows_any[-1]) + 1)
        depths[i] = float(p.position_m[2] - 0.3 * (config.large_size_m if p.size == "large" else config.small_size_m))
        rgb[y1:y2, x1:x2][sel] = np.clip(patch[sel], 0, 255).astype(np.uint8)
        owner[y1:y2, x1:x2][sel] = i
        depth[y1:y2, x1:x2][sel] = depths[i]
    objects = []
    for i, p in enumerate(placed):
        x1, y1, x2, y2 = p.roi
        ys, xs = np.nonzero(owner[y1:y2, x1:x2] == i)
        frac = len(xs) / max(areas[i], 1)
        if len(xs) == 0 or frac < config.min_visible_fraction:
            return None
        box = (x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1)
        objects.append(SceneObject(p.category, p.colour, p.size, p.position_m, depths[i], full_boxes[i], box, frac))
    return objects


def render_scene(seed: int, config: SceneConfig | None = None, split: str = "train") -> Scene:
    """Render one scene; identical pixels, depth and objects for identical arguments."""
    config = config or SceneConfig()
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    intr = make_intrinsics(config)
    rng = np.random.default_rng(seed)
    table = list(TABLES)[int(rng.integers(len(TABLES)))]
    # Brightness gradient: gain = overall + a*(u/W-0.5) + b*(v/H-0.5), kept within ~[0.7, 1.3].
    a, b = rng.uniform(-0.25, 0.25, 2)
    overall = rng.uniform(0.9, 1.08)
    gain_u = (a * (np.arange(intr.width, dtype=np.float32) / intr.width - 0.5)).astype(np.float32)
    gain_v = (overall + b * (np.arange(intr.height, dtype=np.float32) / intr.height - 0.5)).astype(np.float32)
    background = _render_background(config, intr, table, rng, gain_u, gain_v)
    bg_depth = _background_geometry(
        intr.width, intr.height, intr.fx, intr.cx, intr.cy,
        config.camera_height_m, config.camera_pitch_deg, config.table_length_m,
    )[0]
    for _ in range(100):
        placed = _place(config, intr, _choose_objects(config, split, rng), rng)
        if len(placed) < config.min_objects:
            continue
        if split == "compositional" and not any((p.colour, p.category) in config.heldout_pairs for p in placed):
            continue
        rgb, depth = background.copy(), bg_depth.copy()
        objects = _render_objects(config, placed, rgb, depth, gain_u, gain_v, rng)
        if objects is not None:
            return Scene(seed, split, rgb, depth, intr, objects, table)
    raise RuntimeError(f"could not lay out a scene for seed {seed}; the config is too crowded")


# The "object" patch labels, one column each for category, colour and size: value v of column k
# names OBJECT_LABEL_NAMES[k][v - 1], 0 means no object.
OBJECT_LABEL_NAMES: tuple[tuple[str, ...], ...] = (CATEGORIES, tuple(COLOURS), SIZES)
OBJECT_LABEL_KINDS: tuple[str, ...] = ("category", "colour", "size")  # what each column names


def label_kind(word: str) -> str | None:
    """Which OBJECT_LABEL_KINDS `word` names ("cup" -> category), or None; an attribute
    question's answer says exactly what it asked about."""
    for kind, names in zip(OBJECT_LABEL_KINDS, OBJECT_LABEL_NAMES):
        if word in names:
            return kind
    return None

# Per-patch label groups for dense supervision: name -> number of classes of each label in the
# group, class 0 meaning "no object under this patch". "object" names the object; "box" gives the
# first two decimals of its normalized x1, y1, x2, y2 (the digits a box answer is written with);
# "depth" its near-to-far rank in the scene; "count" how many objects share its category and its
# colour (ranks and counts above PATCH_COUNT_CAP share its class). Geometry and counts are what
# region answers, spatial questions and counting read.
PATCH_COUNT_CAP = 8
PATCH_TARGETS: dict[str, tuple[int, ...]] = {
    "object": tuple(len(names) + 1 for names in OBJECT_LABEL_NAMES),
    "box": (11,) * 8,
    "depth": (PATCH_COUNT_CAP + 1,),
    "count": (PATCH_COUNT_CAP + 1,) * 2,
}


def patch_label_classes(targets: Sequence[str]) -> tuple[int, ...]:
    """Class counts of the columns `patch_labels(..., targets)` returns, in order."""
    unknown = [t for t in targets if t not in PATCH_TARGETS]
    if unknown or not targets:
        raise ValueError(f"dense targets must be a non-empty subset of {list(PATCH_TARGETS)}, got {list(targets)}")
    return tuple(n for t in targets for n in PATCH_TARGETS[t])


def _object_labels(scene: Scene, obj: SceneObject, targets: Sequence[str]) -> list[int]:
    labels: list[int] = []
    for target in targets:
        if target == "object":
            labels += [names.index(value) + 1
                       for names, value in zip(OBJECT_LABEL_NAMES, (obj.category, obj.colour, obj.size))]
        elif target == "box":
            for coordinate in scene.normalized_box(obj):
                hundredths = min(int(coordinate * 100), 99)
                labels += [hundredths // 10 + 1, hundredths % 10 + 1]
        elif target == "depth":
            labels.append(min(1 + sum(o.depth_m < obj.depth_m for o in scene.objects), PATCH_COUNT_CAP))
        else:
            labels += [min(sum(o.category == obj.category for o in scene.objects), PATCH_COUNT_CAP),
                       min(sum(o.colour == obj.colour for o in scene.objects), PATCH_COUNT_CAP)]
    return labels


def _patch_centres(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """[grid, grid] x and y of each patch centre of a `grid`x`grid` layout, in [0, 1] image units."""
    centres = (np.arange(grid) + 0.5) / grid
    return np.meshgrid(centres, centres)


def patch_labels(scene: Scene, grid: int, targets: Sequence[str] = ("object",)) -> np.ndarray:
    """[grid*grid, len(patch_label_classes(targets))] int64 labels of a `grid`x`grid` patch layout
    of the (squashed) image, describing the object whose visible box holds the patch centre,
    nearest object first; 0 where the centre is on the table or the wall.

    Dense targets for stage 0 of a model without a pretrained ViT: every patch of every image
    gets labels, where the question-answer loss gives one weak signal per image."""
    u, v = _patch_centres(grid)
    u, v = u * scene.width, v * scene.height
    labels = np.zeros((grid, grid, len(patch_label_classes(targets))), np.int64)
    for obj in sorted(scene.objects, key=lambda o: -o.depth_m):  # painter's order: near overwrites far
        x1, y1, x2, y2 = obj.box
        inside = (u >= x1) & (u < x2) & (v >= y1) & (v < y2)
        labels[inside] = _object_labels(scene, obj, targets)
    return labels.reshape(grid * grid, -1)


def patch_mask(boxes: Sequence[Box], grid: int) -> np.ndarray:
    """[grid*grid] bool: which patches of a `grid`x`grid` layout of the (squashed) image have their
    centre inside one of the normalised `boxes` (a sample's `evidence`)."""
    u, v = _patch_centres(grid)
    inside = np.zeros((grid, grid), bool)
    for x1, y1, x2, y2 in boxes:
        inside |= (u >= x1) & (u < x2) & (v >= y1) & (v < y2)
    return inside.reshape(-1)


# ---------------------------------------------------------------------------------------
# Sample generation
# ---------------------------------------------------------------------------------------

_ATTR_FORMS: tuple[tuple[str, ...], ...] = ((), ("colour",), ("size",), ("size", "colour"))
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "front": ("in front of", "closer to the camera than"),
    "behind": ("behind", "farther from the camera than"),
}
_DEPTH_MARGIN_M = 0.06


def _describe(obj: SceneObject, attrs: Sequence[str], noun: str | None = None) -> str:
    words = [obj.size] if "size" in attrs else []
    if "colour" in attrs:
        words.append(obj.colour)
    words.append(noun if noun is not None else obj.category)
    return " ".join(words)


def _matches(obj: SceneObject, ref: SceneObject, attrs: Sequence[str], with_category: bool) -> bool:
    if with_category and obj.category != ref.category:
        return False
    return all(getattr(obj, a) == getattr(ref, a) for a in attrs)


def _unique_forms(obj: SceneObject, objects: Sequence[SceneObject], exclude: Sequence[str] = (),
                  with_category: bool = True) -> list[tuple[str, ...]]:
    forms = []
    for attrs in _ATTR_FORMS:
        if any(a in exclude for a in attrs) or (not with_category and not attrs):
            continue
        if sum(_matches(o, obj, attrs, with_category) for o in objects) == 1:
            forms.append(attrs)
    return forms


def spatial_relation(rel: str, a: SceneObject, b: SceneObject) -> bool | None:
    """Whether `a` is `rel` (left/right/front/behind) of `b` as seen from the camera: True or
    False when clear, None when too close to call (such pairs are never asked about)."""
    if rel in ("left", "right"):
        margin = 0.25 * ((a.box[2] - a.box[0]) + (b.box[2] - b.box[0])) / 2
        dx = a.centre_x - b.centre_x
        if abs(dx) <= margin:
            return None
        return (dx < 0) == (rel == "left")
    dz = a.position_m[2] - b.position_m[2]
    if abs(dz) <= _DEPTH_MARGIN_M:
        return None
    return (dz < 0) == (rel == "front")


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


class _SceneSampler:
    """Builds the samples of one scene; every random choice goes through `rng`."""

    def __init__(self, scene: Scene, rng: np.random.Generator, heldout: Sequence[tuple[str, str]],
                 variety_seed: int | None, id_prefix: str, spatial_answer: str = "plain",
                 spatial_relations: Sequence[str] = tuple(RELATION_PHRASES), phrasing: str = "templates") -> None:
        self.scene = scene
        self.phrasing = phrasing
        self.spatial_answer = spatial_answer
        self.spatial_relations = spatial_relations
        self.objs = scene.objects
        self.rng = rng
        self.variety_seed = variety_seed
        self.id_prefix = id_prefix
        held = set(heldout)
        focus = [o for o in self.objs if (o.colour, o.category) in held] if scene.split == "compositional" else []
        self.focus = focus or list(self.objs)
        self.left_to_right = sorted(self.objs, key=lambda o: (o.box[0], o.box[1]))

    def _choice(self, items: Sequence[Any]) -> Any:
        return items[int(self.rng.integers(len(items)))]

    def _sid(self, slot: int) -> str:
        return f"{self.id_prefix}/{slot}"

    def _template(self, slot: int) -> int:
        return templates.choice_for(self._sid(slot), self.variety_seed)

    def _phraser(self, slot: int) -> Phraser | None:
        """The grammar's phraser for `slot`, None when questions come from the templates. Its draws
        use their own random stream, so `self.rng` (which objects are asked about) runs exactly as
        with templates and a scene asks the same questions in every phrasing."""
        if self.phrasing == "templates":
            return None
        return Phraser.for_sample(f"{self.scene.seed}/{slot}", held_out=self.phrasing == "heldout")

    def _sample(self, slot: int, question: str, task: TaskKind, task_name: str, answer: str,
                about: Sequence[SceneObject], **kwargs: Any) -> Sample:
        """about: the objects the answer depends on (the sample's `evidence`)."""
        sid = self._sid(slot)
        return Sample(
            id=sid, question=question, answer=answer, task=task, task_name=task_name,
            source="synthetic", split=self.scene.split, image=self.scene.rgb,
            image_size=(self.scene.width, self.scene.height), tags=self.scene.tags,
            answers=kwargs.pop("answers", [answer]), evidence=[self.scene.normalized_box(o) for o in about],
            **kwargs,
        )

    def _ref(self, obj: SceneObject) -> str:
        """A random uniquely-referring description ("the cup", "the red cup", ...); the full
        description is always among them because scenes never repeat (size, colour, category)."""
        return "the " + _describe(obj, self._choice(_unique_forms(obj, self.objs)))

    def caption(self, slot: int) -> Sample:
        phrases = [f"a {o.description}" for o in self.left_to_right]
        text = f"{_join(phrases)} on a {self.scene.table} table."
        text = text[0].upper() + text[1:]
        phraser = self._phraser(slot)
        question = phraser.question("caption") if phraser else prompts.caption_prompt(self._template(slot))
        return self._sample(slot, question, TaskKind.IMAGE, "caption", text, self.objs)

    def grounded_caption(self, slot: int) -> Sample:
        regions = [RegionTarget(f"a {o.description}", self.scene.normalized_box(o)) for o in self.left_to_right]
        parts = [f"{r.phrase}{format_boxes([r.box])}" for r in regions]  # BoxCodec's grounded form
        text = f"{_join(parts)} on a {self.scene.table} table."
        text = text[0].upper() + text[1:]
        phraser = self._phraser(slot)
        question = (phraser.question("grounded_caption") if phraser
                    else prompts.grounded_caption_prompt(self._template(slot)))
        return self._sample(slot, question, TaskKind.REGION, "grounded_caption", text, self.objs, regions=regions)

    def spatial(self, slot: int) -> Sample | None:
        want = bool(self.rng.random() < 0.5)
        candidates: dict[bool, list[tuple[SceneObject, SceneObject, str]]] = {True: [], False: []}
        for a in self.objs:
            for b in self.objs:
                if a is b:
                    continue
                for rel in self.spatial_relations:
                    truth = spatial_relation(rel, a, b)
                    if truth is not None:
                        candidates[truth].append((a, b, rel))
        pool = candidates[want] or candidates[not want]
        if not pool:
            return None
        a, b, rel = self._choice(pool)
        truth = bool(spatial_relation(rel, a, b))
        ref_a, ref_b = self._ref(a), self._ref(b)
        phrase = self._choice(RELATION_PHRASES[rel])
        form = self._choice(("Is {a} {rel} {b}?", "Is it true that {a} is {rel} {b}?"))
        question = form.format(a=ref_a, rel=phrase, b=ref_b)
        phraser = self._phraser(slot)
        if phraser:
            question = phraser.question("yesno", {"a": ref_a, "rel": phraser.relation(rel), "b": ref_b})
        answer = "yes" if truth else "no"
        if self.spatial_answer == "grounded":
            box_a, box_b = (format_boxes([self.scene.normalized_box(o)]) for o in (a, b))
            answer = f"{ref_a}{box_a} is {phrase} {ref_b}{box_b}: {answer}"
        elif self.spatial_answer == "reasoned":
            first, second = ("left", "right") if rel in ("left", "right") else ("front", "behind")
            stated = first if spatial_relation(first, a, b) else second
            va, vb = (self._coordinate(rel, o) for o in (a, b))
            answer = f"{ref_a} {va:02d}, {ref_b} {vb:02d}: {stated}, {answer}"
        return self._sample(slot, question, TaskKind.IMAGE, "yesno", answer, (a, b), yes_no=truth)

    def _coordinate(self, rel: str, obj: SceneObject) -> int:
        """What a reasoned spatial answer writes for `obj`, 0-99: for left/right its centre in
        percent of the image width (smaller = further left); for front/behind its bottom edge in
        percent of the image height (larger = nearer: the camera looks down on the table, and this
        order matches the depth labels on 3490 of 3492 clear train pairs)."""
        if rel in ("left", "right"):
            return min(99, round(100 * obj.centre_x / self.scene.width))
        return min(99, round(100 * obj.box[3] / self.scene.height))

    def count(self, slot: int) -> Sample:
        if self.rng.random() < 0.7:
            present = sorted({o.category for o in self.objs})
            absent = [c for c in CATEGORIES if c not in present]
            cat = self._choice(absent) if absent and self.rng.random() < 0.15 else self._choice(present)
            counted = [o for o in self.objs if o.category == cat]
            form = self._choice(("How many {p} are there?", "How many {p} are in the image?", "Count the {p}."))
            question = form.format(p=PLURALS[cat])
            what, colour = PLURALS[cat], None
        else:
            colour = self._choice(sorted({o.colour for o in self.objs}))
            counted = [o for o in self.objs if o.colour == colour]
            what = f"{colour} objects"
            question = f"How many {what} are there?"
        phraser = self._phraser(slot)
        if phraser:
            question = phraser.question("count", {"xs": f"{colour} {phraser.noun(plural=True)}" if colour else what})
        n = len(counted)
        return self._sample(slot, question, TaskKind.IMAGE, "count", str(n), counted, count=n)

    def attribute(self, slot: int) -> Sample | None:
        kinds = ["colour", "size", "category"]
        self.rng.shuffle(kinds)
        for kind in kinds:
            # Pick among objects that can be named without the asked attribute, so that
            # colour questions are not starved when categories repeat.
            if kind == "category":
                options = [(o, f) for o in self.focus for f in _unique_forms(o, self.objs, with_category=False)]
            else:
                options = [(o, f) for o in self.focus for f in _unique_forms(o, self.objs, exclude=(kind,))]
            if not options:
                continue
            target, attrs = self._choice(options)
            if kind == "category":
                desc = _describe(target, attrs, noun="object")
                form = self._choice(("What is the {d}?", "What kind of object is the {d}?"))
                question, answer = form.format(d=desc), target.category
            else:
                ref = "the " + _describe(target, attrs)
                if kind == "colour":
                    form = self._choice(("What colour is {r}?", "What color is {r}?", "Which colour is {r}?"))
                    answer = target.colour
                else:
                    form = self._choice(("What size is {r}?", "Is {r} small or large?"))
                    answer = target.size
                question = form.format(r=ref)
            phraser = self._phraser(slot)
            if phraser and kind == "category":
                question = phraser.question("category", {"d": "the " + _describe(target, attrs, noun=phraser.noun())})
            elif phraser:
                question = phraser.question(kind, {"x": ref})
            return self._sample(slot, question, TaskKind.IMAGE, "attribute", answer, (target,))
        return None

    def _relational_expressions(self, target: SceneObject) -> list[tuple[str, str, str]]:
        """(template expression, relation, anchor reference) of each relational expression that
        picks `target` out uniquely."""
        out = []
        same = [o for o in self.objs if o.category == target.category and o is not target]
        for anchor in self.objs:
            if anchor.category == target.category:
                continue  # "the cup left of the cup" reads badly
            for rel in RELATION_PHRASES:
                if spatial_relation(rel, target, anchor) is not True:
                    continue
                if all(spatial_relation(rel, o, anchor) is False for o in same):
                    phrase = self._choice(RELATION_PHRASES[rel])
                    anchor_ref = self._ref(anchor)
                    out.append((f"the {target.category} {phrase} {anchor_ref}", rel, anchor_ref))
        return out

    def rec(self, slot: int) -> Sample:
        target = self._choice(self.focus)
        relational = self._relational_expressions(target) if self.rng.random() < 0.35 else []
        chosen = self._choice(relational) if relational else None
        expr = chosen[0] if chosen else self._ref(target)
        box = self.scene.normalized_box(target)
        phraser = self._phraser(slot)
        if phraser:
            if chosen:
                expr = f"the {target.category} {phraser.relation(chosen[1])} {chosen[2]}"
            question = phraser.question("rec", {"x": expr})
        else:
            question = prompts.rec_prompt(expr, self._template(slot))
        return self._sample(slot, question, TaskKind.REGION, "rec", rec_target(box), (target,),
                            regions=[RegionTarget(expr, box)])

    def reg(self, slot: int) -> Sample:
        target = self._choice(self.focus)
        box = self.scene.normalized_box(target)
        answer = f"the {target.description}"
        phraser = self._phraser(slot)
        question = (phraser.question("reg", {"box": format_boxes([box])}) if phraser
                    else prompts.reg_prompt(box, self._template(slot)))
        return self._sample(slot, question, TaskKind.REGION, "reg", answer, (target,),
                            regions=[RegionTarget(answer, box)])

    def find_all(self, slot: int) -> Sample:
        if self.rng.random() < 0.75:
            cat = self._choice(sorted({o.category for o in self.focus}))
            chosen = [o for o in self.left_to_right if o.category == cat]
            what, colour = PLURALS[cat], None
        else:
            colour = self._choice(sorted({o.colour for o in self.focus}))
            chosen = [o for o in self.left_to_right if o.colour == colour]
            what = f"{colour} objects"
        regions = [RegionTarget(f"the {o.description}", self.scene.normalized_box(o)) for o in chosen]
        phraser = self._phraser(slot)
        if phraser:
            question = phraser.question("find_all", {"xs": f"{colour} {phraser.noun(plural=True)}" if colour else what})
        else:
            question = prompts.find_all_prompt(what, self._template(slot))
        return self._sample(slot, question, TaskKind.REGION, "find_all", boxes_target([r.box for r in regions]), chosen,
                            regions=regions, count=len(regions))


def _check_phrasing(phrasing: str, split: str) -> None:
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    if phrasing == "heldout" and split == "train":
        raise ValueError("held-out phrasings are for evaluation only: no train scene is ever asked in them")


def generate_samples(scene: Scene, tasks: TaskMix | None = None, heldout: Sequence[tuple[str, str]] = DEFAULT_HELDOUT,
                     variety_seed: int | None = 0, id_prefix: str | None = None,
                     spatial_answer: str = "plain",
                     spatial_relations: Sequence[str] = tuple(RELATION_PHRASES),
                     phrasing: str = "templates") -> list[Sample]:
    """All samples of one scene, `tasks.total()` of them, in TaskMix field order.

    A task that a scene cannot support (e.g. no clear spatial relation) falls back to REC,
    which every scene supports, so the per-scene sample count is fixed. `phrasing`: see
    `SyntheticConfig.phrasing`; `variety_seed` only varies the templates.
    """
    _check_phrasing(phrasing, scene.split)
    tasks = tasks or TaskMix()
    sampler = _SceneSampler(scene, np.random.default_rng([scene.seed, 1]), heldout, variety_seed,
                            id_prefix or f"synthetic/{scene.split}/{scene.seed}", spatial_answer, spatial_relations,
                            phrasing)
    makers: dict[str, Callable[[int], Sample | None]] = {
        "caption": sampler.caption, "spatial": sampler.spatial, "count": sampler.count,
        "attribute": sampler.attribute, "rec": sampler.rec, "reg": sampler.reg,
        "grounded_caption": sampler.grounded_caption, "find_all": sampler.find_all,
    }
    samples: list[Sample] = []
    for f in fields(tasks):
        for _ in range(getattr(tasks, f.name)):
            slot = len(samples)
            samples.append(makers[f.name](slot) or sampler.rec(slot))
    return samples


class SyntheticDataset:
    """`num_scenes` scenes of one split, `config.tasks.total()` samples each, rendered lazily.

    Index i is sample `i % k` of scene `first_scene + i // k`. The last few scenes are cached
    because consecutive indices usually hit the same scene.
    """

    def __init__(self, split: str, num_scenes: int, config: SyntheticConfig | None = None,
                 first_scene: int = 0, cache_size: int = 4) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
        self.split = split
        self.num_scenes = num_scenes
        self.config = config or SyntheticConfig()
        _check_phrasing(self.config.phrasing, split)  # at construction, before a trainer starts its workers
        self.first_scene = first_scene
        self.per_scene = self.config.tasks.total()
        if self.per_scene <= 0:
            raise ValueError("TaskMix yields no samples")
        self._cache: OrderedDict[int, tuple[Scene, list[Sample]]] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return self.num_scenes * self.per_scene

    def _scene_entry(self, scene_index: int) -> tuple[Scene, list[Sample]]:
        if scene_index in self._cache:
            self._cache.move_to_end(scene_index)
            return self._cache[scene_index]
        cfg = self.config
        seed = scene_seed(self.split, self.first_scene + scene_index, cfg.base_seed)
        scene = render_scene(seed, cfg.scene, self.split)
        samples = generate_samples(
            scene, cfg.tasks, cfg.scene.heldout_pairs, cfg.base_seed if cfg.prompt_variety else None,
            id_prefix=f"synthetic/{self.split}/{self.first_scene + scene_index}", spatial_answer=cfg.spatial_answer,
            spatial_relations=cfg.spatial_relations, phrasing=cfg.phrasing,
        )
        self._cache[scene_index] = (scene, samples)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return scene, samples

    def scene(self, scene_index: int) -> Scene:
        return self._scene_entry(scene_index)[0]

    def scene_samples(self, scene_index: int) -> list[Sample]:
        return self._scene_entry(scene_index)[1]

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        scene_index, slot = divmod(index, self.per_scene)
        return self._scene_entry(scene_index)[1][slot]

    def __iter__(self) -> Iterator[Sample]:
        for scene_index in range(self.num_scenes):
            yield from self._scene_entry(scene_index)[1]
