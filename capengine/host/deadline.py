"""The time a host call may still take: the job's CPU limit and a daemon shutdown reach inside host calls.

The epoch deadline stops wasm code, but a host call runs Python (hashing, directory scans, Tesseract), which
no epoch interrupts. So each call carries a Deadline: long-running work checks it between steps and gives
subprocesses a timeout derived from it. `cancelled` reports a shutdown (Runtime.interrupt_all).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from capengine.errors import CapengineError

DEFAULT_SECONDS = 60.0  # a call made outside any job (tests, direct dispatch) still has a bound


class DeadlineExceeded(CapengineError):
    """The job's time ran out (or the host is shutting down) during a host call."""


def _never() -> bool:
    return False


@attrs.frozen
class Deadline:
    at: float  # time.monotonic() value
    cancelled: Callable[[], bool] = _never

    @classmethod
    def after(cls, seconds: float, cancelled: Callable[[], bool] = _never) -> Deadline:
        return cls(time.monotonic() + seconds, cancelled)

    def remaining(self) -> float:
        return 0.0 if self.cancelled() else max(0.0, self.at - time.monotonic())

    def check(self, what: str) -> None:
        if self.cancelled():
            raise DeadlineExceeded(f"{what} stopped: the host is shutting down")
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(f"{what} stopped: the job's time limit ran out")
