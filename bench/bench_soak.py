"""Soak: a real daemon under 1, 4, 16 and 64 concurrent clients for a fixed time each.

Every client keeps one connection and runs `jobs.run` of the bundled hello-wat extension (a policy decision
and a file read per job) back to back. Per level: jobs/s (goodput: completed jobs only), p50/p99 latency,
errors (error replies, failed jobs, broken connections), and the daemon's RSS and open fds at the start and
end of the level. The check the daemon must pass: goodput at 64 clients is at least 80% of the 4-client
figure (queueing, not a -32001 rejection storm). Each level is repeated ROUNDS times; the spread is printed.

Run: python bench/bench_soak.py [SECONDS_PER_LEVEL] [ROUNDS]   (default 5 s, 2 rounds)
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
REQUEST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "jobs.run", "params": {
    "extension": "com.example.hello-wat", "job": "read", "input": {"path": "/docs/hello.txt"}}}).encode() + b"\n"
LEVELS = (1, 4, 16, 64)


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def client(path: Path, until: float, latencies: list[float], errors: list[str]) -> None:
    sock = None
    while time.monotonic() < until:
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(120)
                sock.connect(str(path))
                reader = sock.makefile("rb")
            start = time.perf_counter()
            sock.sendall(REQUEST)
            reply = json.loads(reader.readline())
            elapsed = time.perf_counter() - start
            if "error" in reply:
                errors.append(str(reply["error"]["code"]))
            elif reply["result"]["status"] != "completed":
                errors.append(reply["result"]["status"])
            else:
                latencies.append(elapsed)
        except (OSError, ValueError) as exc:
            errors.append(type(exc).__name__)
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def level(path: Path, pid: int, clients: int, seconds: float) -> dict:
    rss0, fds0 = proc_stats(pid)
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(path, until, latencies, errors)) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    rss1, fds1 = proc_stats(pid)
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (
        lambda q: float("nan"))
    return {"clients": clients, "jobs_s": len(latencies) / elapsed, "p50": pick(0.5), "p99": pick(0.99),
            "errors": len(errors), "kinds": sorted(set(errors)), "rss": (rss0, rss1), "fds": (fds0, fds1)}


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory() as tmp:
        data, sock_path = Path(tmp) / "data", Path(tmp) / "ctl.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        library = ROOT / "extensions" / "sample-library"
        subprocess.run([sys.executable, "-m", "capengine", "library", "add", str(library), "--data-dir", str(data)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        err = (Path(tmp) / "daemon.err").open("w")
        daemon = subprocess.Popen([sys.executable, "-m", "capengine", "daemon", "--policies", str(ROOT / "policies"),
                                   "--extensions", str(ROOT / "extensions"), "--data-dir", str(data), "--socket",
                                   str(sock_path), "--watch-interval", "0"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=err)
        try:
            subprocess.run([sys.executable, "-m", "capengine", "ctl", "--socket", str(sock_path), "--wait", "60",
                            "health"], check=True, env=env, stdout=subprocess.DEVNULL)
            level(sock_path, daemon.pid, 1, 1.0)  # warm-up: module compiled and cached
            results: dict[int, list[dict]] = {n: [] for n in LEVELS}
            for _ in range(rounds):
                for n in LEVELS:
                    results[n].append(level(sock_path, daemon.pid, n, seconds))
        finally:
            daemon.terminate()
            daemon.wait(60)
    print(f"soak: hello-wat jobs.run over persistent connections, {seconds:g} s per level, {rounds} round(s); "
          f"cpus: {os.cpu_count()}")
    print(f"{'clients':>7} {'jobs/s':>16} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  {'RSS KiB start->end':>20}  "
          f"{'fds start->end':>14}")
    goodput: dict[int, float] = {}
    for n in LEVELS:
        runs = results[n]
        rates = [r["jobs_s"] for r in runs]
        goodput[n] = statistics.mean(rates)
        spread = f"{goodput[n]:.0f} ({min(rates):.0f}-{max(rates):.0f})"
        last = runs[-1]
        print(f"{n:>7} {spread:>16} {statistics.mean(r['p50'] for r in runs):>8.1f} "
              f"{statistics.mean(r['p99'] for r in runs):>8.1f} {sum(r['errors'] for r in runs):>6}  "
              f"{runs[0]['rss'][0]:>9}->{last['rss'][1]:<9}  {runs[0]['fds'][0]:>6}->{last['fds'][1]:<6}"
              + (f"  {sorted({k for r in runs for k in r['kinds']})}" if any(r["errors"] for r in runs) else ""))
    ratio = goodput[64] / goodput[4]
    print(f"goodput at 64 clients = {ratio:.0%} of 4 clients (required: >= 80%): {'PASS' if ratio >= 0.8 else 'FAIL'}")
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
