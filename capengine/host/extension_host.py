"""The host as a whole: policy set + rate limits + operation registry + library catalogue + wasm runtime.

`capengine run` uses it for one job and the daemon for many; both get exactly the same decision path.
The data dir is made private (0700, files 0600) before anything is written to it, and every job's extension is
checked against the installed-extension registry first (`capengine.host.installed`), so no entry point can run
a module under an id the operator did not install it as.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capengine.host import data_dir as private
from capengine.host.checkpoints import CheckpointStore
from capengine.host.dispatcher import ActivePolicies, Dispatcher
from capengine.host.envelope import CallRecord
from capengine.host.installed import InstalledRegistry
from capengine.host.job_run import JobRun
from capengine.host.libraries import Library, LibraryCatalog
from capengine.host.manifests import Extension, IdentityError
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
    """`require_installed`: refuse extensions the operator did not install (the daemon); otherwise they run in
    development mode, in a namespace keyed by their module digest (`capengine run`, embedders' tests).
    Raises DataDirError (a CapengineError) when the data dir cannot be used or a key file is damaged."""

    before_effect: Callable[[dict[str, Any]], None] | None = None  # Dispatcher.before_effect, for every job

    def __init__(self, policy_set: PolicySet, data_dir: Path, limits: Limits | None = None,
                 registry: Registry | None = None, on_call: Callable[[CallRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, require_installed: bool = False,
                 admit: Callable[[], str | None] | None = None) -> None:
        self.data_dir = private.prepare(data_dir)
        self.installed = InstalledRegistry(self.data_dir)
        self.require_installed = require_installed
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

    def bind(self, ext: Extension) -> Extension:
        """`ext` with the namespace its digests entitle it to (see InstalledRegistry.bind); IdentityError when
        it is not the module installed under its id."""
        return self.installed.bind(ext, self.require_installed)

    def new_run(self, ext: Extension, job: str, run_id: str | None = None) -> JobRun:
        """A job run whose checkpoints live in this host's data dir under the namespace `ext` is entitled to
        (see bind); pass the id of an earlier run to resume it."""
        try:
            namespace = self.bind(ext).namespace
        except (IdentityError, private.DataDirError):  # run_job refuses the job with the reason; nothing runs
            namespace = ext.namespace
        store = CheckpointStore(self.data_dir)
        return JobRun(namespace, job, store) if run_id is None else JobRun(namespace, job, store, run_id)

    def run_job(self, ext: Extension, job: str, input_json: bytes,
                run: JobRun | None = None) -> tuple[JobResult, CallRecords]:
        """Run one attempt of `run` (a fresh run when None). A completed run's checkpoint is deleted; an
        interrupted or failed one keeps it, so the run can be resumed. The extension is bound to its namespace
        first, so the run's checkpoints are keyed the way its vault and sidecars are."""
        calls = CallRecords()
        try:
            ext = self.bind(ext)  # every job: an `ext install --replace` or `ext remove` applies from the next one
        except (IdentityError, private.DataDirError) as exc:
            return JobResult(ext.id, job, "failed", None, str(exc), ()), calls

        def record(call: CallRecord) -> None:
            if len(calls) < MAX_CALL_RECORDS:
                calls.append(call)
            else:
                calls.dropped += 1
            if self.on_call is not None:
                self.on_call(call)

        if run is None:
            run = JobRun(ext.namespace, job, CheckpointStore(self.data_dir))
        elif (run.extension, run.job) != (ext.namespace, job):  # checkpoints never cross namespaces
            return JobResult(ext.id, job, "failed", None, f"run {run.run_id} belongs to {run.extension}/{run.job}, "
                             f"not to {ext.namespace}/{job}", ()), calls
        dispatcher = Dispatcher(self.active, self.registry, self.catalog, self.data_dir, record, self.admit, run,
                                self.before_effect)
        result = self.runtime.run_job(ext, job, dispatcher, input_json)
        for summary in run.flush():
            record(summary)
        if result.status == "completed":
            run.checkpoints.delete(run.extension, run.run_id)
        return result, calls

    def close(self) -> None:
        self.runtime.close()
