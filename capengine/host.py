"""The host as a whole: policy set + operation registry + library catalogue + wasm runtime, wired together.

`capengine run` uses it for one job and the daemon for many; both get exactly the same decision path.
"""

from __future__ import annotations

from pathlib import Path

from capengine.engine import PolicySet
from capengine.extensions import Extension
from capengine.host_bridge import CallRecord, Dispatcher
from capengine.libraries import Library, LibraryCatalog
from capengine.operations import Registry, default_registry
from capengine.runtime import JobResult, Limits, Runtime


class Host:
    def __init__(self, policy_set: PolicySet, data_dir: Path, limits: Limits | None = None,
                 registry: Registry | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.catalog = LibraryCatalog(self.data_dir)
        self.registry = registry or default_registry()
        self.runtime = Runtime(limits or Limits(), cache_dir=self.data_dir / "module-cache")
        self._policy_set = policy_set

    @property
    def policy_set(self) -> PolicySet:
        return self._policy_set

    def swap_policies(self, policy_set: PolicySet) -> None:
        """Atomic (one reference assignment): a call reads the set once, so it runs wholly under the old set
        or wholly under the new one."""
        self._policy_set = policy_set

    def open_library(self, root: Path) -> Library:
        """The catalogue entry for `root`, adding it if needed."""
        return self.catalog.find_root(Path(root).resolve()) or self.catalog.add(root)

    def run_job(self, ext: Extension, job: str, input_json: bytes) -> tuple[JobResult, list[CallRecord]]:
        calls: list[CallRecord] = []
        dispatcher = Dispatcher(lambda: self._policy_set, self.registry, self.catalog, self.data_dir, calls.append)
        return self.runtime.run_job(ext, job, dispatcher, input_json), calls

    def close(self) -> None:
        self.runtime.close()
