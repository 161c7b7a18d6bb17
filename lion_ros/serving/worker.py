"""A bounded request queue served by one worker thread (one model, one generation at a time).

Executor callbacks submit and wait; generation never runs on an executor thread. A full
queue rejects at once (BUSY). Every accepted job gets exactly one outcome: its result or an
AskError (TIMEOUT, CANCELED, NOT_READY, INTERNAL, or whatever the job raised).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before 3.11
from dataclasses import dataclass, field
from typing import Any

from lion_ros.runtime.base import RequestCancelled
from lion_ros.serving.errors import AskError, ErrorCode


@dataclass
class Job:
    fn: Callable[[Job], Any]
    deadline: float  # time.monotonic()
    accepted: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    cancel_code: ErrorCode | None = None

    def cancel_with(self, code: ErrorCode) -> None:
        """Ask the job to stop; the first reason given is the one reported."""
        if self.cancel_code is None:
            self.cancel_code = code
        self.cancel.set()

    @property
    def queue_ms(self) -> float:
        return 1000.0 * ((self.started or time.monotonic()) - self.accepted)


@dataclass
class WorkerStats:
    accepted: int = 0
    rejected: int = 0  # BUSY at submit
    dropped: int = 0  # accepted but never run: timed out or cancelled while queued, or shut down
    timeouts: int = 0
    internal_errors: int = 0
    last_error: str = ""


class RequestWorker:
    def __init__(self, queue_size: int, log_error: Callable[[str], None]):
        self._queue_size = queue_size
        self._log_error = log_error
        self._jobs: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._logged_errors: set[str] = set()
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._loop, name="lion-worker", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Jobs waiting plus the one running."""
        with self._cond:
            return len(self._jobs) + (self._running is not None)

    def submit(self, fn: Callable[[Job], Any], timeout_s: float, *, only_if_idle: bool = False) -> Job:
        """Queue `fn(job)`; raises AskError(BUSY) when full (or, with only_if_idle, when not idle)."""
        with self._cond:
            if self._stopping:
                raise AskError(ErrorCode.NOT_READY, "the node is shutting down")
            busy = (self._jobs or self._running) if only_if_idle else len(self._jobs) >= self._queue_size
            if busy:
                self.stats.rejected += not only_if_idle  # skipped background work is not a rejection
                raise AskError(ErrorCode.BUSY, f"busy: {len(self._jobs)} requests queued; retry later")
            job = Job(fn, time.monotonic() + timeout_s)
            self._jobs.append(job)
            self.stats.accepted += 1
            self._cond.notify()
            return job

    def wait(self, job: Job, poll: Callable[[], None] | None = None) -> Any:
        """Block until the job's outcome (result or AskError), calling `poll` about every 50 ms.

        A job whose runtime ignores its cancel event is abandoned a second after its deadline
        and reported as TIMEOUT; the worker still finishes it and discards the result.
        """
        while True:
            remaining = job.deadline + 1.0 - time.monotonic()
            if remaining <= 0:
                job.cancel_with(ErrorCode.TIMEOUT)
                raise AskError(ErrorCode.TIMEOUT, "no answer within the time limit")
            try:
                return job.future.result(timeout=min(0.05, remaining) if poll else remaining)
            except FutureTimeout:
                if poll:
                    poll()

    def stop(self, reason: str = "the node was deactivated") -> None:
        """Refuse new jobs, answer queued ones NOT_READY (`reason`), stop the running one (it
        ends NOT_READY at its next cancel check, or with its result), end the thread."""
        with self._cond:
            self._stopping = True
            pending, self._jobs = list(self._jobs), deque()
            if self._running is not None:
                self._running.cancel_with(ErrorCode.NOT_READY)
            self._cond.notify_all()
        for job in pending:
            self.stats.dropped += 1
            job.future.set_exception(AskError(ErrorCode.NOT_READY, reason))
        self._thread.join(timeout=10.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._running = self._jobs.popleft()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        job.started = time.monotonic()
        if job.cancel.is_set() or job.started >= job.deadline:
            self.stats.dropped += 1
            code = job.cancel_code or ErrorCode.TIMEOUT
            self.stats.timeouts += code == ErrorCode.TIMEOUT
            job.future.set_exception(AskError(code, f"{code.name.lower()} while queued"))
            return
        timer = threading.Timer(job.deadline - job.started, job.cancel_with, (ErrorCode.TIMEOUT,))
        timer.daemon = True
        timer.start()
        try:
            job.future.set_result(job.fn(job))
        except RequestCancelled:
            code = job.cancel_code or ErrorCode.CANCELED
            self.stats.timeouts += code == ErrorCode.TIMEOUT
            job.future.set_exception(AskError(code, f"generation stopped: {code.name.lower()}"))
        except AskError as exc:
            job.future.set_exception(exc)
        except Exception as exc:
            self._internal_error(job, exc)
        finally:
            timer.cancel()

    def _internal_error(self, job: Job, exc: Exception) -> None:
        summary = f"{type(exc).__name__}: {exc}"
        self.stats.internal_errors += 1
        self.stats.last_error = summary
        if summary not in self._logged_errors:  # the traceback once per distinct error
            self._logged_errors.add(summary)
            self._log_error("request failed inside the runtime (the node keeps serving):\n"
                            + "".join(traceback.format_exception(exc)))
        job.future.set_exception(AskError(ErrorCode.INTERNAL, summary))
