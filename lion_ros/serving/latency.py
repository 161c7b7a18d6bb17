"""Rolling latency percentiles per stage, for diagnostics."""
from __future__ import annotations

import threading
from collections import defaultdict, deque

import numpy as np


class LatencyWindow:
    def __init__(self, size: int = 200):
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=size))

    def add(self, **stage_ms: float) -> None:
        with self._lock:
            for stage, ms in stage_ms.items():
                self._samples[stage].append(float(ms))

    def percentiles(self) -> dict[str, tuple[float, float]]:
        """stage -> (p50, p95) in ms over the window."""
        with self._lock:
            return {stage: tuple(float(p) for p in np.percentile(list(s), [50, 95]))
                    for stage, s in self._samples.items() if s}
