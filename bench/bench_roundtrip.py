"""Per-call cost of the full guest round trip against bare host functions of the same signatures, in one run.

guest -> spacedrive_call_into (or spacedrive_call + spacedrive_result) -> parse -> decide -> test.ping ->
envelope -> guest, with and without the daemon's decision log attached, versus the same module calling host
functions that do nothing, defined three ways:
- `bare`: a ctypes unchecked callback that returns at once (the cheapest way wasmtime-py allows: the floor);
- `define`: capengine's raw_functions.define around a function that returns 0 (reads its arguments);
- `generic`: wasmtime-py's public define_func (its Val trampoline).
Each round measures every variant once; the ratios of a round are against the floor of the same round, and
the table gives the median and min-max over the rounds (machines here are noisy: compare ratios).
`--stages` also times each step of the Python path on its own.

Run: python bench/bench_roundtrip.py [--calls N] [--rounds R] [--stages]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import wasmtime
from wasmtime import _bindings as ffi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wasm_helpers import extension, make_host, wat_module  # noqa: E402

from capengine.daemon.decision_log import DecisionLog  # noqa: E402
from capengine.host import raw_functions  # noqa: E402
from capengine.host.dispatcher import Dispatcher  # noqa: E402

TWO_CALLS = """
      (local.set $n (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                           (i32.const 20)))
      (drop (call $spacedrive_result (i32.const 16384) (local.get $n)))"""
ONE_CALL = """
      (drop (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                        (i32.const 20) (i32.const 16384) (i32.const 4096)))"""
ABI = (("spacedrive_call", 5, True), ("spacedrive_call_into", 7, True), ("spacedrive_result", 2, True),
       ("spacedrive_input", 2, True), ("spacedrive_log", 3, False))


def guest(calls: int, body: str) -> str:
    data = ('  (data (i32.const 1024) "test.ping")\n'
            '  (data (i32.const 4096) "{\\"message\\": \\"hello\\"}")\n'
            f'  (global $calls i32 (i32.const {calls}))')
    loop = f"""
  (func (export "execute_go") (result i32)
    (local $i i32) (local $n i32)
    (loop $l{body}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (global.get $calls))))
    (i32.const 0))"""
    return wat_module(loop, data)


def _bare(env: int | None, caller: object, values: object, count: int) -> int:
    return 0


def floor(wat: str, calls: int, how: str) -> float:
    """µs per loop iteration of `wat` against host functions that do nothing, defined `how`."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    i32 = wasmtime.ValType.i32()
    linker = wasmtime.Linker(engine)
    keep: list[object] = []
    for name, params, returns in ABI:
        ty = wasmtime.FuncType([i32] * params, [i32] if returns else [])
        nothing = (lambda *a: 0) if returns else (lambda *a: None)
        if how == "define":
            raw_functions.define(linker, "spacedrive", name, ty, params, returns, nothing, keep)
        elif how == "generic":
            linker.define_func("spacedrive", name, ty, nothing)
        else:
            raw = ffi.wasmtime_func_unchecked_callback_t(_bare)
            keep.append(raw)
            error = ffi.wasmtime_linker_define_func_unchecked(
                linker.ptr(), ctypes.create_string_buffer(b"spacedrive"), 10, ctypes.create_string_buffer(
                    name.encode()), len(name), ty.ptr(), raw, None, raw_functions._no_finalizer)
            assert not error
    instance = linker.instantiate(store, wasmtime.Module(engine, wat))
    go = instance.exports(store)["execute_go"]
    return timed(lambda: go(store), calls)


def timed(run: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall, CPU of this thread) in µs per call. On a shared machine the wall time also counts waiting for a
    core; the CPU time does not (nor does waiting for the GIL: compare both)."""
    start, cpu = time.perf_counter(), time.thread_time()
    run()
    return (time.perf_counter() - start) / calls * 1e6, (time.thread_time() - cpu) / calls * 1e6


def timed_job(host, ext, dispatcher, calls: int) -> tuple[float, float]:
    def run() -> None:
        result = host.runtime.run_job(ext, "go", dispatcher)
        assert result.status == "completed", result.error
    return timed(run, calls)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    """One dict of per-round figures: µs per round trip for every variant, and ratios against the floor."""
    walls = {"one call": guest(calls, ONE_CALL), "two calls": guest(calls, TWO_CALLS)}
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        host = make_host(Path(tmp))
        log = DecisionLog(Path(tmp) / "decisions.jsonl")
        try:
            exts = {name: extension(Path(tmp), wat, ext_id=f"com.example.{i}")
                    for i, (name, wat) in enumerate(walls.items())}
            for ext in exts.values():
                host.runtime.prepare(ext)  # compiled and linked once, as the daemon keeps it
            plain = Dispatcher(host.active, host.registry, host.catalog, host.data_dir)
            logged = Dispatcher(host.active, host.registry, host.catalog, host.data_dir, log.record, log.admit)
            for _ in range(rounds):
                for name, wat in walls.items():
                    row = {"bare": floor(wat, calls, "bare"), "define": floor(wat, calls, "define"),
                           "generic": floor(wat, calls, "generic"),
                           "full": timed_job(host, exts[name], plain, calls),
                           "full+log": timed_job(host, exts[name], logged, calls)}
                    log.flush(30)
                    for clock, index in (("wall", 0), ("cpu", 1)):
                        bare = row["bare"][index]
                        for key, pair in row.items():
                            figures.setdefault(f"{name}: {key} ({clock})", []).append(pair[index])
                            if key != "bare":
                                figures.setdefault(f"{name}: {key} / bare ({clock})", []).append(pair[index] / bare)
                        figures.setdefault(f"{name}: full+log / define ({clock})", []).append(
                            row["full+log"][index] / row["define"][index])
        finally:
            log.close()
            host.close()
    return figures


def stages() -> None:
    """Each step of the Python path of one test.ping call, timed on its own (µs, best of 5)."""
    from capengine.daemon.decision_log import encode_line, to_record
    from capengine.host import guest_memory
    from capengine.host.envelope import CallRecord, encode_envelope
    from capengine.host.operations.registry import CallContext
    from capengine.policy.model import Request

    def t(name: str, fn: Callable[[], object], n: int = 50000) -> None:
        print(f"  {name:44s} {min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6:6.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        host = make_host(Path(tmp))
        try:
            ext = extension(Path(tmp), guest(1, ONE_CALL))
            raw = b'{"message": "hello"}'
            payload = guest_memory.parse_payload(raw, 64)
            op = host.registry.get("test.ping")
            active = host.active()
            request = Request(ext.id, "test.ping", "", "", op.policy_args(payload))
            fields = dict(extension=ext.id, operation="test.ping", library="", path="", decided=True, allowed=True,
                          rules=("p/r",), errors=(), args={"message": "hello"}, revision="r1")
            call = CallRecord(**fields, code="OK", message="", duration_us=3)
            log = DecisionLog(Path(tmp) / "d.jsonl", start=False)
            print("stages of one call (µs, each alone):")
            t("decode + parse payload (guest_memory)", lambda: guest_memory.parse_payload(raw, 64))
            t("registry + manifest", lambda: (host.registry.get("test.ping"), ext.declares("test.ping")))
            t("schema (fastjsonschema, compiled once)", lambda: op.validate(payload))
            t("Request(...) (checks every field)", lambda: Request(ext.id, "test.ping", "", "",
                                                                  op.policy_args(payload)))
            t("decide", lambda: active.policy_set.decide(request))
            t("rate limiter acquire", lambda: active.limiter and active.limiter.acquire(ext.id, "test.ping",
                                                                                      ext.namespace))
            t("CallContext + handler", lambda: op.handler(CallContext(ext.namespace, None, host.data_dir), payload))
            t("encode envelope", lambda: encode_envelope({"ok": True, "result": {"message": "hello"}}))
            t("CallRecord", lambda: CallRecord(**fields, code="OK", message="", duration_us=3))
            t("decision log admit + record (calling thread)", lambda: (log.admit(), log.record(call)))
            t("decision log to_record + encode (writer)", lambda: encode_line(to_record(1.5, "x", call, log.mask)))
        finally:
            host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stages", action="store_true")
    options = parser.parse_args()
    figures = measure(options.calls, options.rounds)
    print(f"µs per round trip, median (min–max) of {options.rounds} rounds of {options.calls} calls:")
    for key, values in figures.items():
        if "/" not in key:
            print(f"  {key:36s} {spread(values)}")
    print("ratios within each round:")
    for key, values in figures.items():
        if "/" in key:
            print(f"  {key:36s} {spread(values)}x")
    if options.stages:
        stages()


if __name__ == "__main__":
    main()
