"""Node parameters: one dataclass per node is the single source of names, types, defaults,
ranges and descriptions. The nodes declare their ROS parameters from it, the launch-file and
config tests check against it, and the README table is generated from it (`markdown_table`).

ROS names may contain dots (`generation.num_beams`, a nested mapping in YAML); the dataclass
field uses an underscore and records the ROS name in its metadata.
"""
from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from lion_ros.api import GenerationSettings, model_generation_defaults
from lion_ros.runtime.backends import BACKENDS
from lion_ros.serving.errors import AskError, ErrorCode

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = PACKAGE_DIR / "assets" / "lion-nano"


def param(default: Any, description: str, *, name: str | None = None,
          range: tuple[float, float] | None = None, choices: Sequence[str] = ()) -> Any:
    """A dataclass field that is also a ROS parameter."""
    meta = {"description": description, "name": name, "range": range, "choices": tuple(choices)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    name: str  # ROS name
    attr: str  # dataclass field
    default: Any
    type: type  # bool, int, float, str or list
    description: str
    range: tuple[float, float] | None  # of the value, or of each element of a list
    choices: tuple[str, ...]
    item_type: type = str  # element type of a list: str or float

    def validate(self, value: Any) -> Any:
        """Return `value` coerced to this parameter's type; ValueError when out of range."""
        if self.type is list:
            # Double arrays set through a parameter message arrive as array.array; YAML gives lists.
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{self.name}: expected a list, got {value!r}")
            value = [_coerce(self.name, v, self.item_type) for v in value]
        else:
            value = _coerce(self.name, value, self.type)
        for item in value if self.type is list else [value]:
            if self.range is not None and not (self.range[0] <= item <= self.range[1]):
                raise ValueError(f"{self.name}: {item} is outside [{self.range[0]}, {self.range[1]}]")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name}: {value!r} is not one of {', '.join(self.choices)}")
        return value


def _coerce(name: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ValueError(f"{name}: expected {expected.__name__}, got {value!r}")
    return value


def specs(cls: type) -> list[ParamSpec]:
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        is_list = isinstance(default, list)
        out.append(ParamSpec(
            name=f.metadata.get("name") or f.name, attr=f.name, default=default,
            type=list if is_list else type(default),
            description=f.metadata["description"], range=f.metadata["range"],
            choices=f.metadata["choices"], item_type=type(default[0]) if is_list and default else str))
    return out


def from_mapping(cls: type, values: Mapping[str, Any]):
    """Build a parameter dataclass from ROS-named values (missing names keep their default)."""
    unknown = set(values) - {s.name for s in specs(cls)}
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
    kwargs = {s.attr: s.validate(values[s.name]) for s in specs(cls) if s.name in values}
    return cls(**kwargs)


def flatten_yaml(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{generation: {num_beams: 1}}` -> `{"generation.num_beams": 1}` (ROS YAML nesting)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_yaml(value, name + "."))
        else:
            out[name] = value
    return out


# How `ros2 param describe` names our Python types.
_ROS_TYPE_NAMES = {bool: "bool", int: "integer", float: "double", str: "string"}


def markdown_table(cls: type) -> str:
    rows = ["| Parameter | Type | Default | Description |", "|---|---|---|---|"]
    for s in specs(cls):
        extra = f" Range {s.range[0]}..{s.range[1]}." if s.range else ""
        extra += f" One of: {', '.join(s.choices)}." if s.choices else ""
        type_name = f"{_ROS_TYPE_NAMES[s.item_type]}[]" if s.type is list else _ROS_TYPE_NAMES[s.type]
        cell = f"{s.description}{extra}".replace("|", "\\|")
        rows.append(f"| `{s.name}` | {type_name} | `{s.default!r}` | {cell} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class StandingQuerySpec:
    camera: str  # "" = default camera
    period_s: float
    question: str
    task: int = 0  # Ask TASK_* value

    @classmethod
    def parse(cls, text: str) -> StandingQuerySpec:
        """Parse the parameter encoding "camera|period_s|question" (camera may be empty)."""
        parts = text.split("|", 2)
        if len(parts) != 3:
            raise ValueError(f"standing query {text!r}: expected 'camera|period_s|question'")
        camera, period, question = (p.strip() for p in parts)
        try:
            period_s = float(period)
        except ValueError:
            raise ValueError(f"standing query {text!r}: period_s {period!r} is not a number") from None
        return cls(camera, period_s, question)


@dataclass
class NodeParams:
    """Parameters of lion_node (read on configure, except the two read at start-up; change
    them, then cleanup + configure)."""

    autostart: bool = param(True, "Configure and activate on start-up, so `ros2 run` just works.")
    model_path: str = param("", "Model directory; empty = the shipped lion-nano "
                                "(<package>/assets/lion-nano).")
    backend: str = param("pytorch", "Inference backend.", choices=BACKENDS)
    device: str = param("cpu", "Device the backend runs on.", choices=("cpu", "cuda"))
    precision: str = param("auto", "auto = the model's policy (mixed on CUDA, fp32 on CPU); mixed = the "
                                   "official ViT fp16 + T5 bf16 (PyTorch); fp16 = engine precision "
                                   "(TensorRT, ONNX Runtime).", choices=("auto", "fp32", "mixed", "fp16"))
    cuda_graphs: bool = param(True, "TensorRT backend: replay the T5 decoder step from one CUDA graph "
                                    "per input-shape bucket (needs a CUDA build of torch).")
    cameras: list = param(["camera"], "Camera names; each subscribes <name>/image (or "
                                      "<name>/image/compressed), <name>/depth, <name>/camera_info. "
                                      "The first is the default camera.")
    image_transport: str = param("raw", "raw: sensor_msgs/Image on <name>/image; compressed: "
                                        "sensor_msgs/CompressedImage on <name>/image/compressed.",
                                 choices=("raw", "compressed"))
    use_depth: bool = param(True, "Subscribe <name>/depth and <name>/camera_info for 3D positions.")
    qos_reliability: str = param("best_effort", "Reliability of the camera subscriptions (depth 1). "
                                                "best_effort also matches reliable publishers.",
                                 choices=("best_effort", "reliable"))
    queue_size: int = param(4, "Requests that may wait behind the running one; more are rejected "
                               "with BUSY.", range=(1, 64))
    ask_service_depth: int = param(256, "Middleware (DDS) history depth of the ~/ask service: requests "
                                        "that may arrive in one burst before the node takes them. "
                                        "Each is answered (BUSY past queue_size); past this depth the "
                                        "middleware drops the oldest without a reply. Read at start-up.",
                                   range=(1, 65536))
    ask_action_depth: int = param(256, "Middleware (DDS) history depth of the ~/ask action's goal, "
                                       "cancel and result services: goals (and result requests) that "
                                       "may arrive in one burst, as ask_service_depth. Read at start-up.",
                                  range=(1, 65536))
    request_timeout_s: float = param(30.0, "Default time limit per request, queueing included.",
                                     range=(0.1, 3600.0))
    max_frame_age_s: float = param(2.0, "A camera frame older than this (since it was received) "
                                        "answers STALE_FRAME; 0 = no limit.", range=(0.0, 86400.0))
    max_question_chars: int = param(512, "Longest accepted question.", range=(1, 65536))
    max_image_bytes: int = param(64 * 1024 * 1024, "Largest accepted image (message data bytes).",
                                 range=(1, 2**31 - 1))
    max_image_pixels: int = param(4096 * 4096, "Largest accepted image in pixels (width x height), "
                                                "raw or compressed; a compressed image's size is read "
                                                "from its PNG/JPEG header, before decoding.",
                                  range=(1, 2**31 - 1))
    encoded_cache_frames: int = param(4, "Frames whose image features are kept for repeated "
                                         "questions about the same frame.", range=(1, 64))
    depth_range_m: list = param([0.05, 50.0], "[min, max] depth readings (metres) used for 3D points; "
                                              "readings outside it count as no reading.",
                                range=(0.0, 1.0e6))
    generation_num_beams: int = param(1, "Beam width; 1 = greedy, which streams token by token.",
                                      name="generation.num_beams", range=(1, 16))
    generation_max_new_tokens: int = param(64, "Default answer length limit in tokens (a request "
                                               "may ask for up to the range maximum).",
                                           name="generation.max_new_tokens", range=(1, 512))
    generation_repetition_penalty: float = param(0.0, "Repetition penalty; 0 = the model's own "
                                                      "(its generation_config.json, else 1.5, the "
                                                      "reference LION value; lion-nano: 1.0).",
                                                 name="generation.repetition_penalty",
                                                 range=(0.0, 10.0))
    standing_queries: list = param([], "Questions answered repeatedly, each 'camera|period_s|"
                                       "question' (empty camera = default camera).")
    tags_topic: str = param("", "Upstream vision_msgs/Detection2DArray whose class_ids become "
                                "soft-prompt tags: a relative name is per camera (<name>/<topic>), "
                                "an absolute one is shared; empty = off.")

    def __post_init__(self) -> None:
        if not self.cameras or any(not c or "|" in c for c in self.cameras):
            raise ValueError(f"cameras: need at least one non-empty name without '|', got {self.cameras}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: duplicate names in {self.cameras}")
        if len(self.depth_range_m) != 2 or not self.depth_range_m[0] < self.depth_range_m[1]:
            raise ValueError(f"depth_range_m: need [min, max] with min < max, got {self.depth_range_m}")
        self.standing_query_specs()  # fail at configure, not at the first timer tick

    def resolved_model_path(self) -> Path:
        return Path(self.model_path).expanduser() if self.model_path else SHIPPED_MODEL

    def with_model_defaults(self) -> NodeParams:
        """These parameters with `generation.repetition_penalty` 0 replaced by the model's own."""
        if self.generation_repetition_penalty > 0:
            return self
        penalty = model_generation_defaults(self.resolved_model_path()).get(
            "repetition_penalty", GenerationSettings.repetition_penalty)
        return dataclasses.replace(self, generation_repetition_penalty=penalty)

    def standing_query_specs(self) -> list[StandingQuerySpec]:
        queries = [StandingQuerySpec.parse(q) for q in self.standing_queries]
        for q in queries:
            check_standing_query(q, self)
        return queries


def check_standing_query(query: StandingQuerySpec, params: NodeParams) -> None:
    if not (query.period_s > 0 and math.isfinite(query.period_s)):
        raise ValueError(f"standing query {query.question!r}: period_s must be > 0")
    if query.camera and query.camera not in params.cameras:
        raise ValueError(f"standing query {query.question!r}: unknown camera {query.camera!r}")
    if not has_visible_text(query.question) or len(query.question) > params.max_question_chars:
        raise ValueError(f"standing query: question must have 1..{params.max_question_chars} characters, "
                         "some of them visible")


# Letters, numbers, punctuation and symbols. Not spaces, controls, format characters (zero-width
# spaces, joiners, direction marks) or combining marks on their own: to a model those are an
# empty prompt.
_VISIBLE_CATEGORIES = frozenset("LNPS")


def has_visible_text(text: str) -> bool:
    return any(unicodedata.category(c)[0] in _VISIBLE_CATEGORIES for c in text)


def check_question(question: str, params: NodeParams) -> None:
    if not has_visible_text(question):
        raise AskError(ErrorCode.INVALID_ARGUMENT, "the question is empty (no visible characters)")
    if len(question) > params.max_question_chars:
        raise AskError(ErrorCode.INVALID_ARGUMENT,
                       f"the question has {len(question)} characters; the limit is {params.max_question_chars}")


@dataclass
class SyntheticCameraParams:
    """Parameters of synthetic_camera."""

    camera: str = param("camera", "Camera name: publishes <camera>/image, <camera>/depth, "
                                  "<camera>/camera_info.")
    frame_id: str = param("camera_optical_frame", "frame_id of every published header.")
    rate_hz: float = param(5.0, "Publishing rate.", range=(0.01, 100.0))
    width: int = param(640, "Image width in pixels.", range=(64, 4096))
    height: int = param(480, "Image height in pixels.", range=(64, 4096))
    seed: int = param(0, "First scene index (scenes of the synthetic test split).", range=(0, 2**31 - 1))
    scene_period_s: float = param(0.0, "Switch to the next scene every this many seconds; 0 = keep "
                                       "one scene.", range=(0.0, 86400.0))
