"""Loading on several processes (loader_parallel) gives exactly what one process gives: the same findings in
the same order (errors in files of every chunk, a duplicate policy name across chunks, failing and passing
policy tests that decide through conditions compiled in a child), the same revision; it falls back to one
process when forking fails or a child dies, and leaves no process behind, even when interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from capengine.policy import loader, loader_parallel, memo
from capengine.policy.check import run_check
from capengine.policy.loader import load_paths

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def _policy(i: int) -> str:
    return (f"apiVersion: capengine/v1\nkind: Policy\nmetadata: {{name: p{i}}}\nspec:\n"
            f"  extensions: ['com.example.ext{i}']\n  rules:\n"
            f"    - {{id: read, effect: allow, operations: [vdfs.read_file, vdfs.stat],\n"
            f"       condition: 'library == \"{LIB}\" && path.under(\"/d{i}\")'}}\n"
            f"    - {{id: no-big, effect: deny, operations: [vdfs.read_file],\n"
            f"       condition: 'has(args.length) && args.length > {1000 + i}'}}\n"
            f"    - {{id: no-ocr, effect: deny, operations: [ai.ocr]}}\n")


BROKEN = {
    3: "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p3}\nspec:\n  extensions: [a]\n  extensions: [b]\n"
       "  rules: []\n",
    10: "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p10\nspec: [\n",
    21: "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p21}\nspec:\n  extensions: ['x']\n  rules:\n"
        "    - {id: r, effect: allow, operations: [vdfs.read_file], condition: 'path.under(\"/a\") && (('}\n"
        "    - {id: s, effect: deny, operations: [vdfs.read_file], condition: 'args.lenght > 3'}\n"
        "    - id: u\n      effect: allow\n      operations: [vdfs.read_file]\n      condition: |\n"
        "        path.startsWith(\"/a\") &&\n          size(path) > 1 +\n",
    29: "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p29, colour: red}\nspec:\n  extensions: ['x*']\n"
        "  rules:\n    - {id: r, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 3'}\n"
        "    - {id: r, effect: allow, operations: ['class:nope'], condition: 'path.startsWith(\"/a\")'}\n",
    37: "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p1}\nspec:\n  extensions: ['*']\n  rules:\n"
        "    - {id: r, effect: allow, operations: ['vdfs.*']}\n",
    44: "",
    51: "a: &x [1]\nb: *x\n",
}

SUITE = f"""apiVersion: capengine/v1
kind: PolicyTest
metadata: {{name: t}}
cases:
  - name: reads (a condition compiled in a child)
    request: {{extension: com.example.ext55, operation: vdfs.read_file, path: /d55/x, library: {LIB},
              args: {{length: 5}}}}
    expect: allow
    rule: p55/read
  - name: big
    request: {{extension: com.example.ext56, operation: vdfs.read_file, path: /d56/x, library: {LIB},
              args: {{length: 50000}}}}
    expect: allow
  - name: big
    request: {{extension: com.example.ext8, operation: ai.ocr}}
    expect: deny
  - name: outside
    request: {{extension: com.example.ext2, operation: vdfs.read_file, path: /elsewhere, library: {LIB}}}
    expect: deny
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    for i in range(60):
        (directory / f"p{i:03}.yaml").write_text(BROKEN.get(i, _policy(i)))
    (directory / "p052.yaml").write_bytes(b"\xff\xfe not UTF-8")
    (directory / "zz.test.yaml").write_text(SUITE)
    return directory


@pytest.fixture(autouse=True)
def cold_caches(monkeypatch):
    """Every load compiles afresh: a child must not get its results from the parent's caches."""
    monkeypatch.setattr(loader, "_cache", type(loader._cache)())
    monkeypatch.setattr(loader, "_COMPILED", memo.IdentityMemo())
    monkeypatch.delenv(loader_parallel.PROCESSES_ENV, raising=False)


def _outcome(directory: Path, processes: int | None):
    loader._cache.clear()
    outcome = run_check([directory], generate=False, processes=processes)
    tests = outcome.tests
    assert tests is not None
    return ([(str(f), f.code) for f in outcome.findings], outcome.load.revision,
            [(r.case.name, r.passed, r.decision.to_json()) for r in tests.results], tests.uncovered)


def _children() -> list[int]:
    """Live processes whose parent is this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("processes", [2, 3, 7])
def test_several_processes_give_the_findings_of_one(policy_dir, processes):
    before = _children()
    serial = _outcome(policy_dir, 1)
    assert any("p010.yaml" in f and "yaml-syntax" in f for f, _ in serial[0])  # the set has errors to compare
    assert any("p037.yaml" in f and "duplicate-policy" in f for f, _ in serial[0])
    assert any("failed" in f or "expected allow" in f for f, _ in serial[0])
    assert _outcome(policy_dir, processes) == serial
    assert _children() == before


def test_forks_really_happen(policy_dir, monkeypatch):
    forks = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    serial = _outcome(policy_dir, 1)
    assert not forks
    parent, real, loaded_here = os.getpid(), loader._load_items, []

    def counting_load(items, *args, **kwargs):
        if os.getpid() == parent:
            loaded_here.append(len(items))
        return real(items, *args, **kwargs)

    monkeypatch.setattr(loader, "_load_items", counting_load)
    assert _outcome(policy_dir, 3) == serial
    assert len(forks) == 2
    # the children's results were used (they pickled), not loaded again here: the caller loaded its third only
    # (its first file before forking, to set up once what every process needs)
    assert loaded_here == [1, 61 // 3 - 1]


def test_no_fork_means_one_process(policy_dir, monkeypatch):
    serial = _outcome(policy_dir, 1)

    def no_fork() -> int:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert _outcome(policy_dir, 3) == serial
    monkeypatch.delattr(os, "fork")
    assert loader_parallel.processes_for(10_000, None) == 1
    assert _outcome(policy_dir, 3) == serial


def test_a_child_that_dies_costs_time_not_results(policy_dir, monkeypatch):
    serial = _outcome(policy_dir, 1)
    parent = os.getpid()
    real = loader._load_items

    def dying(items, *args, **kwargs):
        if os.getpid() != parent:
            os.kill(os.getpid(), 9)  # killed (e.g. by the OOM killer) in the middle of its chunk
        return real(items, *args, **kwargs)

    monkeypatch.setattr(loader, "_load_items", dying)
    assert _outcome(policy_dir, 3) == serial

    def raising(items, *args, **kwargs):
        if os.getpid() != parent:
            raise MemoryError
        return real(items, *args, **kwargs)

    monkeypatch.setattr(loader, "_load_items", raising)
    assert _outcome(policy_dir, 2) == serial
    assert _children() == []


def test_an_interrupted_load_leaves_no_child_behind(policy_dir, monkeypatch):
    parent = os.getpid()
    real = loader._load_items

    def slow_children_interrupted_parent(items, *args, **kwargs):
        if os.getpid() != parent:
            time.sleep(60)  # a child still working when the caller is interrupted
        else:
            raise KeyboardInterrupt
        return real(items, *args, **kwargs)

    monkeypatch.setattr(loader, "_load_items", slow_children_interrupted_parent)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        load_paths([policy_dir], generate=False, processes=3)
    assert time.monotonic() - started < 30  # killed, not waited for
    assert _children() == []


def test_how_many_processes(monkeypatch, tmp_path):
    assert loader_parallel.processes_for(100, 1) == 1
    assert loader_parallel.processes_for(100, 4) == 4
    assert loader_parallel.processes_for(3, 8) == 3
    assert loader_parallel.processes_for(1, 8) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(loader_parallel, "LOADAVG", str(loadavg))
    loadavg.write_text("3.20 2.10 1.50 1/88 32084\n")  # only this process runs now (the last minute was busy)
    assert loader_parallel.processes_for(10, None) == 1  # too few files to pay for a fork
    assert loader_parallel.processes_for(1_200, None) == 2  # at most one process per 500 files
    assert loader_parallel.processes_for(100_000, None) == 4
    loadavg.write_text("3.20 2.10 1.50 3/88 32084\n")  # two others running
    assert loader_parallel.processes_for(100_000, None) == 2  # the idle cores only
    loadavg.write_text("40.0 30.0 20.0 41/300 32084\n")
    assert loader_parallel.processes_for(100_000, None) == 1
    assert loader_parallel.processes_for(100_000, 3) == 3  # asked for: used as asked


def test_without_a_run_queue_the_load_average_counts(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(loader_parallel, "LOADAVG", str(tmp_path / "missing"))
    monkeypatch.setattr(os, "getloadavg", lambda: (2.7, 0.3, 0.2))
    assert loader_parallel.processes_for(100_000, None) == 2
    (tmp_path / "garbled").write_text("not a load average")
    monkeypatch.setattr(loader_parallel, "LOADAVG", str(tmp_path / "garbled"))
    assert loader_parallel.processes_for(100_000, None) == 2

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert loader_parallel.processes_for(100_000, None) == 4


def test_environment_forces_processes(monkeypatch):
    monkeypatch.setenv(loader_parallel.PROCESSES_ENV, "1")
    assert loader_parallel.processes_for(100_000, None) == 1
    monkeypatch.setenv(loader_parallel.PROCESSES_ENV, "3")
    assert loader_parallel.processes_for(10, None) == 3
    monkeypatch.setenv(loader_parallel.PROCESSES_ENV, "100000")
    assert loader_parallel.processes_for(100_000, None) == loader_parallel.MAX_PROCESSES
    monkeypatch.setenv(loader_parallel.PROCESSES_ENV, "many")
    assert loader_parallel.processes_for(100_000, None) == 1  # malformed: one process, never a failed check


def test_never_forks_beside_other_threads():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert loader_parallel.processes_for(100_000, 4) == 1
    finally:
        stop.set()
        thread.join()


def test_generated_functions_load_in_one_process(policy_dir, monkeypatch):
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked to generate functions"))
    outcome = load_paths([policy_dir], generate=True, processes=4)
    assert outcome.programs and all(p.generated is not None for p in outcome.programs.values())


def test_cli_check_output_is_the_same_on_one_and_several_processes(policy_dir):
    def check(processes: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, loader_parallel.PROCESSES_ENV: processes}
        return subprocess.run([sys.executable, "-m", "capengine", "check", "--format", "json", str(policy_dir)],
                              capture_output=True, text=True, env=env, timeout=300)

    one, two = check("1"), check("2")
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout
    assert '"yaml-syntax"' in one.stdout
