"""`capengine check` as a whole process on large policy sets, the way CI runs it.

Each file holds one policy for its own extension with an allow, a conditional deny and an unconditional
deny (the shape that made the shadowed-allow lint quadratic). The baseline is the same command on one file,
timed in the same run; the figure that matters is seconds for N files (target: 10,000 files <= 10 s) and
the per-file cost.

Each size is checked twice: loading on one process ($CAPENGINE_CHECK_PROCESSES=1) and on one process per usable
core (what `check` does by itself when the cores are idle; capengine/policy/loader_parallel.py). On a shared
machine the wall time of the second depends on whether the other cores are free; its CPU time includes the
children's.

Run: python bench/bench_check_scale.py [FILES...]   (default 1000 10000)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def write_policies(directory: Path, files: int) -> None:
    directory.mkdir()
    for i in range(files):
        (directory / f"p{i:05}.yaml").write_text(
            f"apiVersion: capengine/v1\nkind: Policy\nmetadata: {{name: p{i}}}\nspec:\n"
            f"  extensions: ['com.example.ext{i}']\n  rules:\n"
            f"    - {{id: read, effect: allow, operations: [vdfs.read_file, vdfs.stat],\n"
            f"       condition: 'library == \"{LIB}\" && path.under(\"/d{i}\")'}}\n"
            f"    - {{id: no-big, effect: deny, operations: [vdfs.read_file],\n"
            f"       condition: 'has(args.length) && args.length > {1000 + i}'}}\n"
            f"    - {{id: no-ocr, effect: deny, operations: [ai.ocr]}}\n", encoding="utf-8")


def check_seconds(directory: Path, processes: str = "") -> tuple[float, float]:
    """(wall, CPU) seconds of one `capengine check` process (and its children): on a shared machine the CPU time
    is the steadier figure (the wall time also counts waiting for a core). `processes`: how many processes
    load the files."""
    env = {**os.environ, "CAPENGINE_CHECK_PROCESSES": processes}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "capengine", "check", str(directory)], capture_output=True,
                          text=True, timeout=3600, env=env)
    elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"check failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        write_policies(one, 1)
        base, base_cpu = min(check_seconds(one) for _ in range(3))
        print(f"check of 1 file (process start included): {base:.2f} s, {base_cpu:.2f} s CPU")
        for n in sizes:
            many = Path(tmp) / f"n{n}"
            write_policies(many, n)
            cores = len(os.sched_getaffinity(0))
            for label, processes in (("one process", "1"), (f"{cores} processes", str(cores))):
                seconds, cpu = check_seconds(many, processes)
                per_file = (cpu - base_cpu) / n * 1000
                print(f"check of {n} files, {label}: {seconds:.1f} s, {cpu:.1f} s CPU ({per_file:.2f} ms CPU/file "
                      f"over the 1-file run); ratio {seconds / base:.0f}x wall, {cpu / base_cpu:.0f}x CPU for {n}x "
                      "files")


if __name__ == "__main__":
    main()
