"""Latest frame per camera (with depth, intrinsics and upstream tags) and the cache of encoded frames.

Camera callbacks only store the message (no conversion on the executor thread); the worker
converts it when a question needs it. Thread-safe: callbacks write, the worker reads.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional, Sequence


# An upstream detector can report hundreds of boxes; the soft prompt needs only the distinct names.
MAX_UPSTREAM_TAGS = 32


@dataclass(frozen=True)
class Frame:
    camera: str  # "" for an image that came with the request
    msg: Any  # sensor_msgs/Image or CompressedImage; its header is the answer's header
    compressed: bool
    received: float  # time.monotonic() at arrival
    seq: int  # per-camera arrival counter; -1 for request images

    @property
    def header(self) -> Any:
        return self.msg.header

    def age_s(self, now: Optional[float] = None) -> float:
        return (time.monotonic() if now is None else now) - self.received

    def cache_key(self) -> Optional[Hashable]:
        """Same camera and stamp = same frame. Unstamped frames (stamp 0) are told apart by
        arrival; request images are never cached."""
        if self.seq < 0:
            return None
        stamp = self.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:
            return (self.camera, "seq", self.seq)
        return (self.camera, stamp.sec, stamp.nanosec)


@dataclass
class _Camera:
    frame: Optional[Frame] = None
    depth: Any = None  # latest depth Image message
    info: Any = None  # latest CameraInfo message
    tags: list[str] = field(default_factory=list)
    frames_received: int = 0


class FrameStore:
    def __init__(self, cameras: Sequence[str]):
        self._lock = threading.Lock()
        self._cameras = {name: _Camera() for name in cameras}

    @property
    def cameras(self) -> list[str]:
        return list(self._cameras)

    def put_image(self, camera: str, msg: Any, compressed: bool) -> None:
        now = time.monotonic()
        with self._lock:
            cam = self._cameras[camera]
            cam.frames_received += 1
            cam.frame = Frame(camera, msg, compressed, now, cam.frames_received)

    def put_depth(self, camera: str, msg: Any) -> None:
        with self._lock:
            self._cameras[camera].depth = msg

    def put_info(self, camera: str, msg: Any) -> None:
        with self._lock:
            self._cameras[camera].info = msg

    def put_tags(self, camera: str, tags: Sequence[str]) -> None:
        with self._lock:
            self._cameras[camera].tags = list(dict.fromkeys(t for t in tags if t))[:MAX_UPSTREAM_TAGS]

    def latest(self, camera: str) -> Optional[Frame]:
        with self._lock:
            return self._cameras[camera].frame

    def depth_and_info(self, camera: str) -> tuple[Any, Any]:
        with self._lock:
            cam = self._cameras.get(camera)
            return (cam.depth, cam.info) if cam else (None, None)

    def tags(self, camera: str) -> list[str]:
        with self._lock:
            cam = self._cameras.get(camera)
            return list(cam.tags) if cam else []

    def frames_received(self, camera: str) -> int:
        with self._lock:
            return self._cameras[camera].frames_received


class LruCache:
    """A few recent entries by key; used for encoded frames so repeated questions skip the ViT."""

    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Optional[Hashable]) -> Any:
        with self._lock:
            if key is None or key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Optional[Hashable], value: Any) -> None:
        if key is None:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
