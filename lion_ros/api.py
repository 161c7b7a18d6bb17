"""Plain data types shared by the model runtime, the backends and the ROS node.

Kept free of torch and ROS imports so every layer (PyTorch, ONNX Runtime, TensorRT, rclpy)
can exchange them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path


class TaskKind(IntEnum):
    """Which router row of the mixture of adapters a sample uses.

    The values are the official code's router index (`int(category != "region_level")`), so
    they can be fed to the model as-is.
    """

    REGION = 0  # grounding: REC, REG, grounded captions; answers carry boxes
    IMAGE = 1  # holistic: captions, VQA, counting, yes/no


@dataclass(frozen=True)
class GroundedBox:
    """One grounded phrase with its box in pixels of the original (source) image."""

    phrase: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0  # mean probability of the generated box tokens; 1.0 when unknown

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass
class StageTimings:
    """Latency of one answer, per stage, in milliseconds."""

    image_encode_ms: float = 0.0  # ViT + aggregator; 0 when cached features were reused
    prefill_ms: float = 0.0  # Q-Former + T5 encoder
    decode_ms: float = 0.0  # autoregressive decoding
    total_ms: float = 0.0
    tokens_generated: int = 0


@dataclass
class Answer:
    """What a question about an image returns, independent of the backend."""

    text: str
    task: TaskKind
    boxes: list[GroundedBox] = field(default_factory=list)
    timings: StageTimings = field(default_factory=StageTimings)


# The reference's answer-length limit (LAVIS InstructBLIP-T5 `generate`); interactive callers
# (node, CLI) default to a shorter one.
REFERENCE_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, shared by the model's search loop and every runtime backend.

    Beams, repetition and length penalty default to the reference LION/InstructBLIP-T5 values.
    """

    num_beams: int = 5
    max_new_tokens: int = 64
    repetition_penalty: float = 1.5
    length_penalty: float = 1.0


# A model directory's own decoding defaults, named as in Hugging Face model directories. lion-nano
# ships one: the reference repetition penalty (1.5) penalises the repeated digits of its boxes.
GENERATION_CONFIG_NAME = "generation_config.json"
_MODEL_DEFAULT_KEYS = ("repetition_penalty",)


def model_generation_defaults(model_dir: str | Path) -> dict[str, float]:
    """The `GenerationSettings` defaults a model directory asks for in its generation_config.json
    ({} without one): its repetition penalty, the one setting the node and lion-ask take from the
    model. Any other key, or a value that is not a positive number, is an error."""
    path = Path(model_dir) / GENERATION_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    unknown = sorted(set(data) - set(_MODEL_DEFAULT_KEYS)) if isinstance(data, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{path}: expected an object with keys among {_MODEL_DEFAULT_KEYS}, got {unknown or data!r}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{path}: {key} must be a positive number, got {value!r}")
    return {key: float(value) for key, value in data.items()}
