"""Validate extensions when the daemon loads them, so a guest that can never work is `broken`, not healthy.

Checked: the module compiles; every declared job has its `execute_<job>` export (a function); the module
imports nothing but the ABI's `spacedrive` functions (WASI or anything else would fail at the first job);
it exports its memory; every declared operation (or operation glob) names a registered operation; and no two
directories claim one id (the second would silently replace the first).
"""

from __future__ import annotations

import wasmtime

from capengine.errors import CapengineError
from capengine.host.manifests import Extension
from capengine.host.module_cache import ModuleError
from capengine.host.runtime import Runtime
from capengine.policy import globs

ABI_IMPORTS = {"spacedrive_call", "spacedrive_call_into", "spacedrive_result", "spacedrive_input", "spacedrive_log"}


def problems(ext: Extension, runtime: Runtime, operations: list[str]) -> list[str]:
    where = f"{ext.directory}/manifest.yaml ({ext.id})"
    try:
        module = runtime.load_module(ext)
    except (OSError, wasmtime.WasmtimeError, ModuleError) as exc:
        return [f"{where}: module {ext.module_path.name} does not compile: {str(exc).splitlines()[0]}"]
    except CapengineError as exc:  # e.g. the file changed since it was loaded (identity)
        return [f"{where}: {exc}"]
    found = []
    exports = {e.name: e.type for e in module.exports}
    for job in ext.jobs:
        if not isinstance(exports.get(f"execute_{job}"), wasmtime.FuncType):
            found.append(f"{where}: job {job!r} is declared but the module exports no function execute_{job}")
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        found.append(f"{where}: the module does not export its memory as 'memory'")
    for imp in module.imports:
        if imp.module != "spacedrive" or imp.name not in ABI_IMPORTS:
            found.append(f"{where}: imports {imp.module}.{imp.name}, which the host does not provide "
                         "(only the spacedrive_* functions of docs/abi.md; no WASI)")
    for declared in ext.operations:
        if not any(globs.glob_match(declared, op) for op in operations):
            found.append(f"{where}: declares operation {declared!r}, which matches no registered operation "
                         "(see capengine ops)")
    return found


def validate(extensions: list[Extension], runtime: Runtime, operations: list[str]) -> tuple[
        dict[str, Extension], list[str]]:
    """(healthy extensions by id, problems of the broken ones)."""
    healthy: dict[str, Extension] = {}
    broken: list[str] = []
    claimed: dict[str, Extension] = {}
    for ext in extensions:
        if ext.id in claimed:
            broken.append(f"{ext.directory}: id {ext.id} is also claimed by {claimed[ext.id].directory}; "
                          "neither is loaded until one id is changed")
            healthy.pop(ext.id, None)
            continue
        claimed[ext.id] = ext
        found = problems(ext, runtime, operations)
        if found:
            broken.extend(found)
        else:
            healthy[ext.id] = ext
    return healthy, broken
