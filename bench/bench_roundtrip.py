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


def bare_floor(wat: str, calls: int) -> float:
    """Same module, same call pattern, against host functions that do nothing."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    i32 = wasmtime.ValType.i32()
    linker = wasmtime.Linker(engine)
    linker.define_func("spacedrive", "spacedrive_call", wasmtime.FuncType([i32] * 5, [i32]), lambda *a: 0)
    linker.define_func("spacedrive", "spacedrive_result", wasmtime.FuncType([i32] * 2, [i32]), lambda *a: 0)
    linker.define_func("spacedrive", "spacedrive_input", wasmtime.FuncType([i32] * 2, [i32]), lambda *a: 0)
    linker.define_func("spacedrive", "spacedrive_log", wasmtime.FuncType([i32] * 3, []), lambda *a: None)
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
            module = host.runtime.load_module(ext)
            floor = min(bare_floor(wat, calls) for _ in range(3))
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                result = host.runtime.run_job(ext, "go", host_dispatcher(host), module=module)
                best = min(best, (time.perf_counter() - start) / calls * 1e6)
                assert result.status == "completed", result.error
        finally:
            host.close()
    print(f"bare host functions (floor): {floor:8.2f} us/call")
    print(f"full round trip (test.ping): {best:8.2f} us/call")
    print(f"ratio full/floor:            {best / floor:8.2f}x")


def host_dispatcher(host):
    from capengine.host.dispatcher import Dispatcher

    return Dispatcher(host.active, host.registry, host.catalog, host.data_dir)


if __name__ == "__main__":
    main()
