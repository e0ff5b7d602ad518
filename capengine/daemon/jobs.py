"""Admission of jobs.run: at most N jobs per extension run at once; the next ones wait in a bounded queue.

Why: rejecting at once turned 64 clients into a -32001 storm (goodput fell from 413 to 69 jobs/s). Waiting
in a bounded queue (with a timeout) serves them in turn; only when the queue itself is full, or the wait
times out, is the caller told to come back, with an estimate of when (`retry_after_ms`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from capengine.daemon.rpc import OVERLOADED, RpcError


class Admission:
    def __init__(self, concurrency: int, max_queued: int, timeout: float) -> None:
        self.concurrency, self.max_queued, self.timeout = concurrency, max_queued, timeout
        self._cond = threading.Condition()
        self._running: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._mean = 0.05  # seconds per job, moving average: the basis of retry_after_ms

    def _retry_after_ms(self, extension: str) -> int:
        ahead = self._waiting.get(extension, 0) + self._running.get(extension, 0)
        return max(10, round(1000 * self._mean * (ahead + 1) / self.concurrency))

    def _refuse(self, extension: str, why: str) -> RpcError:
        retry = self._retry_after_ms(extension)
        return RpcError(OVERLOADED, f"{extension}: {why} (RESOURCE_EXHAUSTED); retry in {retry} ms",
                        {"retry_after_ms": retry})

    @contextmanager
    def slot(self, extension: str, timeout: float | None = None) -> Iterator[None]:
        """Hold one of the extension's job slots for the body; wait for one (bounded) if all are taken."""
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        with self._cond:
            if self._running.get(extension, 0) >= self.concurrency:
                if self._waiting.get(extension, 0) >= self.max_queued:
                    raise self._refuse(extension, f"{self.concurrency} jobs running and {self.max_queued} queued")
                self._waiting[extension] = self._waiting.get(extension, 0) + 1
                try:
                    if not self._cond.wait_for(lambda: self._running.get(extension, 0) < self.concurrency, wait):
                        raise self._refuse(extension, f"no job slot free within {wait:g} s")
                finally:
                    self._waiting[extension] -= 1
            self._running[extension] = self._running.get(extension, 0) + 1
        started = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._running[extension] -= 1
                self._mean = 0.9 * self._mean + 0.1 * (time.monotonic() - started)
                self._cond.notify_all()

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"running": sum(self._running.values()), "queued": sum(self._waiting.values())}

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
