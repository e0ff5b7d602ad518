"""Hot reload: one reloader thread applies requests (SIGHUP, `policies.reload`, the watcher) coalesced.

A storm of SIGHUPs becomes one reload after the current one, not a queue of them. A reload reads settled
content (policy_source), refuses a set with errors or with unannounced losses, and never raises: whatever
goes wrong (a directory vanishing mid-walk, EMFILE, a bug) keeps the last-known-good set and is reported in
`last_error` and in health.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from capengine.daemon import policy_watch
from capengine.daemon.config import DaemonError
from capengine.daemon.gil_sharing import sharing_the_gil
from capengine.daemon.policy_source import Settled, TreeReader, UnsettledError, fingerprint, losses, read_settled
from capengine.policy.engine import PolicySet

log = logging.getLogger("capengine.daemon.reload")


@attrs.frozen
class PolicyStatus:
    revision: str
    files: int
    loaded_at: float
    root: str  # the directory the active set was read from (a ConfigMap's timestamped directory, say)
    last_error: tuple[str, ...] = ()  # findings of the last failed reload, () when the last one succeeded


_frozen = threading.Event()


def _freeze_once() -> None:
    """Everything alive after the first load (modules, the first set and its caches) lives long and holds no
    garbage cycles (a loaded set measured 0 cyclic garbage; a replaced set is freed by reference counting):
    moving it out of the cyclic collector's reach keeps each full collection, which stops every thread, from
    walking it again while jobs run and reloads allocate. Once per process (a test run builds many managers)."""
    if not _frozen.is_set():
        _frozen.set()
        gc.freeze()


def _errors(settled: Settled) -> list[str]:
    return [str(f) for f in settled.outcome.findings if f.severity == "error"]


class PolicyManager:
    def __init__(self, directory: Path, operations: list[str], swap: Callable[[PolicySet], None],
                 settle: float = 0.05, counted: Callable[[bool], None] | None = None) -> None:
        self.directory, self.operations, self._swap, self.settle = directory, operations, swap, settle
        self._counted = counted or (lambda ok: None)
        self._seen = fingerprint(directory)  # before reading: a change made during start is not missed
        self._reader = TreeReader()
        try:
            settled = read_settled(directory, operations, settle, reader=self._reader)
        except (OSError, UnsettledError) as exc:
            raise DaemonError(f"refusing to start: cannot read the policies: {exc}") from None
        errors = _errors(settled)
        if errors:
            raise DaemonError("refusing to start: the policy set has errors\n" + "\n".join(errors))
        self.good = settled
        self.policy_set = settled.outcome.policy_set
        self.status = self._status(settled)
        _freeze_once()
        self.reloads_ok = self.reloads_failed = 0
        self._cond = threading.Condition()
        self._requested = self._done = 0
        self._accept_removals = False
        self._result: dict = {}
        self.incoming: Settled | None = None  # during a swap: the set being swapped in

    @staticmethod
    def _status(settled: Settled) -> PolicyStatus:
        files = sum(1 for f in settled.outcome.load.files if f.policies)
        return PolicyStatus(settled.outcome.policy_set.revision, files, time.time(), str(settled.root))

    # requests -------------------------------------------------------------------------------------------
    def request(self, accept_removals: bool = False) -> int:
        """Ask for a reload (never blocks: safe from a signal's main-loop tick); returns a ticket to wait on."""
        with self._cond:
            self._requested += 1
            self._accept_removals |= accept_removals
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float | None = None) -> dict | None:
        """The result of the first reload that started after `ticket` was issued (None on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done >= ticket, timeout):
                return None
            return self._result

    def reload(self, accept_removals: bool = False, timeout: float | None = 60) -> dict:
        result = self.wait(self.request(accept_removals), timeout)
        return result if result is not None else {"reloaded": False, "revision": self.status.revision,
                                                  "errors": ["the reload did not finish in time"]}

    # threads (run under the supervisor) ---------------------------------------------------------------------
    def run_reloader(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            with self._cond:
                if not self._cond.wait_for(lambda: self._requested > self._done, 0.5):
                    continue
                target, accept = self._requested, self._accept_removals
                self._accept_removals = False
            with sharing_the_gil():
                result = self.reload_now(accept)
            with self._cond:
                self._done, self._result = target, result
                self._cond.notify_all()

    def run_watcher(self, stopped: threading.Event, interval: float) -> None:
        """inotify (watchfiles) on the policy directory, debounced; `interval`: how often the directory's own
        identity is checked, and the polling period where inotify is unavailable (policy_watch)."""
        policy_watch.watch(self.directory, self.request, stopped, interval, seen=self._seen)

    # the reload itself ---------------------------------------------------------------------------------------
    def reload_now(self, accept_removals: bool = False) -> dict:
        """Check off to the side; swap only a clean set that loses nothing unannounced. Never raises."""
        try:
            settled = read_settled(self.directory, self.operations, self.settle, reader=self._reader)
            errors = _errors(settled)
            if not errors and not accept_removals and settled.root == self.good.root:
                errors = [f"{loss}; if that is meant, reload with accept_removals"
                          for loss in losses(self.good, settled)]
            elif not errors and not settled.outcome.load.policies and self.good.outcome.load.policies:
                errors = [f"{settled.root}: no policies at all; refusing to load an empty set"]
        except (OSError, UnsettledError) as exc:
            errors = [f"{self.directory}: {exc}"]
        except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon (or this thread) down
            log.exception("policy reload failed")
            errors = [f"{self.directory}: internal error during reload: {type(exc).__name__}: {exc}"]
        if errors:
            return self._rejected(errors)
        unchanged = settled.digest == self.good.digest and settled.root == self.good.root
        if not unchanged:
            self.incoming = settled  # the swap may ship the texts elsewhere (the daemon's worker processes)
            try:
                self._swap(settled.outcome.policy_set)
            except DaemonError as exc:  # the swap could not be applied everywhere, so it was applied nowhere
                return self._rejected([str(exc)])
            finally:
                self.incoming = None
            self.policy_set = settled.outcome.policy_set
            log.info("policies reloaded: revision %s from %s", self.policy_set.revision, settled.root)
        self.good = settled
        self.status = attrs.evolve(self._status(settled), loaded_at=self.status.loaded_at) if unchanged \
            else self._status(settled)
        self.reloads_ok += 1
        self._counted(True)
        return {"reloaded": True, "changed": not unchanged, "revision": self.status.revision, "errors": []}

    def _rejected(self, errors: list[str]) -> dict:
        self.reloads_failed += 1
        self._counted(False)
        self.status = attrs.evolve(self.status, last_error=tuple(errors))
        log.error("policy reload rejected; keeping revision %s:\n%s", self.status.revision, "\n".join(errors))
        return {"reloaded": False, "revision": self.status.revision, "errors": errors}
