"""Operator experience: extension validation, replay over rotated logs, decisions.tail across restarts, health and
Prometheus metrics, SIGUSR1 log reopen, JSON logs, library remove/move, a second clone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, install, make_setup
from helpers import policy_yaml, write
from wasm_helpers import LIB, call_job

from capengine.cli import main
from capengine.daemon.config import DaemonConfig, DaemonError
from capengine.daemon.decision_log import DecisionLog
from capengine.daemon.server import Daemon
from capengine.host.envelope import CallRecord
from capengine.host.libraries import LibraryCatalog

PING = {"extension": "com.example.pinger", "job": "go"}


def _ext(root: Path, name: str, wat: str, jobs: str = "[go]", operations: str = "[test.ping]",
         data: Path | None = None) -> None:
    ext = root / name
    ext.mkdir()
    (ext / "g.wat").write_text(wat)
    (ext / "manifest.yaml").write_text(f"id: com.example.{name}\nname: {name}\nversion: 1.0.0\nmodule: g.wat\n"
                                       f"jobs: {jobs}\noperations: {operations}\n")
    if data is not None:
        install(ext, data)


def test_extensions_validated_at_load(tmp_path):
    dirs = make_setup(tmp_path)
    good = call_job("test.ping", "{}", 0)
    data = dirs["data"]
    _ext(dirs["extensions"], "noexport", good, jobs="[go, scan]", data=data)
    _ext(dirs["extensions"], "wasi", good.replace("(module", '(module (import "wasi_snapshot_preview1" "fd_write" '
                                                            '(func (param i32 i32 i32 i32) (result i32)))', 1),
         data=data)
    _ext(dirs["extensions"], "unknownop", good, operations="[test.ping, vdfs.teleport]", data=data)
    _ext(dirs["extensions"], "garbage", "(module (func", data=data)
    _ext(dirs["extensions"], "twin", good)
    (dirs["extensions"] / "twin" / "manifest.yaml").write_text(
        (dirs["extensions"] / "twin" / "manifest.yaml").read_text().replace("com.example.twin", "com.example.pinger"))
    d = Daemon(DaemonConfig(dirs["policies"], dirs["extensions"], dirs["data"], dirs["socket"], watch_interval=0))
    try:
        listed = d.handle("extensions.list", {})
        broken = "\n".join(listed["broken"])
        assert "exports no function execute_scan" in broken
        assert "imports wasi_snapshot_preview1.fd_write" in broken
        assert "vdfs.teleport" in broken and "does not compile" in broken
        assert "twin" in broken  # two directories, one id: reported
        assert sorted(e["id"] for e in listed["extensions"]) == ["com.example.reader"]
        assert d.health()["extensions"] == {"loaded": 1, "broken": 6}  # both directories of the shared id
    finally:
        d.host.close()
        d.decisions.close()


def test_missing_extensions_dir_is_a_start_error(tmp_path):
    dirs = make_setup(tmp_path)
    with pytest.raises(DaemonError, match="--extensions /nope is not a directory"):
        Daemon(DaemonConfig(dirs["policies"], "/nope", dirs["data"], dirs["socket"]))
    proc = subprocess.run([sys.executable, "-m", "capengine", "daemon", "--policies", str(dirs["policies"]),
                           "--extensions", "/nope", "--data-dir", str(dirs["data"])], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "/nope is not a directory" in proc.stderr


def _record(n: int, path: str = "/private/x") -> CallRecord:
    return CallRecord(extension="com.example.a", operation="vdfs.read_file", library=LIB, path=path, decided=True,
                      allowed=True, rules=("p/r",), errors=(), args={"n": n}, code="OK", message="", revision="r",
                      duration_us=1)


def test_replay_reads_every_rotated_file_in_order_and_rejects_bad_input(tmp_path, capsys):
    data = tmp_path / "data"
    log = DecisionLog(data / "decisions.jsonl", max_bytes=3000, keep=50)
    for i in range(100):
        log.record(_record(i))
    log.close()
    assert len(list(data.glob("decisions.jsonl.*"))) > 3
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    write(candidate, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n"
                                                "- {id: private, effect: deny, operations: [vdfs.read_file], "
                                                "condition: 'path.under(\"/private\")'}\n"))
    assert main(["replay", "--policies", str(candidate), str(data)]) == 1
    out = capsys.readouterr().out
    assert "100 decision(s) from" in out and "100 would flip" in out
    lines = [line for line in out.splitlines() if "allow -> deny" in line]
    files = [line.split(":")[0] for line in lines]
    assert files[0].endswith(f".{max(int(p.suffix[1:]) for p in data.glob('decisions.jsonl.*'))}")
    assert files[-1].endswith("decisions.jsonl")  # oldest first, the current file last
    assert main(["replay", "--policies", str(candidate), str(data / "decisions.jsonl*")]) == 1  # a quoted glob
    capsys.readouterr()
    assert main(["replay", "--policies", str(candidate), "/etc/passwd"]) == 2
    assert "not a decision log" in capsys.readouterr().err
    (tmp_path / "bin").write_bytes(bytes(range(256)) * 10)
    assert main(["replay", "--policies", str(candidate), str(tmp_path / "bin")]) == 2
    assert main(["replay", "--policies", str(candidate), str(tmp_path / "missing")]) == 2
    torn = tmp_path / "torn.jsonl"  # a torn multi-byte character at the end: reported, not a crash
    torn.write_bytes((data / "decisions.jsonl").read_bytes() + '{"path": "/ü'.encode()[:-1])
    assert main(["replay", "--policies", str(candidate), str(torn)]) == 1
    assert "not a decision record" in capsys.readouterr().err
    allow_all = tmp_path / "allow"
    allow_all.mkdir()
    write(allow_all, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n"))
    assert main(["replay", "--policies", str(allow_all), str(data)]) == 0


def test_tail_survives_restart_health_metrics_reopen_and_json_logs(tmp_path):
    dirs = make_setup(tmp_path)
    textfile = tmp_path / "capengine.prom"
    port = 39000 + int(time.time()) % 1000
    d = DaemonProcess(dirs, "--watch-interval", "0", "--metrics-port", str(port), "--metrics-textfile",
                      str(textfile), "--log-format", "json").wait_ready()
    try:
        d.result("jobs.run", PING)
        d.result("jobs.run", {"extension": "com.example.reader", "job": "go"})
        d.result("decisions.tail", {"count": 1})  # flushes: the writer batches records for up to 50 ms
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'capengine_decisions_total{extension="com.example.pinger",operation="test.ping",outcome="allow"} 1.0' \
            in metrics
        assert 'outcome="deny"} 1.0' in metrics and "capengine_decision_duration_seconds_bucket" in metrics
        assert 'capengine_jobs_total{status="completed"} 2.0' in metrics
        assert "capengine_decision_log_backlog 0.0" in metrics and "capengine_decision_log_writable 1.0" in metrics
        assert textfile.exists() and "capengine_decisions_total" in textfile.read_text()
        (dirs["data"] / "decisions.jsonl").rename(dirs["data"] / "decisions.jsonl.old")  # logrotate
        d.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not (dirs["data"] / "decisions.jsonl").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        d.result("jobs.run", PING)
        assert d.stop()[0] == 0
        for line in d.stderr().splitlines():
            json.loads(line)  # --log-format json: every line is JSON
    finally:
        d.kill()
    assert len((dirs["data"] / "decisions.jsonl.old").read_text().splitlines()) == 2
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    try:
        tail = d.result("decisions.tail", {"count": 5})["decisions"]
        assert [r["operation"] for r in tail] == ["test.ping"]  # read from the file after a restart
        assert tail[0]["time"].endswith("Z") and "T" in tail[0]["time"]  # RFC 3339
    finally:
        d.stop()
        d.kill()


def test_library_remove_move_and_second_clone(tmp_path, capsys):
    data = str(tmp_path / "data")
    first, second = tmp_path / "clone1" / "lib", tmp_path / "clone2" / "lib"
    for root in (first, second):
        (root / ".capengine").mkdir(parents=True)
        (root / ".capengine" / "library-id").write_text(LIB)
    assert main(["library", "add", str(first), "--data-dir", data]) == 0
    assert main(["library", "add", str(second), "--data-dir", data]) == 2  # the id is taken: a clear error
    assert "already in the catalogue" in capsys.readouterr().err
    assert main(["library", "move", LIB, str(second), "--data-dir", data]) == 0
    assert LibraryCatalog(Path(data)).get(LIB).root == second.resolve()
    assert main(["library", "remove", LIB, "--data-dir", data]) == 0
    assert LibraryCatalog(Path(data)).get(LIB) is None
    assert main(["library", "remove", LIB, "--data-dir", data]) == 2
    # `run --library` from a second clone: the known id is re-rooted there (the quick start works)
    catalog = LibraryCatalog(Path(data))
    catalog.add(first)
    assert catalog.claim(second).root == second.resolve()
    assert catalog.claim(second).id == LIB
