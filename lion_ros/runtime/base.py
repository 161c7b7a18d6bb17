"""The interface every backend implements; the ROS node and the CLIs only talk to this.

A frame is encoded once (`encode_image`: ViT + vision aggregator, the image-only work) and
the result answers any number of questions (`answer`: Q-Former + T5 encoder + decoding), which
is how the node serves repeated questions about the same frame cheaply.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lion_ros.api import Answer, GenerationSettings, TaskKind

# Called after every generated token with the decoded answer so far and the token count.
PartialCallback = Callable[[str, int], None]


class RequestCancelled(Exception):
    """Raised by `answer` when its cancel event was set during generation."""


@dataclass(frozen=True)
class EncodedImage:
    """Image-side features of one frame plus what is needed to map boxes back to its pixels."""

    features: Any  # backend-specific (torch tensors, numpy arrays or device buffers)
    width: int  # of the original image, in pixels
    height: int
    encode_ms: float


class LionRuntime(Protocol):
    """What a backend (pytorch, onnxruntime, tensorrt) provides."""

    name: str

    def encode_image(self, rgb: np.ndarray) -> EncodedImage:
        """Encode an RGB uint8 HxWx3 image (any size; preprocessing is the backend's)."""

    def answer(
        self,
        image: EncodedImage,
        question: str,
        *,
        tags: Sequence[str] = (),
        task: TaskKind | None = None,
        settings: GenerationSettings | None = None,
        on_partial: PartialCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Answer `question` about an encoded image; `task=None` infers it from the question.

        Boxes in the answer are in pixels of the original image. Streaming (`on_partial`)
        applies to greedy decoding; with beam search the callback sees the final answer once.
        Raises RequestCancelled when `cancel` is set mid-generation and ValueError for bad
        arguments (empty question, max_new_tokens < 1).
        """
