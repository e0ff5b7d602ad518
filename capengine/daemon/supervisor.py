"""Supervised background threads: a loop that raises is logged and restarted, and its state is visible.

The daemon's watcher, reloader, metrics writer and control-socket loop run as `run(name, body)`; the decision
log's writer is a thread the log owns, watched with `watch(name, alive, restart)`. A thread dying silently
(edits never applied again, records never written) is the failure this module exists to prevent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import attrs

log = logging.getLogger("capengine.daemon.supervisor")


@attrs.define
class ThreadState:
    alive: bool = False
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    def __init__(self, stopped: threading.Event, check_interval: float = 0.5, backoff: float = 0.5) -> None:
        self._stopped = stopped
        self._check_interval, self._backoff = check_interval, backoff
        self._states: dict[str, ThreadState] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._watched: dict[str, tuple[Callable[[], bool], Callable[[], None]]] = {}
        self._monitor: threading.Thread | None = None

    def run(self, name: str, body: Callable[[], None]) -> None:
        """Run `body` in a thread until the daemon stops; restart it (after a pause) whenever it raises or
        returns early."""
        state = self._states[name] = ThreadState()

        def loop() -> None:
            state.alive = True
            try:
                while not self._stopped.is_set():
                    try:
                        body()
                    except Exception as exc:  # noqa: BLE001 - the point: a crash is logged, then restarted
                        state.last_error = f"{type(exc).__name__}: {exc}"
                        log.exception("%s failed; restarting it", name)
                    if self._stopped.wait(self._backoff):
                        break
                    state.restarts += 1
            finally:
                state.alive = False

        thread = self._threads[name] = threading.Thread(target=loop, name=f"capengine-{name}", daemon=True)
        thread.start()
        self._ensure_monitor()

    def watch(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        """A thread owned elsewhere: checked every `check_interval` seconds, restarted when found dead."""
        self._states[name] = ThreadState(alive=alive())
        self._watched[name] = (alive, restart)
        self._ensure_monitor()

    def _ensure_monitor(self) -> None:
        if self._monitor is None and self._watched:
            self._monitor = threading.Thread(target=self._check, name="capengine-supervisor", daemon=True)
            self._monitor.start()

    def _check(self) -> None:
        while not self._stopped.wait(self._check_interval):
            for name, (alive, restart) in list(self._watched.items()):
                state = self._states[name]
                try:
                    state.alive = alive()
                    if not state.alive:
                        log.error("%s thread died; restarting it", name)
                        state.restarts += 1
                        state.last_error = "thread died"
                        restart()
                        state.alive = alive()
                except Exception as exc:  # noqa: BLE001 - the monitor itself must not die
                    state.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("cannot restart %s", name)

    def states(self) -> dict[str, dict]:
        for name, (alive, _) in self._watched.items():
            self._states[name].alive = alive()
        return {name: attrs.asdict(state) for name, state in self._states.items()}

    def join(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in [*self._threads.values(), *([self._monitor] if self._monitor else [])]:
            thread.join(max(0.0, deadline - time.monotonic()))
