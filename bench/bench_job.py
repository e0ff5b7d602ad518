"""Per-job overhead: what running one job costs the host besides the guest's own calls, and whether it grows
with the module's size.

A guest whose job makes no host call is run through `Host.run_job` (fresh Store and instance, limits, epoch
deadline, session) with modules carrying 0, 1 MiB and 8 MiB of data segments. The baseline, timed in the same
run, is the bare wasmtime floor for the same module: a Store, an instantiation from an already linked module
and one call of the export. Target: overhead over the floor <= 100 us, independent of the module size.

Run: python bench/bench_job.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wasmtime  # noqa: E402

from capengine.host.extension_host import Host  # noqa: E402
from capengine.host.manifests import load_extension  # noqa: E402
from capengine.policy.check import load_policies  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = (ROOT / "extensions" / "include" / "spacedrive.wat").read_text()


def module_text(data_bytes: int) -> str:
    pages = 2 + data_bytes // 65536
    data = f'  (data (i32.const 65536) "{"x" * data_bytes}")\n' if data_bytes else ""
    return (f'(module\n{IMPORTS}\n  (memory (export "memory") {pages})\n{data}'
            '  (func (export "execute_go") (result i32) (i32.const 0)))')


def median_us(fn: Callable[[], object], rounds: int = 200) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def floor_us(engine: wasmtime.Engine, source: str) -> tuple[float, float]:
    """Store + instantiate from an InstancePre + one call: what any host of this module pays."""
    module = wasmtime.Module(engine, source)
    linker = wasmtime.Linker(engine)
    linker.define_unknown_imports_as_traps(module)
    pre = linker.instantiate_pre(module)

    def run() -> None:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 30)
        export = pre.instantiate(store).exports(store)["execute_go"]
        assert isinstance(export, wasmtime.Func)
        export(store)

    return median_us(run)


def main() -> None:
    policies = load_policies(ROOT / "policies")
    print(f"{'module data':>12} {'run_job p50/p99 us':>20} {'floor p50/p99 us':>18} {'overhead p50 us':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(policies, Path(tmp) / "data")
        try:
            for size in (0, 1 << 20, 8 << 20):
                directory = Path(tmp) / f"ext{size}"
                directory.mkdir()
                source = module_text(size)
                (directory / "m.wat").write_text(source)
                (directory / "manifest.yaml").write_text(
                    "id: com.example.bench\nname: B\nversion: 1.0.0\nmodule: m.wat\njobs: [go]\noperations: []\n")
                ext = load_extension(directory)
                first = time.perf_counter()
                result, _ = host.run_job(ext, "go", b"{}")
                first_ms = (time.perf_counter() - first) * 1000
                assert result.status == "completed", result.error
                j50, j99 = median_us(lambda ext=ext: host.run_job(ext, "go", b"{}"))
                f50, f99 = floor_us(host.runtime.engine, source)
                print(f"{size:>12,} {j50:>9.0f} / {j99:<8.0f} {f50:>8.0f} / {f99:<7.0f} {j50 - f50:>16.0f}"
                      f"   (first job {first_ms:.1f} ms: compile and link)")
        finally:
            host.close()


if __name__ == "__main__":
    main()
