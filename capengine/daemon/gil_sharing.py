"""A shorter GIL switch interval while a CPU-bound policy load runs beside jobs (reloads, a worker's prepare)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

SHARING_SWITCH_INTERVAL = 0.0002  # seconds; CPython's default is 0.005


class _Sharing:
    """How many loads are sharing now, and the interval to restore when the last one ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = sys.getswitchinterval()


_sharing = _Sharing()


@contextlib.contextmanager
def sharing_the_gil() -> Iterator[None]:
    """While a reload checks or loads a set (tens of ms of pure Python), let job threads have the GIL back sooner.

    A job thread gives the GIL up on every guest entry (wasm runs without it) and needs it again on every host
    call; a CPU-bound reload holding it makes each of those wait up to the switch interval, 5 ms by default,
    so a job of a few dozen host calls stalled for most of the reload (bench_reload.py: job p99 during reloads
    3.3x quiet; 1.7-2.1x with 0.2 ms).
    A shorter interval only while reloading costs the reload a few more hand-overs and leaves jobs' own GIL
    behaviour alone the rest of the time. Nested or concurrent users (a daemon's
    reloader and a worker's prepare, many managers in a test run) restore the interval the first one found."""
    with _sharing.lock:
        if _sharing.users == 0:
            _sharing.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_sharing.saved, SHARING_SWITCH_INTERVAL))
        _sharing.users += 1
    try:
        yield
    finally:
        with _sharing.lock:
            _sharing.users -= 1
            if _sharing.users == 0:
                sys.setswitchinterval(_sharing.saved)
