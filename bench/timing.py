"""The timing rule every benchmark here follows: the median of repeated runs (shared, noisy machines)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median wall time of `repeats` calls of fn in ms, the last call's result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result
