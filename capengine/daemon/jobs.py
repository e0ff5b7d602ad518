"""Admission of jobs.run: at most N jobs per extension run at once; the next ones wait in a bounded queue.

Why: rejecting at once turned 64 clients into a -32001 storm (goodput fell from 413 to 69 jobs/s). Waiting
in a bounded FIFO queue (with a timeout) serves them in turn; only when the queue itself is full, or the wait
times out, is the caller told to come back, with an estimate of when (`retry_after_ms`). A finishing job hands
its slot straight to the oldest waiter (one wake-up, not a thundering herd of every waiter re-checking).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from capengine.daemon.rpc import OVERLOADED, RpcError


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class Admission:
    def __init__(self, concurrency: int, max_queued: int, timeout: float) -> None:
        self.concurrency, self.max_queued, self.timeout = concurrency, max_queued, timeout
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[_Waiter]] = {}
        self._mean = 0.05  # seconds per job, moving average: the basis of retry_after_ms

    def _retry_after_ms(self, extension: str) -> int:
        ahead = len(self._waiting.get(extension, ())) + self._running.get(extension, 0)
        return max(10, round(1000 * self._mean * (ahead + 1) / self.concurrency))

    def _refuse(self, extension: str, why: str) -> RpcError:
        retry = self._retry_after_ms(extension)
        return RpcError(OVERLOADED, f"{extension}: {why} (RESOURCE_EXHAUSTED); retry in {retry} ms",
                        {"retry_after_ms": retry})

    def _acquire(self, extension: str, timeout: float | None) -> None:
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        with self._lock:
            queue = self._waiting.setdefault(extension, collections.deque())
            if self._running.get(extension, 0) < self.concurrency and not queue:
                self._running[extension] = self._running.get(extension, 0) + 1
                return
            if len(queue) >= self.max_queued:
                raise self._refuse(extension, f"{self.concurrency} jobs running and {self.max_queued} queued")
            waiter = _Waiter()
            queue.append(waiter)
        waiter.event.wait(wait)
        with self._lock:
            if waiter.granted:  # the slot was handed over (and counted) by the job that finished
                return
            queue.remove(waiter)
            raise self._refuse(extension, f"no job slot free within {wait:g} s")

    def _release(self, extension: str, seconds: float) -> None:
        with self._lock:
            self._mean = 0.9 * self._mean + 0.1 * seconds
            queue = self._waiting.get(extension)
            if queue:
                waiter = queue.popleft()
                waiter.granted = True  # the slot passes on: running stays the same
                waiter.event.set()
            else:
                self._running[extension] -= 1

    @contextmanager
    def slot(self, extension: str, timeout: float | None = None) -> Iterator[None]:
        """Hold one of the extension's job slots for the body; wait (FIFO, bounded) if all are taken."""
        self._acquire(extension, timeout)
        started = time.monotonic()
        try:
            yield
        finally:
            self._release(extension, time.monotonic() - started)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"running": sum(self._running.values()), "queued": sum(len(q) for q in self._waiting.values())}

    def wake_all(self) -> None:
        """At shutdown: waiters are refused at once instead of waiting for a slot."""
        with self._lock:
            for queue in self._waiting.values():
                for waiter in queue:
                    waiter.event.set()
