"""What the decision log costs the daemon per call: on the calling thread, in CPU per record, and in GIL time
taken from job threads, against an in-process writer thread (what it was before the writer process) and no
log at all, in the same run. Also what an allowed effect, and a job's end, wait for: one record queued and
waited for until it is in the file.

Workload: a "job" thread does a fixed piece of pure-Python work per call (≈ a host call's Python path) and
records each call. Measured per call: the job thread's wall time (what the guest feels: it includes waiting
for the GIL, and on a shared machine waiting for a core), the same until every record is written, its own
CPU time in `admit()+record()`, the CPU of the thread that hands records on (the GIL time the log takes from
job threads), and the writer process's CPU (clock ticks: 10 ms resolution).

Run: python bench/bench_decision_log.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from capengine.daemon.decision_log import DecisionLog, encode_line, to_record
from capengine.host.envelope import CallRecord

TICKS = os.sysconf("SC_CLK_TCK")


def call(i: int) -> CallRecord:
    return CallRecord(extension="com.example.app", operation="vdfs.read_file", library="6c1f0e4a-2b3d-4c5e-8f90-"
                      "a1b2c3d4e5f6", path=f"/photos/{i % 100}/img.png", decided=True, allowed=True,
                      rules=("org/photos",), errors=(), args={"path": f"/photos/{i % 100}/img.png", "offset": i},
                      code="OK", message="", revision="r1", duration_us=12)


def work(n: int = 60) -> int:
    """Pure-Python work standing in for one host call's Python path (~10 µs)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


class ThreadWriter:
    """The previous design, for comparison: a thread in this process builds and writes every record."""

    def __init__(self, path: Path) -> None:
        self.pending: collections.deque = collections.deque()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.mask = frozenset({"password"})
        self.stop = False
        self.recorded = self.done = 0
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def admit(self) -> None:
        return None

    def record(self, c: CallRecord) -> None:
        self.pending.append((time.time(), "id", c))
        self.recorded += 1

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.done < self.recorded and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.done >= self.recorded

    def run(self) -> None:
        """As the previous DecisionLog's thread did: batches of up to 1,000 back to back, a 50 ms nap when idle."""
        while not self.stop or self.pending:
            batch = [self.pending.popleft() for _ in range(min(1000, len(self.pending)))]
            if not batch:
                time.sleep(0.05)
            else:
                os.write(self.fd, b"".join(encode_line(to_record(w, i, c, self.mask)) for w, i, c in batch))
                self.done += len(batch)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        os.close(self.fd)


class NoLog:
    def admit(self) -> None:
        return None

    def record(self, c: CallRecord) -> None:
        return None

    def close(self) -> None:
        return None


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, ProcessLookupError):
        return 0.0


def run(log, calls: list[CallRecord]) -> dict[str, float]:
    """µs per call: job wall time, job CPU in the log's calls, feeder and writer-process CPU."""
    in_log = 0.0
    feeder = getattr(log, "_writer", None) or getattr(log, "thread", None)
    feeder_before = thread_cpu(feeder)
    process = getattr(log, "_process", None)
    writer_before = process_cpu(process.proc.pid) if process is not None else 0.0
    start = time.perf_counter()
    for c in calls:
        work()
        t0 = time.thread_time()
        log.admit()
        log.record(c)
        in_log += time.thread_time() - t0
    wall = time.perf_counter() - start
    if hasattr(log, "flush"):
        assert log.flush(60)
    drained = time.perf_counter() - start
    process = getattr(log, "_process", None)
    writer = process_cpu(process.proc.pid) - writer_before if process is not None else 0.0
    n = len(calls) / 1e6
    return {"wall": wall / n, "wall until written": drained / n, "calling thread": in_log / n,
            "feeder thread CPU": (thread_cpu(feeder) - feeder_before) / n, "writer process CPU": writer / n}


SYNCED = 2000  # records written one by one per round: what an allowed effect or a job's end waits for


def synced(log: DecisionLog, calls: list[CallRecord]) -> float:
    """µs per record queued and then waited for until it is in the file (`flush(unless_failing=True)`)."""
    start = time.perf_counter()
    for c in calls[:SYNCED]:
        log.record(c)
        log.flush(10, unless_failing=True)
    return (time.perf_counter() - start) * 1e6 / SYNCED


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    calls = [call(i) for i in range(options.calls)]
    figures: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        process_log = DecisionLog(Path(tmp) / "d.jsonl", max_bytes=1 << 30)
        thread_log = ThreadWriter(Path(tmp) / "t.jsonl")
        try:
            for _ in range(options.rounds):
                none = run(NoLog(), calls)
                for name, log in (("writer process", process_log), ("writer thread (before)", thread_log)):
                    row = run(log, calls)
                    for key, value in row.items():
                        figures[f"{name}: {key}"].append(value)
                    figures[f"{name}: wall - no log"].append(row["wall"] - none["wall"])
                figures["no log: wall"].append(none["wall"])
                figures["writer process: one record written, waited for"].append(synced(process_log, calls))
        finally:
            process_log.close()
            thread_log.close()
    print(f"µs per call, median (min–max) of {options.rounds} rounds of {options.calls} calls:")
    for key, values in sorted(figures.items()):
        print(f"  {key:48s} {spread(values)}")


if __name__ == "__main__":
    main()
