"""The host as a whole: policy set + rate limits + operation registry + library catalogue + wasm runtime.

`capengine run` uses it for one job and the daemon for many; both get exactly the same decision path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from capengine.host.dispatcher import ActivePolicies, Dispatcher
from capengine.host.envelope import CallRecord
from capengine.host.libraries import Library, LibraryCatalog
from capengine.host.manifests import Extension
from capengine.host.operations import Registry, default_registry
from capengine.host.rate_limiter import RateLimiter
from capengine.host.runtime import JobResult, Limits, Runtime
from capengine.policy.engine import PolicySet

MAX_CALL_RECORDS = 10_000  # per job, kept for the caller; the decision log still gets every call


class CallRecords(list):
    """The calls a job made, in order, up to MAX_CALL_RECORDS; `dropped` counts the rest, so a guest that
    calls in a tight loop cannot grow the host's memory without bound."""

    dropped: int = 0


class Host:
    def __init__(self, policy_set: PolicySet, data_dir: Path, limits: Limits | None = None,
                 registry: Registry | None = None, on_call: Callable[[CallRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, admit: Callable[[], str | None] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.catalog = LibraryCatalog(self.data_dir)
        self.registry = registry or default_registry()
        self.runtime = Runtime(limits or Limits(), cache_dir=self.data_dir / "module-cache")
        self.on_call, self.clock, self.admit = on_call, clock, admit  # admit: None, or why calls are refused now
        self._active = self._activate(policy_set)

    def _activate(self, policy_set: PolicySet) -> ActivePolicies:
        return ActivePolicies(policy_set, RateLimiter(policy_set.policies, self.clock))

    def active(self) -> ActivePolicies:
        return self._active

    @property
    def policy_set(self) -> PolicySet:
        return self._active.policy_set

    def swap_policies(self, policy_set: PolicySet) -> None:
        """Atomic (one reference assignment): a call reads the set once, so it runs wholly under the old set
        or wholly under the new one. A limit the new set keeps unchanged keeps its buckets (a reload must not
        refill them); new or changed limits start full."""
        new = self._activate(policy_set)
        if new.limiter is not None and self._active.limiter is not None:
            new.limiter.inherit(self._active.limiter)
        self._active = new

    def open_library(self, root: Path) -> Library:
        """The catalogue entry for `root`, adding (or re-rooting a known id) if needed."""
        return self.catalog.claim(root)

    def run_job(self, ext: Extension, job: str, input_json: bytes) -> tuple[JobResult, CallRecords]:
        calls = CallRecords()

        def record(call: CallRecord) -> None:
            if len(calls) < MAX_CALL_RECORDS:
                calls.append(call)
            else:
                calls.dropped += 1
            if self.on_call is not None:
                self.on_call(call)

        dispatcher = Dispatcher(self.active, self.registry, self.catalog, self.data_dir, record, self.admit)
        return self.runtime.run_job(ext, job, dispatcher, input_json), calls

    def close(self) -> None:
        self.runtime.close()
