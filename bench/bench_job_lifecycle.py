"""What the job lifecycle costs: a job.progress call against a test.ping call (the baseline round trip),
measured in the same run, and the Rust counter end to end (per step: job.interrupted + job.progress +
job.metrics, a fsynced checkpoint every 10 steps) with the number of decision-log records it produced.

Prints medians with min..max over the repeats; compare ratios, not absolute numbers (machines here are noisy).
Run: python bench/bench_job_lifecycle.py [CALLS] [REPEATS]   (make -C extensions first, for the counter)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from wasm_helpers import extension, make_host, wat_module  # noqa: E402

from capengine.host.envelope import CallRecord  # noqa: E402
from capengine.host.manifests import load_extension  # noqa: E402

LOOP = """
  (func (export "execute_go") (result i32)
    (local $i i32) (local $n i32)
    (loop $l
      (local.set $n (call $spacedrive_call (i32.const 1024) (global.get $mlen) (i32.const 0) (i32.const 4096)
                                           (global.get $plen)))
      (drop (call $spacedrive_result (i32.const 16384) (local.get $n)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (global.get $calls))))
    (i32.const 0))"""
POLICY = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: b}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: ping, effect: allow, operations: [test.ping]}
    - {id: jobs, effect: allow, operations: ["job.*"]}
"""


def guest(method: str, payload: str, calls: int) -> str:
    escaped = payload.replace('"', '\\"')
    data = (f'  (data (i32.const 1024) "{method}")\n  (data (i32.const 4096) "{escaped}")\n'
            f'  (global $calls i32 (i32.const {calls}))\n  (global $mlen i32 (i32.const {len(method)}))\n'
            f'  (global $plen i32 (i32.const {len(payload)}))')
    return wat_module(LOOP, data)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}..{max(values):.2f})"


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        records: list[CallRecord] = []
        host = make_host(Path(tmp), POLICY)
        host.on_call = records.append
        try:
            ping = extension(Path(tmp), guest("test.ping", '{"message": "hello"}', calls), "com.example.ping")
            progress = extension(Path(tmp), guest("job.progress", '{"progress": 0.5, "message": "m"}', calls),
                                 "com.example.progress")
            per_call: dict[str, list[float]] = {"test.ping": [], "job.progress": []}
            for _ in range(repeats):
                for name, ext in (("test.ping", ping), ("job.progress", progress)):
                    start = time.perf_counter()
                    result, _ = host.run_job(ext, "go", b"{}")
                    per_call[name].append((time.perf_counter() - start) / calls * 1e6)
                    assert result.status == "completed", result.error
            ratios = [p / q for p, q in zip(per_call["job.progress"], per_call["test.ping"], strict=True)]
            counter = load_extension(ROOT / "extensions" / "test-extension")
            steps, logged = [], []
            for _ in range(repeats):
                records.clear()
                start = time.perf_counter()
                result, _ = host.run_job(counter, "counter", f'{{"target": {calls // 10}}}'.encode())
                steps.append((time.perf_counter() - start) / (calls // 10) * 1e6)
                logged.append(len(records))
                assert result.status == "completed", result.error
        finally:
            host.close()
    print(f"test.ping round trip (baseline): {spread(per_call['test.ping'])} us/call  [{calls} calls x {repeats}]")
    print(f"job.progress round trip:         {spread(per_call['job.progress'])} us/call")
    print(f"ratio job.progress / test.ping:  {spread(ratios)}x")
    print(f"counter step (3 calls + 1/10 fsynced checkpoint): {spread(steps)} us/step  [{calls // 10} steps]")
    print(f"decision-log records per counter run: {logged[0]} for {calls // 10 * 3 + calls // 100 + 2} calls "
          "(aggregated)")


if __name__ == "__main__":
    main()
