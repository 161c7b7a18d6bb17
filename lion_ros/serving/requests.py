"""From a question about a camera (or a given image) to an answer with 3D positions.

`prepare` runs in the executor callback and does only cheap checks (so bad requests are
answered at once and never take a queue slot); `run` runs on the worker thread and does the
image conversion, encoding (cached per frame), tagging and generation.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lion_ros.api import Answer, TaskKind
from lion_ros.runtime.base import EncodedImage, GenerationSettings, LionRuntime, RequestCancelled
from lion_ros.serving import images
from lion_ros.serving.depth import box_position, scaled_k
from lion_ros.serving.errors import AskError, ErrorCode
from lion_ros.serving.frames import Frame, FrameStore, LruCache
from lion_ros.serving.parameters import NodeParams, check_question, specs

# Ask TASK_* values <-> the runtime's task kinds (TASK_AUTO = let the runtime infer it).
TASKS: dict[int, TaskKind | None] = {0: None, 1: TaskKind.IMAGE, 2: TaskKind.REGION}
TASK_VALUES: dict[TaskKind, int] = {TaskKind.IMAGE: 1, TaskKind.REGION: 2}
# Called with (stage, partial answer, tokens so far); stage is "encoding" or "decoding".
Progress = Callable[[str, str, int], None]

_MAX_NEW_TOKENS = next(s for s in specs(NodeParams) if s.name == "generation.max_new_tokens").range[1]
_MAX_TIMEOUT_S = next(s for s in specs(NodeParams) if s.name == "request_timeout_s").range[1]

Position = tuple[float, float, float] | None


@dataclass
class Request:
    question: str
    camera: str  # resolved camera name; "" for an image sent with the request
    frame: Frame
    tags: list[str]
    task: TaskKind | None
    settings: GenerationSettings
    timeout_s: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    progress: Progress | None = None


@dataclass
class Outcome:
    request: Request
    answer: Answer
    rgb: np.ndarray
    tags: list[str]
    positions: list[Position]
    image_features_reused: bool
    queue_ms: float
    total_ms: float  # accepted -> answer ready


@dataclass
class _EncodedFrame:
    rgb: np.ndarray
    encoded: EncodedImage
    tagger_tags: list[str] | None = None


class RequestHandler:
    def __init__(self, params: NodeParams, store: FrameStore, runtime: LionRuntime):
        self.params = params
        self.store = store
        self.runtime = runtime
        self._encoded = LruCache(params.encoded_cache_frames)
        tagger = getattr(runtime, "tags", None)  # optional image tagger: tags(rgb) -> list[str]
        self._tagger: Callable[[np.ndarray], Sequence[str]] | None = tagger if callable(tagger) else None
        self._tag_lock = threading.Lock()
        self._depth: dict[str, tuple[Any, np.ndarray]] = {}  # camera -> (depth message, metres)
        self._depth_lock = threading.Lock()

    def clear_cache(self) -> None:
        self._encoded.clear()
        with self._depth_lock:
            self._depth.clear()

    def prepare(self, question: str, camera: str = "", image: Any = None, tags: Sequence[str] = (),
                task: int = 0, max_new_tokens: int = 0, timeout_s: float = 0.0) -> Request:
        """Validate a request and pick its frame (the camera's latest, as of now)."""
        p = self.params
        check_question(question, p)
        if task not in TASKS:
            raise AskError(ErrorCode.INVALID_ARGUMENT, f"task {task} is not one of {sorted(TASKS)}")
        if not 0 <= max_new_tokens <= _MAX_NEW_TOKENS:
            raise AskError(ErrorCode.INVALID_ARGUMENT, f"max_new_tokens must be 0..{_MAX_NEW_TOKENS}")
        if not (math.isfinite(timeout_s) and 0 <= timeout_s <= _MAX_TIMEOUT_S):
            raise AskError(ErrorCode.INVALID_ARGUMENT, f"timeout_s must be 0..{_MAX_TIMEOUT_S}")
        tags = [t for t in tags if t]
        if sum(len(t) for t in tags) > p.max_question_chars:
            raise AskError(ErrorCode.INVALID_ARGUMENT, f"the tags have more than {p.max_question_chars} characters")
        if image is not None and len(image.data) > 0:
            frame = Frame("", image, False, time.monotonic(), -1)
            camera = ""
        else:
            camera = camera or self.store.cameras[0]
            frame = self.latest_frame(camera)
        images.check_size(frame.msg, frame.compressed, p.max_image_pixels)
        settings = GenerationSettings(num_beams=p.generation_num_beams,
                                      max_new_tokens=max_new_tokens or p.generation_max_new_tokens,
                                      repetition_penalty=p.generation_repetition_penalty)
        return Request(question, camera, frame, tags, TASKS[task], settings,
                       timeout_s or p.request_timeout_s)

    def latest_frame(self, camera: str) -> Frame:
        if camera not in self.store.cameras:
            raise AskError(ErrorCode.UNKNOWN_CAMERA,
                           f"unknown camera {camera!r}; this node serves {', '.join(self.store.cameras)}")
        frame = self.store.latest(camera)
        if frame is None:
            raise AskError(ErrorCode.NO_FRAME, f"no frame received yet on camera {camera!r}")
        age = frame.age_s()
        if self.params.max_frame_age_s > 0 and age > self.params.max_frame_age_s:
            raise AskError(ErrorCode.STALE_FRAME, f"the latest frame of camera {camera!r} is {age:.1f} s old "
                                                  f"(limit {self.params.max_frame_age_s:.1f} s)")
        return frame

    def run(self, request: Request, cancel: threading.Event, accepted: float, queue_ms: float) -> Outcome:
        """Answer on the worker thread; raises AskError or RequestCancelled."""
        frame = request.frame
        entry: _EncodedFrame | None = self._encoded.get(frame.cache_key())
        reused = entry is not None
        if entry is None:
            if request.progress:
                request.progress("encoding", "", 0)
            rgb = self._to_rgb(frame)
            entry = _EncodedFrame(rgb, self.runtime.encode_image(rgb))
            self._encoded.put(frame.cache_key(), entry)
        tags = request.tags or self.store.tags(request.camera) or self._tagger_tags(entry)
        if cancel.is_set():
            raise RequestCancelled()
        on_partial = None
        if request.progress:
            progress = request.progress
            on_partial = lambda text, tokens: progress("decoding", text, tokens)  # noqa: E731
        answer = self.runtime.answer(entry.encoded, request.question, tags=tags, task=request.task,
                                     settings=request.settings, on_partial=on_partial, cancel=cancel)
        positions = self._positions(request.camera, answer, entry.rgb.shape[1], entry.rgb.shape[0])
        return Outcome(request, answer, entry.rgb, list(tags), positions, reused, queue_ms,
                       1000.0 * (time.monotonic() - accepted))

    def _to_rgb(self, frame: Frame) -> np.ndarray:
        if frame.compressed:
            return images.compressed_to_rgb(frame.msg, self.params.max_image_bytes, self.params.max_image_pixels)
        return images.image_to_rgb(frame.msg, self.params.max_image_bytes)

    def _tagger_tags(self, entry: _EncodedFrame) -> list[str]:
        if self._tagger is None:
            return []
        with self._tag_lock:
            if entry.tagger_tags is None:
                entry.tagger_tags = [str(t) for t in self._tagger(entry.rgb)]
            return entry.tagger_tags

    def _positions(self, camera: str, answer: Answer, width: int, height: int) -> list[Position]:
        depth_msg, info = self.store.depth_and_info(camera)
        if not answer.boxes or depth_msg is None or info is None:
            return [None] * len(answer.boxes)
        try:
            depth = self._depth_metres(camera, depth_msg)
        except AskError:
            return [None] * len(answer.boxes)  # a bad depth image costs the 3D points, not the answer
        k = scaled_k(list(info.k), (info.width, info.height), (width, height))
        depth_range = (self.params.depth_range_m[0], self.params.depth_range_m[1])
        return [box_position(depth, k, (b.x1, b.y1, b.x2, b.y2), (width, height), depth_range)
                for b in answer.boxes]

    def _depth_metres(self, camera: str, msg: Any) -> np.ndarray:
        """The depth message in metres, converted once per message (questions about one frame
        share it)."""
        with self._depth_lock:
            cached = self._depth.get(camera)
            if cached is not None and cached[0] is msg:
                return cached[1]
        depth = images.depth_to_metres(msg, self.params.max_image_bytes)
        with self._depth_lock:
            self._depth[camera] = (msg, depth)
        return depth
