"""Hot reload: one reloader thread applies requests (SIGHUP, `policies.reload`, the watcher) coalesced.

A storm of SIGHUPs becomes one reload after the current one, not a queue of them. A reload reads settled
content (policy_source), refuses a set with errors or with unannounced losses, and never raises: whatever
goes wrong (a directory vanishing mid-walk, EMFILE, a bug) keeps the last-known-good set and is reported in
`last_error` and in health.

A reload refused for a passing reason (the swap raised RetryLater: a worker process died, hung or was being
replaced; nothing was wrong with the set) is tried again by the reloader itself, with exponential backoff,
once the cause says it is gone (`RetryLater.ready`): the daemon converges on the set on disk without an
operator, and health shows the pending retry. The retry reads the files again, like any reload.
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
from capengine.daemon.decision_log import rfc3339
from capengine.daemon.gil_sharing import sharing_the_gil
from capengine.daemon.policy_source import Settled, TreeReader, UnsettledError, fingerprint, losses, read_settled
from capengine.policy.engine import PolicySet

log = logging.getLogger("capengine.daemon.reload")
RETRY_FIRST = 1.0  # seconds before the first retry of a reload refused for a passing reason; doubles each time
RETRY_MAX = 300.0  # the longest pause between two retries
RETRY_WAIT = 60.0  # seconds a due retry waits for `ready()`; then it is tried anyway (it may go through)


class RetryLater(DaemonError):
    """The swap could not be applied for a reason that passes by itself (a worker process died or did not
    answer): worth trying the same reload again once `ready()` holds."""

    def __init__(self, message: str, ready: Callable[[], bool]) -> None:
        super().__init__(message)
        self.ready = ready


@attrs.frozen
class _Retry:
    due: float  # time.monotonic() of the next attempt
    attempt: int  # the number of the next attempt (the refused one was 1)
    ready: Callable[[], bool]
    digest: str  # the content refused: an accept_removals given for it carries over to its retries only
    accept_removals: bool

    def go(self, now: float) -> bool:
        return now >= self.due and (now >= self.due + RETRY_WAIT or self.ready())


@attrs.frozen
class PolicyStatus:
    revision: str
    files: int
    loaded_at: float
    root: str  # the directory the active set was read from (a ConfigMap's timestamped directory, say)
    last_error: tuple[str, ...] = ()  # findings of the last failed reload, () when the last one succeeded
    retrying: str | None = None  # when a refused reload is tried again by itself (RetryLater), None otherwise


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
        self._retry: _Retry | None = None
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
                if not self._cond.wait_for(lambda: self._requested > self._done or self._retry_due(), 0.5):
                    continue
                target, accept = self._requested, self._accept_removals
                self._accept_removals = False
            with sharing_the_gil():
                result = self.reload_now(accept)
            with self._cond:
                self._done, self._result = target, result
                self._cond.notify_all()

    def _retry_due(self) -> bool:
        retry = self._retry
        return retry is not None and retry.go(time.monotonic())

    def run_watcher(self, stopped: threading.Event, interval: float) -> None:
        """inotify (watchfiles) on the policy directory, debounced; `interval`: how often the directory's own
        identity is checked, and the polling period where inotify is unavailable (policy_watch)."""
        policy_watch.watch(self.directory, self.request, stopped, interval, seen=self._seen)

    # the reload itself ---------------------------------------------------------------------------------------
    def reload_now(self, accept_removals: bool = False) -> dict:
        """Check off to the side; swap only a clean set that loses nothing unannounced. Never raises."""
        retry, self._retry = self._retry, None  # this reload is the retry: it schedules the next one if need be
        try:
            settled = read_settled(self.directory, self.operations, self.settle, reader=self._reader)
            if retry is not None and settled.digest == retry.digest:
                accept_removals |= retry.accept_removals
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
            except RetryLater as exc:  # applied nowhere, for a passing reason: tried again by itself
                return self._rejected([str(exc)], self._again(retry, exc.ready, settled.digest, accept_removals))
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

    def _again(self, last: _Retry | None, ready: Callable[[], bool], digest: str, accept: bool) -> _Retry:
        attempt = last.attempt + 1 if last is not None else 2
        pause = min(RETRY_MAX, RETRY_FIRST * 2 ** (attempt - 2))
        self._retry = _Retry(time.monotonic() + pause, attempt, ready, digest, accept)
        return self._retry

    def _rejected(self, errors: list[str], retry: _Retry | None = None) -> dict:
        self.reloads_failed += 1
        self._counted(False)
        retrying = None
        if retry is not None:
            at = time.time() + retry.due - time.monotonic()
            retrying = (f"attempt {retry.attempt} at {rfc3339(at)} (then with backoff up to every {RETRY_MAX:g} s),"
                        " once every worker process is up")
            errors = [*errors[:-1], f"{errors[-1]}; the reload is tried again automatically: {retrying}"]
        self.status = attrs.evolve(self.status, last_error=tuple(errors), retrying=retrying)
        log.error("policy reload rejected; keeping revision %s:\n%s", self.status.revision, "\n".join(errors))
        return {"reloaded": False, "revision": self.status.revision, "errors": errors}
