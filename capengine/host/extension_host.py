"""The host as a whole: policy set + rate limits + operation registry + library catalogue + wasm runtime.

`capengine run` uses it for one job and the daemon for many; both get exactly the same decision path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from capengine.host.checkpoints import CheckpointStore
from capengine.host.dispatcher import ActivePolicies, Dispatcher
from capengine.host.envelope import CallRecord
from capengine.host.job_run import JobRun
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = Path(data_dir)
        self.catalog = LibraryCatalog(self.data_dir)
        self.registry = registry or default_registry()
        self.runtime = Runtime(limits or Limits(), cache_dir=self.data_dir / "module-cache")
        self.on_call, self.clock = on_call, clock
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
        or wholly under the new one. Rate-limit buckets start full under the new set."""
        self._active = self._activate(policy_set)

    def open_library(self, root: Path) -> Library:
        """The catalogue entry for `root`, adding it if needed."""
        return self.catalog.find_root(Path(root).resolve()) or self.catalog.add(root)

    def new_run(self, ext: Extension, job: str, run_id: str | None = None) -> JobRun:
        """A job run whose checkpoints live in this host's data dir; pass the id of an earlier run to resume it."""
        store = CheckpointStore(self.data_dir)
        return JobRun(ext.id, job, store) if run_id is None else JobRun(ext.id, job, store, run_id)

    def run_job(self, ext: Extension, job: str, input_json: bytes,
                run: JobRun | None = None) -> tuple[JobResult, CallRecords]:
        """Run one attempt of `run` (a fresh run when None). A completed run's checkpoint is deleted; an
        interrupted or failed one keeps it, so the run can be resumed."""
        run = run or self.new_run(ext, job)
        calls = CallRecords()

        def record(call: CallRecord) -> None:
            if len(calls) < MAX_CALL_RECORDS:
                calls.append(call)
            else:
                calls.dropped += 1
            if self.on_call is not None:
                self.on_call(call)

        dispatcher = Dispatcher(self.active, self.registry, self.catalog, self.data_dir, record, run)
        result = self.runtime.run_job(ext, job, dispatcher, input_json)
        for summary in run.flush():
            record(summary)
        if result.status == "completed":
            run.checkpoints.delete(run.extension, run.run_id)
        return result, calls

    def close(self) -> None:
        self.runtime.close()
