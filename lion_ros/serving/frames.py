"""Latest frame per camera (with depth, intrinsics and upstream tags), what each camera's
topics delivered and skipped, and the cache of encoded frames.

Camera callbacks only store the message (no conversion on the executor thread); the worker
converts it when a question needs it. Thread-safe: callbacks write, the worker reads.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

# An upstream detector can report hundreds of boxes; the soft prompt needs only the distinct names.
MAX_UPSTREAM_TAGS = 32
RATE_WINDOW_S = 2.0  # receive rates are over this window
_RATE_WINDOW_MAX = 1024  # arrival times kept: rates up to 512 Hz are exact


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

    def age_s(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.received

    def cache_key(self) -> Hashable | None:
        """Same camera and stamp = same frame. Unstamped frames (stamp 0) are told apart by
        arrival; request images are never cached."""
        if self.seq < 0:
            return None
        stamp = self.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:
            return (self.camera, "seq", self.seq)
        return (self.camera, stamp.sec, stamp.nanosec)


# Who sent a message and its number in that publisher's sequence (rclpy's message info); None
# where the middleware or rclpy does not say (Humble's rclpy passes no message info).
Origin = tuple[Hashable, int] | None


class ReceiveCounter:
    """Messages taken from one topic, and messages its publishers sent that this node never took:
    gaps in each publisher's sequence numbers, i.e. dropped by the middleware or replaced in the
    depth-1 queue before the executor took them. Not thread-safe: FrameStore holds its lock."""

    def __init__(self) -> None:
        self.received = 0
        self.skipped = 0
        self._last_seq: dict[Hashable, int] = {}
        self._arrivals: deque[float] = deque(maxlen=_RATE_WINDOW_MAX)

    def count(self, origin: Origin) -> None:
        self.received += 1
        self._arrivals.append(time.monotonic())
        if origin is not None:
            publisher, seq = origin
            last = self._last_seq.get(publisher)
            if last is not None and seq > last:
                self.skipped += seq - last - 1
            self._last_seq[publisher] = seq

    def rate_hz(self, now: float) -> float:
        """Messages per second over the last RATE_WINDOW_S (up to _RATE_WINDOW_MAX of them)."""
        recent = 0
        for arrival in reversed(self._arrivals):
            if arrival <= now - RATE_WINDOW_S:
                break
            recent += 1
        return recent / RATE_WINDOW_S


@dataclass
class _Camera:
    frame: Frame | None = None
    depth: Any = None  # latest depth Image message
    info: Any = None  # latest CameraInfo message
    tags: list[str] = field(default_factory=list)
    images: ReceiveCounter = field(default_factory=ReceiveCounter)
    depths: ReceiveCounter = field(default_factory=ReceiveCounter)


@dataclass(frozen=True)
class ReceiveStats:
    received: int
    skipped: int
    rate_hz: float


class FrameStore:
    def __init__(self, cameras: Sequence[str]):
        self._lock = threading.Lock()
        self._cameras = {name: _Camera() for name in cameras}

    @property
    def cameras(self) -> list[str]:
        return list(self._cameras)

    def put_image(self, camera: str, msg: Any, compressed: bool, origin: Origin = None) -> None:
        now = time.monotonic()
        with self._lock:
            cam = self._cameras[camera]
            cam.images.count(origin)
            cam.frame = Frame(camera, msg, compressed, now, cam.images.received)

    def put_depth(self, camera: str, msg: Any, origin: Origin = None) -> None:
        with self._lock:
            cam = self._cameras[camera]
            cam.depths.count(origin)
            cam.depth = msg

    def put_info(self, camera: str, msg: Any) -> None:
        with self._lock:
            self._cameras[camera].info = msg

    def put_tags(self, camera: str, tags: Sequence[str]) -> None:
        with self._lock:
            self._cameras[camera].tags = list(dict.fromkeys(t for t in tags if t))[:MAX_UPSTREAM_TAGS]

    def latest(self, camera: str) -> Frame | None:
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

    def receive_stats(self, camera: str) -> tuple[ReceiveStats, ReceiveStats]:
        """(images, depth images) of a camera."""
        now = time.monotonic()
        with self._lock:
            cam = self._cameras[camera]
            return tuple(ReceiveStats(c.received, c.skipped, c.rate_hz(now))  # type: ignore[return-value]
                         for c in (cam.images, cam.depths))


class LruCache:
    """A few recent entries by key; used for encoded frames so repeated questions skip the ViT."""

    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable | None) -> Any:
        with self._lock:
            if key is None or key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable | None, value: Any) -> None:
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
