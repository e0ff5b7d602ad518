"""Daemon throughput on more than one core: threads (workers = 0) vs 1 and 2 worker processes, 1/2/4/8 clients.

A real daemon per mode, each client one persistent connection running `jobs.run` back to back. Jobs are WAT
guests calling test.ping CALLS times (default 100: the per-job work is in the guest, the decisions and the
records, which is what worker processes spread over cores). Per mode and level: jobs/s (completed only), job
p50/p99, CPU ms per job of the daemon and its workers. The ratios the target is about, at the same client count,
measured in the same round (rounds interleave the modes, so load from other processes hits all of them alike):
the same daemon allowed two CPUs against one (`sched_setaffinity`, inherited by its workers), for threads and
for 2 workers; and jobs/s with 2 workers over jobs/s with 1 worker. The spread over rounds is printed, and the
load average before and after. Also: what taking a rate limit's tokens costs, in-process (threads) against
the shared-memory buckets the worker processes use.

Run: python bench/bench_daemon_workers.py [SECONDS_PER_LEVEL] [ROUNDS] [CALLS] [limits]   (default 3 s, 3 rounds,
100 calls; `limits`: only the cost of taking a rate limit's tokens)
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_soak import level  # noqa: E402 - the same client loop and percentiles as the soak bench
from wasm_helpers import pings  # noqa: E402 - the guest the worker tests run

from capengine.daemon.shared_buckets import SharedBuckets  # noqa: E402
from capengine.daemon.worker_process import SharedLimiter  # noqa: E402
from capengine.host.installed import InstalledRegistry  # noqa: E402
from capengine.host.manifests import load_extension  # noqa: E402
from capengine.host.rate_limiter import RateLimiter  # noqa: E402
from capengine.policy.engine import PolicySet  # noqa: E402
from capengine.policy.loader import load_paths  # noqa: E402

LEVELS = (1, 2, 4, 8)
# (name, worker processes, CPUs the daemon and its workers may run on: None for all). The pinned modes are
# the literal "1 -> 2 cores" of the target: the same daemon on one core against two.
MODES: tuple[tuple[str, int, set[int] | None], ...] = (
    ("threads", 0, None), ("1 worker", 1, None), ("2 workers", 2, None),
    ("threads/1cpu", 0, {0}), ("2 workers/1cpu", 2, {0}))
POLICY = """apiVersion: capengine/v1
kind: Policy
metadata: {name: bench}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: ping, effect: allow, operations: [test.ping]}
"""
LIMIT = "  limits:\n    - {operations: [test.ping], rate: 1000000/second, burst: 1000000}\n"


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def health(sock: Path) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(sock))
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n')
        return json.loads(s.makefile("rb").readline())["result"]


class Daemon:
    def __init__(self, tmp: Path, workers: int, policies: Path, cpus: set[int] | None) -> None:
        self.sock = tmp / f"ctl-{workers}-{time.monotonic_ns()}.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.err = (tmp / "daemon.err").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "capengine", "daemon", "--policies", str(policies), "--extensions",
             str(tmp / "extensions"), "--data-dir", str(tmp / "data"), "--socket", str(self.sock),
             "--watch-interval", "0", "--max-jobs", "16", "--workers", str(workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=self.err)
        if cpus is not None:  # before it loads its policies and forks its workers, which inherit it
            os.sched_setaffinity(self.proc.pid, cpus)
        subprocess.run([sys.executable, "-m", "capengine", "ctl", "--socket", str(self.sock), "--wait", "120",
                        "health"], check=True, env=env, stdout=subprocess.DEVNULL)
        self.pids = [self.proc.pid] + health(self.sock).get("workers", {}).get("pids", [])
        for pid in self.pids if cpus is not None else ():
            assert os.sched_getaffinity(pid) == cpus, (pid, os.sched_getaffinity(pid))

    def level(self, clients: int, seconds: float, request: bytes) -> dict:
        import bench_soak

        bench_soak.REQUEST = request
        cpu0 = tree_cpu(self.pids)
        result = level(self.sock, self.proc.pid, clients, seconds)
        jobs = result["jobs_s"] * seconds
        result["cpu_ms_per_job"] = (tree_cpu(self.pids) - cpu0) * 1000 / jobs if jobs else float("nan")
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


ACQUIRES = 100_000


def acquire_costs(rounds: int) -> tuple[list[float], list[float]]:
    """us per acquire of one applicable limit: the in-process limiter (threads) against the shared-memory one
    every worker process uses (same policy set, same clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.yaml").write_text(POLICY + LIMIT)
        policy_set = PolicySet.from_load(load_paths([tmp]))
    buckets = SharedBuckets.create()
    limiters = (RateLimiter(policy_set.policies), SharedLimiter(policy_set, buckets))
    costs: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for limiter, out in zip(limiters, costs):
            start = time.perf_counter()
            for _ in range(ACQUIRES):
                limiter.acquire("com.example.pinger", "test.ping", "com.example.pinger")
            out.append((time.perf_counter() - start) * 1e6 / ACQUIRES)
    buckets.close()
    return costs


def request(extension: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "jobs.run", "params": {
        "extension": extension, "job": "go", "input": {}}}).encode() + b"\n"


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    only_limits = sys.argv[4:5] == ["limits"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "plain").mkdir()
        (tmp / "plain" / "p.yaml").write_text(POLICY)
        ext = tmp / "extensions" / "pinger"
        ext.mkdir(parents=True)
        (ext / "guest.wat").write_text(pings(calls))
        (ext / "manifest.yaml").write_text("id: com.example.pinger\nname: pinger\nversion: 1.0.0\n"
                                           "module: guest.wat\njobs: [go]\noperations: [test.ping]\n")
        InstalledRegistry(tmp / "data").install(load_extension(ext))
        ping = request("com.example.pinger")
        results: dict[tuple[str, int], list[dict]] = {}
        loads = [os.getloadavg()]
        for _ in range(0 if only_limits else rounds):
            for mode, workers, cpus in MODES:
                daemon = Daemon(tmp, workers, tmp / "plain", cpus)
                try:
                    daemon.level(1, 1.0, ping)  # warm-up: module compiled and cached in every worker
                    for clients in LEVELS:
                        results.setdefault((mode, clients), []).append(daemon.level(clients, seconds, ping))
                finally:
                    daemon.stop()
            loads.append(os.getloadavg())
    print(f"daemon workers: {calls}-call test.ping jobs, {seconds:g} s per level, {rounds} round(s); "
          f"cpus: {os.cpu_count()}; load average (1/5/15 min) before: {loads[0][0]:.2f}/{loads[0][1]:.2f}/"
          f"{loads[0][2]:.2f}, after each round: " + ", ".join(f"{a:.2f}" for a, _, _ in loads[1:]))
    print(f"{'mode':>10} {'clients':>7} {'jobs/s median (min-max)':>24} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms/job':>10} {'errors':>6}")
    for mode, _, _ in MODES:
        for clients in LEVELS if results else ():
            runs = results[(mode, clients)]
            p50, p99 = statistics.median(r["p50"] for r in runs), statistics.median(r["p99"] for r in runs)
            print(f"{mode:>10} {clients:>7} {spread([r['jobs_s'] for r in runs]):>24} {p50:>8.1f} {p99:>8.1f} "
                  f"{statistics.median(r['cpu_ms_per_job'] for r in runs):>10.1f} {sum(r['errors'] for r in runs):>6}")
    print("jobs/s ratios, per round (same round, same client count), median (min-max):")
    for clients in LEVELS if results else ():
        two = [r["jobs_s"] for r in results[("2 workers", clients)]]
        one = [r["jobs_s"] for r in results[("1 worker", clients)]]
        threads = [r["jobs_s"] for r in results[("threads", clients)]]
        print(f"  {clients} client(s): 2 workers / 1 worker {spread([a / b for a, b in zip(two, one)], '{:.2f}')}x;"
              f"  2 workers / threads {spread([a / b for a, b in zip(two, threads)], '{:.2f}')}x;"
              f"  1 worker / threads {spread([a / b for a, b in zip(one, threads)], '{:.2f}')}x")
    print("1 -> 2 cores (the same mode on two CPUs against one), jobs/s ratios per round, median (min-max):")
    for clients in LEVELS if results else ():
        ratios = {mode: [a["jobs_s"] / b["jobs_s"] for a, b in zip(results[(mode, clients)],
                                                                 results[(f"{mode}/1cpu", clients)])]
                  for mode in ("threads", "2 workers")}
        print(f"  {clients} client(s): " + ";  ".join(f"{mode} {spread(r, '{:.2f}')}x" for mode, r in ratios.items()))
    in_process, shared = acquire_costs(rounds)
    print(f"taking a rate limit's tokens, us per call, median (min-max) of {rounds} round(s) of {ACQUIRES:,}: "
          f"in-process RateLimiter {spread(in_process, '{:.2f}')}, shared-memory buckets (worker processes) "
          f"{spread(shared, '{:.2f}')}; ratio {spread([b / a for a, b in zip(in_process, shared)], '{:.2f}')}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
