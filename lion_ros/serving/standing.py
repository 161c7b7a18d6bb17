"""When standing queries run: at most once per period_s, and only on a frame newer than the
last one answered, so a 30 Hz camera never means 30 generations a second."""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lion_ros.serving.parameters import StandingQuerySpec


@dataclass
class _State:
    query: StandingQuerySpec
    last_run: float = float("-inf")
    last_seq: int = 0


class StandingSchedule:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: list[_State] = []

    def set(self, queries: Sequence[StandingQuerySpec]) -> None:
        """Replace all queries (cameras already resolved to names)."""
        with self._lock:
            self._states = [_State(q) for q in queries]

    def queries(self) -> list[StandingQuerySpec]:
        with self._lock:
            return [s.query for s in self._states]

    def due(self, now: float, latest_seq: Callable[[str], int | None]) -> list[tuple[StandingQuerySpec, int]]:
        """Queries whose period has passed and whose camera has a new frame, with that frame's seq.

        Call `started` for the ones actually submitted; the others stay due.
        """
        with self._lock:
            out = []
            for s in self._states:
                seq = latest_seq(s.query.camera)
                if seq is not None and seq > s.last_seq and now - s.last_run >= s.query.period_s:
                    out.append((s.query, seq))
            return out

    def started(self, query: StandingQuerySpec, seq: int, now: float) -> None:
        with self._lock:
            for s in self._states:
                if s.query is query:
                    s.last_run, s.last_seq = now, seq
