"""Host failures during a job, bounded: a guest that triggers the same host bug 40,000 times costs one line.

A failure is identified by where it happened, its exception type and the source line that raised it, not by
its message (a message can quote guest data and so be unique every time). Per job the first message of each
kind is kept with a count, up to MAX_KINDS kinds; the process logs a traceback the first time it meets a kind
and only counts it afterwards.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterator

from capengine.host import safe_text

log = logging.getLogger("capengine.host")
MAX_KINDS = 20  # per job
MAX_MESSAGE = 300
_LOGGED_KINDS = 1024  # per process, least recently seen forgotten first

_logged: OrderedDict[tuple[str, ...], int] = OrderedDict()
_logged_lock = threading.Lock()


def _kind(where: str, exc: BaseException) -> tuple[str, ...]:
    frames = traceback.extract_tb(exc.__traceback__)
    origin = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return where, type(exc).__qualname__, origin


def log_once(where: str, exc: BaseException) -> None:
    """A traceback in the host log the first time this kind of failure is seen, a count afterwards."""
    kind = _kind(where, exc)
    with _logged_lock:
        seen = _logged.get(kind, 0)
        _logged[kind] = seen + 1
        _logged.move_to_end(kind)
        while len(_logged) > _LOGGED_KINDS:
            _logged.popitem(last=False)
    if seen == 0:
        log.error("host failure in %s (further ones of this kind are counted, not logged)", where, exc_info=exc)
    elif (seen + 1) & seen == 0:  # 2, 4, 8, ...: a repeating failure stays visible without flooding the log
        log.error("host failure in %s seen %d times: %s", where, seen + 1,
                  safe_text.escape(f"{type(exc).__name__}: {exc}")[:MAX_MESSAGE])


class HostErrors:
    """The host failures of one job, deduplicated and bounded. Iterating gives one line per kind."""

    def __init__(self, max_kinds: int = MAX_KINDS) -> None:
        self.max_kinds = max_kinds
        self._kinds: dict[tuple[str, ...], list] = {}  # kind -> [first message, count]
        self.dropped = 0  # failures of kinds beyond max_kinds

    def add(self, where: str, exc: BaseException) -> None:
        log_once(where, exc)
        kind = _kind(where, exc)
        entry = self._kinds.get(kind)
        if entry is not None:
            entry[1] += 1
        elif len(self._kinds) < self.max_kinds:
            message = safe_text.escape(f"{where}: {type(exc).__name__}: {exc}")[:MAX_MESSAGE]
            self._kinds[kind] = [message, 1]
        else:
            self.dropped += 1

    def __iter__(self) -> Iterator[str]:
        for message, count in self._kinds.values():
            yield message if count == 1 else f"{message} (x{count})"
        if self.dropped:
            yield f"{self.dropped} further host failure(s) of other kinds"

    def __bool__(self) -> bool:
        return bool(self._kinds) or bool(self.dropped)
