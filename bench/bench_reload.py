"""Reload cost when one policy file of many changed, and what jobs feel while reloads happen.

Part 1, in process: the baseline is the cold check of the same set in the same run (every file parsed,
validated, compiled). Then one file is edited and (a) the set checked again (`run_check`), (b) the daemon's
whole reload run (`PolicyManager.reload_now`: read the files, check, read again, compare with the last good
set, swap), each timed as wall and CPU time; and once more with no change. Target: reload after 1 of 1,000
files changed <= 50 ms.

Part 2, a real daemon: the bundled policies plus FILES generated ones, the inotify watcher on; one client runs
hello-wat jobs back to back, first QUIET seconds with nothing changing, then as long again while a file is
edited every 0.25 s (each edit is one reload, through inotify). Target: job p99 during reloads <= 2x quiet.

Run: python bench/bench_reload.py [FILES] [SECONDS] [WORKERS]   (default 1000 files, 8 s per phase, 0 workers:
jobs on the daemon's threads; N: the daemon's --workers N, jobs in worker processes)
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_check_scale import write_policies  # noqa: E402
from bench_soak import client  # noqa: E402

from capengine.daemon.client import call  # noqa: E402
from capengine.daemon.reload import PolicyManager  # noqa: E402
from capengine.host.operations import default_registry  # noqa: E402
from capengine.policy.check import run_check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed(action) -> tuple[float, float]:
    """(wall, CPU of this thread) seconds of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    action()
    return time.perf_counter() - wall, time.thread_time() - cpu


def checked(directory: Path, operations: list[str]) -> None:
    outcome = run_check([directory], operations=operations)
    assert not outcome.errors, [str(f) for f in outcome.findings if f.severity == "error"][:3]


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def edit(path: Path, i: int) -> None:
    """A new limit in the conditional deny: a different file each time `i` differs."""
    path.write_text(re.sub(r"args\.length > \d+", f"args.length > {10 ** 6 + i}", path.read_text(), count=1))


def in_process(files: int) -> None:
    operations = default_registry().names()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "policies"
        write_policies(directory, files)
        cold, _ = timed(lambda: checked(directory, operations))
        manager = PolicyManager(directory, operations, lambda policy_set: None, settle=0.0)
        rounds = 9
        checks, reloads, reload_cpu, unchanged = [], [], [], []
        target = directory / "p00000.yaml"
        for i in range(rounds):
            edit(target, 2 * i)
            checks.append(timed(lambda: checked(directory, operations))[0])
            edit(target, 2 * i + 1)
            result: list[dict] = []
            wall, cpu = timed(lambda: result.append(manager.reload_now()))  # noqa: B023 - called at once
            assert result[0]["reloaded"] and result[0]["changed"], result
            reloads.append(wall)
            reload_cpu.append(cpu)
            unchanged.append(timed(lambda: manager.reload_now())[0])
        print(f"{files} files: cold check {cold * 1000:.0f} ms; after editing 1 file (median (min-max) of {rounds}): "
              f"run_check {ms(checks)}; daemon reload_now {ms(reloads)} wall, {ms(reload_cpu)} CPU; nothing "
              f"changed {ms(unchanged)}; cold / reload {cold / statistics.median(reloads):.0f}x")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def under_load(files: int, seconds: float, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, sock, policies = Path(tmp) / "data", Path(tmp) / "ctl.sock", Path(tmp) / "policies"
        shutil.copytree(ROOT / "policies", policies)
        write_policies(policies / "generated", files)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        library = ROOT / "extensions" / "sample-library"
        subprocess.run([sys.executable, "-m", "capengine", "library", "add", str(library), "--data-dir", str(data)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "capengine", "ext", "install", str(ROOT / "extensions" / "hello-wat"),
                        "--data-dir", str(data)], check=True, env=env, stdout=subprocess.DEVNULL)
        err = (Path(tmp) / "daemon.err").open("w")
        daemon = subprocess.Popen([sys.executable, "-m", "capengine", "daemon", "--policies", str(policies),
                                   "--extensions", str(ROOT / "extensions"), "--data-dir", str(data), "--socket",
                                   str(sock), "--watch-interval", "1", "--workers", str(workers)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            subprocess.run([sys.executable, "-m", "capengine", "ctl", "--socket", str(sock), "--wait", "300",
                            "health"], check=True, env=env, stdout=subprocess.DEVNULL)
            warm: list[str] = []
            client(sock, time.monotonic() + 1, [], warm)  # warm-up: module compiled and cached
            if warm:
                log = (Path(tmp) / "daemon.err").read_text()
                raise SystemExit(f"jobs fail: {sorted(set(warm))}; daemon log:\n{log}")
            quiet: list[float] = []
            errors: list[str] = []
            client(sock, time.monotonic() + seconds, quiet, errors)
            before = call(sock, "health")["result"]["policy"]
            busy: list[float] = []
            stop = threading.Event()

            def editor() -> None:
                i = 0
                while not stop.wait(0.25):
                    edit(policies / "generated" / f"p{i % files:05}.yaml", i)
                    i += 1
            thread = threading.Thread(target=editor)
            thread.start()
            client(sock, time.monotonic() + seconds, busy, errors)
            stop.set()
            thread.join()
            time.sleep(1)
            after = call(sock, "health")["result"]["policy"]
        finally:
            daemon.terminate()
            daemon.wait(60)
    reloads = after["reloads_ok"] - before["reloads_ok"]
    failed = after["reloads_failed"] - before["reloads_failed"]
    print(f"daemon ({workers} worker processes) with {files} + bundled policy files, hello-wat jobs back to back, "
          f"{seconds:g} s each: quiet "
          f"{len(quiet)} jobs p50 {percentile(quiet, 0.5):.1f} ms p99 {percentile(quiet, 0.99):.1f} ms; during "
          f"{reloads} reloads ({failed} refused) {len(busy)} jobs p50 {percentile(busy, 0.5):.1f} ms p99 "
          f"{percentile(busy, 0.99):.1f} ms; p99 during / quiet {percentile(busy, 0.99) / percentile(quiet, 0.99):.2f}x"
          + (f"; errors {sorted(set(errors))}" if errors else ""))


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    in_process(files)
    under_load(files, seconds, workers)


if __name__ == "__main__":
    main()
