"""Per-call cost of the full guest round trip against a bare host function, measured in the same run.

guest -> spacedrive_call -> parse -> decide -> test.ping -> envelope -> spacedrive_result -> guest, versus a
host function with the same signature that does nothing. Prints both and the ratio (machines here are noisy:
compare ratios, not absolute numbers).  Run: python bench/bench_roundtrip.py [CALLS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wasm_helpers import extension, make_host, wat_module  # noqa: E402

from capengine.daemon.decision_log import DecisionLog  # noqa: E402
from capengine.host import raw_functions  # noqa: E402

LOOP = """
  (func (export "execute_go") (result i32)
    (local $i i32) (local $n i32)
    (loop $l
      (local.set $n (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                           (i32.const 20)))
      (drop (call $spacedrive_result (i32.const 16384) (local.get $n)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (global.get $calls))))
    (i32.const 0))"""


def guest(calls: int) -> str:
    data = ('  (data (i32.const 1024) "test.ping")\n'
            '  (data (i32.const 4096) "{\\"message\\": \\"hello\\"}")\n'
            f'  (global $calls i32 (i32.const {calls}))')
    return wat_module(LOOP, data)


def bare_floor(wat: str, calls: int, raw: bool) -> float:
    """Same module, same call pattern, against host functions that do nothing, defined through wasmtime-py's
    generic trampoline or (raw) through the unchecked C callback, the cheapest way it allows."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    i32 = wasmtime.ValType.i32()
    linker = wasmtime.Linker(engine)
    keep: list[object] = []
    for name, params, returns in (("spacedrive_call", 5, True), ("spacedrive_result", 2, True),
                                  ("spacedrive_input", 2, True), ("spacedrive_log", 3, False)):
        ty = wasmtime.FuncType([i32] * params, [i32] if returns else [])
        nothing = (lambda *a: 0) if returns else (lambda *a: None)
        if raw:
            raw_functions.define(linker, "spacedrive", name, ty, params, returns, nothing, keep)
        else:
            linker.define_func("spacedrive", name, ty, nothing)
    instance = linker.instantiate(store, wasmtime.Module(engine, wat))
    go = instance.exports(store)["execute_go"]
    start = time.perf_counter()
    go(store)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    wat = guest(calls)
    with tempfile.TemporaryDirectory() as tmp:
        host = make_host(Path(tmp))
        try:
            ext = extension(Path(tmp), wat)
            host.runtime.prepare(ext)  # compiled and linked once, as the daemon keeps it
            floor = min(bare_floor(wat, calls, raw=True) for _ in range(3))
            generic = min(bare_floor(wat, calls, raw=False) for _ in range(3))
            best = timed_job(host, ext, host_dispatcher(host), calls)
            log = DecisionLog(Path(tmp) / "decisions.jsonl")
            try:
                logged = timed_job(host, ext, host_dispatcher(host, log), calls)
            finally:
                log.close()
        finally:
            host.close()
    print(f"bare host functions, generic trampoline: {generic:8.2f} us/call")
    print(f"bare host functions, raw callback (floor): {floor:8.2f} us/call")
    print(f"full round trip (test.ping): {best:8.2f} us/call")
    print(f"  with the decision log:     {logged:8.2f} us/call")
    print(f"ratio full/raw floor:        {best / floor:8.2f}x; with the log {logged / floor:.2f}x")
    print(f"ratio full/generic floor:    {best / generic:8.2f}x; with the log {logged / generic:.2f}x")


def timed_job(host, ext, dispatcher, calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = host.runtime.run_job(ext, "go", dispatcher)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
        assert result.status == "completed", result.error
    return best


def host_dispatcher(host, log=None):
    """The dispatcher a job gets; with `log`, the daemon's decision log records every call (and admits it)."""
    from capengine.host.dispatcher import Dispatcher

    if log is None:
        return Dispatcher(host.active, host.registry, host.catalog, host.data_dir)
    return Dispatcher(host.active, host.registry, host.catalog, host.data_dir, log.record, log.admit)


if __name__ == "__main__":
    main()
