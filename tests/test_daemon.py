"""The daemon and its parts: fail-closed start, hot reload, rate limits, decision log, replay, control socket."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import policy_yaml, write
from wasm_helpers import LIB, call_job, policy_set

from capengine.daemon.decision_log import DecisionLog, read_records
from capengine.daemon.replay import replay
from capengine.daemon.server import Daemon, DaemonConfig, DaemonError, call
from capengine.host.envelope import CallRecord
from capengine.host.installed import InstalledRegistry
from capengine.host.manifests import load_extension
from capengine.host.rate_limiter import RateLimiter

PING = "- {id: ping, effect: allow, operations: [test.ping]}\n"


def setup_dirs(tmp_path: Path, rules: str = PING) -> DaemonConfig:
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies", "p.yaml", policy_yaml("p", rules))
    ext = tmp_path / "extensions" / "pinger"
    ext.mkdir(parents=True)
    (ext / "ping.wat").write_text(call_job("test.ping", '{"message": "hi"}', 0))
    (ext / "manifest.yaml").write_text("id: com.example.pinger\nname: P\nversion: 1.0.0\nmodule: ping.wat\n"
                                       "jobs: [go]\noperations: [test.ping]\n")
    (tmp_path / "extensions" / "broken").mkdir()
    (tmp_path / "extensions" / "broken" / "manifest.yaml").write_text("id: [\n")
    InstalledRegistry(tmp_path / "data").install(load_extension(ext))  # the daemon runs installed ones only
    return DaemonConfig(tmp_path / "policies", tmp_path / "extensions", tmp_path / "data",
                        tmp_path / "data" / "ctl.sock", watch_interval=0)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(setup_dirs(tmp_path))
    d.start()
    yield d
    d.stop()


def test_broken_policy_refuses_to_start_and_names_file_line(tmp_path):
    config = setup_dirs(tmp_path, "- {id: r, effect: allow, operations: [test.ping], condition: 'path == 1'}\n")
    with pytest.raises(DaemonError) as exc:
        Daemon(config)
    assert f"{tmp_path}/policies/p.yaml:7:" in str(exc.value) and "cel-type" in str(exc.value)
    assert not config.socket.exists()


def test_cli_daemon_exits_nonzero_on_broken_policy(tmp_path):
    config = setup_dirs(tmp_path, "- {id: r, effect: allow, operations: [test.ping], condition: 'nope'}\n")
    proc = subprocess.run([sys.executable, "-m", "capengine", "daemon", "--policies", str(config.policies),
                           "--extensions", str(config.extensions), "--data-dir", str(config.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "p.yaml:7:" in proc.stderr and "refusing to start" in proc.stderr


def test_control_socket_serves_jobs_and_is_private(daemon):
    sock = daemon.config.socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert [e["id"] for e in call(sock, "extensions.list")["result"]["extensions"]] == ["com.example.pinger"]
    assert call(sock, "extensions.list")["result"]["broken"]  # the broken manifest is reported, not fatal
    reply = call(sock, "jobs.run", {"extension": "com.example.pinger", "job": "go", "input": {}})["result"]
    assert reply["status"] == "completed" and reply["calls"][0]["code"] == "OK"
    tail = call(sock, "decisions.tail", {"count": 1})["result"]["decisions"]
    assert tail[0]["operation"] == "test.ping" and tail[0]["revision"] == daemon.status.revision
    assert call(sock, "no.such")["error"]["code"] == -32601
    assert call(sock, "jobs.run", {"extension": "nope", "job": "go"})["error"]["code"] == -32602


def test_malformed_control_requests_get_errors(daemon):
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.config.socket))
        s.sendall(b"{nope\n[1]\n")
        reader = s.makefile()
        replies = [json.loads(reader.readline()) for _ in range(2)]
    assert replies[0]["error"]["code"] == -32700
    assert [r["error"]["code"] for r in replies[1]] == [-32600]  # a batch of one invalid request


def test_reload_with_broken_file_keeps_last_known_good(daemon):
    old = daemon.status.revision
    write(daemon.config.policies, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [x], "
                                                             "condition: 'path =='}\n"))
    result = call(daemon.config.socket, "policies.reload")["result"]
    assert result["reloaded"] is False and "p.yaml:7:" in result["errors"][0]
    status = call(daemon.config.socket, "policies.status")["result"]
    assert status["revision"] == old and status["last_error"]
    reply = call(daemon.config.socket, "jobs.run", {"extension": "com.example.pinger", "job": "go"})["result"]
    assert reply["calls"][0]["code"] == "OK"  # decisions continue under the old set


def test_reload_switches_atomically_under_concurrent_load(daemon):
    """v1 allows test.ping only for pinger; v2 denies it. Every decision matches the revision it records."""
    ext = daemon.extensions["com.example.pinger"]
    v1 = daemon.status.revision
    stop = threading.Event()
    records: list[CallRecord] = []
    from capengine.host.dispatcher import Dispatcher

    dispatcher = Dispatcher(daemon.host.active, daemon.host.registry, daemon.host.catalog, daemon.host.data_dir,
                            records.append)

    def hammer():
        while not stop.is_set():
            dispatcher.dispatch(ext, "test.ping", "", {"message": "x"})

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    write(daemon.config.policies, "p.yaml", policy_yaml("p", "- {id: stop, effect: deny, operations: [test.ping]}\n"))
    v2 = daemon.reload(accept_removals=True)["revision"]  # the rule "ping" is removed on purpose
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert v1 != v2
    seen = {r.revision for r in records}
    assert seen == {v1, v2}
    for r in records:
        assert r.allowed is (r.revision == v1), r


def test_watcher_reloads_on_file_change(tmp_path):
    config = setup_dirs(tmp_path)
    d = Daemon(DaemonConfig(config.policies, config.extensions, config.data_dir, config.socket,
                            watch_interval=0.05))
    d.start()
    try:
        old = d.status.revision
        write(config.policies, "q.yaml", policy_yaml("q", PING))
        deadline = time.monotonic() + 10
        while d.status.revision == old and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.status.revision != old and d.status.files == 2
    finally:
        d.stop()


def test_job_queue_full_is_overload_with_retry_after(daemon):
    from capengine.daemon.jobs import Admission

    job = {"extension": "com.example.pinger", "job": "go"}
    daemon.admission = Admission(1, 0, 30.0)  # one slot, no queue
    with daemon.admission.slot("com.example.pinger"):
        reply = call(daemon.config.socket, "jobs.run", job)
    assert reply["error"]["code"] == -32001 and "queued" in reply["error"]["message"]
    assert reply["error"]["data"]["retry_after_ms"] >= 10
    daemon.admission = Admission(1, 4, 30.0)
    with daemon.admission.slot("com.example.pinger"):
        reply = call(daemon.config.socket, "jobs.run", {**job, "wait_ms": 50})
    assert reply["error"]["code"] == -32001 and "within 0.05 s" in reply["error"]["message"]
    assert daemon.admission.counts() == {"running": 0, "queued": 0}
    assert call(daemon.config.socket, "jobs.run", job)["result"]["status"] == "completed"


def test_shutdown_interrupts_running_jobs_and_removes_socket(tmp_path):
    config = setup_dirs(tmp_path)
    loop = tmp_path / "extensions" / "looper"
    loop.mkdir()
    (loop / "loop.wat").write_text('(module (memory (export "memory") 1) '
                                   '(func (export "execute_go") (result i32) (loop $l (br $l)) (i32.const 0)))')
    (loop / "manifest.yaml").write_text("id: com.example.looper\nname: L\nversion: 1.0.0\nmodule: loop.wat\n"
                                        "jobs: [go]\noperations: []\n")
    InstalledRegistry(config.data_dir).install(load_extension(loop))
    d = Daemon(config)
    d.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(d.run_job("com.example.looper", "go", {})))
    t.start()
    time.sleep(0.3)
    d.stop()
    t.join(10)
    assert result["status"] == "interrupted" and not config.socket.exists()


def test_sighup_and_sigterm(tmp_path):
    config = setup_dirs(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "capengine", "daemon", "--policies", str(config.policies),
                             "--extensions", str(config.extensions), "--data-dir", str(config.data_dir),
                             "--socket", str(config.socket), "--watch-interval", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in proc.stdout.readline()
        old = call(config.socket, "policies.status")["result"]["revision"]
        write(config.policies, "q.yaml", policy_yaml("q", PING))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while call(config.socket, "policies.status")["result"]["revision"] == old:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        call(config.socket, "jobs.run", {"extension": "com.example.pinger", "job": "go"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill() if proc.poll() is None else None
    assert not config.socket.exists()
    [(_, record)] = list(read_records(config.data_dir / "decisions.jsonl"))  # flushed on shutdown
    assert record["operation"] == "test.ping"


# rate limits --------------------------------------------------------------------------------------

LIMITED = policy_yaml("p", PING) + "  limits:\n    - {operations: [test.*], rate: 10/second, burst: 50}\n" \
                                   "    - {operations: [ai.ocr], rate: 60/minute, burst: 4, cost: 2}\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_exact_under_threads():
    clock = FakeClock()
    limiter = RateLimiter(policy_set(LIMITED).policies, clock)
    passed = []

    def worker():
        for _ in range(100):
            wait, limit = limiter.acquire("com.example.a", "test.ping")
            passed.append(limit is None)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) == 50  # exactly the burst, out of 800 concurrent attempts
    wait, limit = limiter.acquire("com.example.a", "test.ping")
    assert limit == "p/limits/0" and wait == pytest.approx(0.1)
    clock.now += 1.0
    assert sum(limiter.acquire("com.example.a", "test.ping")[1] is None for _ in range(20)) == 10
    assert limiter.acquire("com.example.b", "test.ping") == (0.0, None)  # buckets are per extension
    assert limiter.acquire("com.example.a", "vdfs.stat") == (0.0, None)  # unrelated operation


def test_rate_limit_cost():
    clock = FakeClock()
    limiter = RateLimiter(policy_set(LIMITED).policies, clock)
    assert [limiter.acquire("com.example.a", "ai.ocr")[1] is None for _ in range(3)] == [True, True, False]
    clock.now += 2.0  # 2 tokens back at 1/second
    assert limiter.acquire("com.example.a", "ai.ocr") == (0.0, None)


def test_cost_above_burst_is_a_load_error():
    from capengine.policy.loader import load_text

    text = policy_yaml("p", PING) + "  limits:\n    - {operations: [ai.ocr], rate: 1/second, burst: 1, cost: 3}\n"
    [finding] = load_text("p.yaml", text)[1]
    assert finding.code == "bad-limit" and finding.location.line == 9


def test_rate_limited_envelope_tells_when_to_retry(tmp_path):
    from wasm_helpers import extension, make_host

    host = make_host(tmp_path, LIMITED.replace("burst: 50", "burst: 1"))
    try:
        ext = extension(tmp_path, call_job("test.ping", '{"message": "x"}', 0))
        first, _ = host.run_job(ext, "go", b"{}")
        second, calls = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    env = json.loads(second.logs[0][1])
    assert env["error"]["code"] == "RATE_LIMITED" and env["error"]["rule"] == "p/limits/0"
    assert 1 <= env["error"]["retry_after_ms"] <= 100 and calls[0].allowed  # allowed by policy, then limited


# decision log and replay ------------------------------------------------------------------------------

def record(path: str, operation: str = "test.ping", decided: bool = True, rules=("p/r",), **args) -> CallRecord:
    return CallRecord(extension="com.example.a", operation=operation, library=LIB if decided else "", path=path,
                      decided=decided, allowed=decided, rules=rules if decided else (), errors=(), args=args,
                      code="OK" if decided else "UNKNOWN_OPERATION", message="", revision="rev", duration_us=10)


def test_decision_log_flushes_everything_and_rotates(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl", max_bytes=20_000, keep=50)
    for i in range(1000):
        log.record(record(f"/docs/{i}.txt", token="hunter2", n=i))
    log.close()
    files = sorted(tmp_path.glob("d.jsonl*"))
    assert len(files) > 5 and all(f.stat().st_size <= 20_000 for f in files)
    records = [r for f in files for _, r in read_records(f)]
    assert sorted(r["args"]["n"] for r in records) == list(range(1000))  # nothing lost on a clean stop
    assert all(r["args"]["token"] == "***" for r in records)
    assert "hunter2" not in "".join(f.read_text() for f in files)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_replay_flips_exactly_the_changed_calls(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl")
    requests = [("vdfs.read_file", "/docs/a.txt"), ("vdfs.read_file", "/private/b.txt"), ("vdfs.stat", "/docs/c")]
    for operation, path in requests:
        log.record(record(path, operation))
    log.record(record("", "no.op", decided=False))
    log.close()
    with (tmp_path / "d.jsonl").open("a") as f:
        f.write('{"torn": ')
    candidate = policy_set(policy_yaml("p", """
        - {id: r, effect: allow, operations: ["vdfs.*"]}
        - {id: private, effect: deny, operations: ["vdfs.*"], condition: 'path.under("/private")'}
    """))
    report = replay(candidate, tmp_path / "d.jsonl")
    assert [(f.line, f.was, f.now, f.rules) for f in report.flips] == [(2, "allow", "deny", ("p/private",))]
    assert (report.decided, report.skipped, report.unreadable) == (3, 1, ((str(tmp_path / "d.jsonl"), 5),))


def test_replay_cli(tmp_path, capsys):
    from capengine.cli import main

    log = DecisionLog(tmp_path / "d.jsonl")
    log.record(record("", rules=("p/ping",)))
    log.close()
    (tmp_path / "new").mkdir()
    write(tmp_path / "new", "p.yaml", policy_yaml("p", "- {id: other, effect: allow, operations: [vdfs.stat]}\n"))
    assert main(["replay", "--policies", str(tmp_path / "new"), str(tmp_path / "d.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "d.jsonl:1: allow -> deny  com.example.a test.ping" in out and "1 would flip" in out


def test_data_dir_env_is_respected(tmp_path, monkeypatch):
    from capengine.host.libraries import default_data_dir

    monkeypatch.setenv("CAPENGINE_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("CAPENGINE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x" / "capengine"
    assert os.environ.get("CAPENGINE_DATA_DIR") is None


def test_records_keep_only_args_some_condition_reads(tmp_path):
    from wasm_helpers import extension, make_host

    rules = "- {id: ping, effect: allow, operations: [test.ping], condition: 'args.message != \"no\"'}\n"
    host = make_host(tmp_path, policy_yaml("p", rules))
    try:
        ext = extension(tmp_path, call_job("test.ping", '{"message": "big payload"}', 0))
        _, [call_record] = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    assert call_record.args == {"message": "big payload"}
    host = make_host(tmp_path / "2", policy_yaml("p", PING))
    try:
        _, [call_record] = host.run_job(extension(tmp_path, call_job("test.ping", '{"message": "x"}', 0)), "go", b"{}")
    finally:
        host.close()
    assert call_record.args == {}  # no condition reads args: the log keeps none


def test_any_exception_in_a_reload_keeps_last_known_good_and_threads_are_restarted(daemon, monkeypatch):
    import capengine.daemon.reload as reload_module

    old = daemon.status.revision

    def explode(*args, **kwargs):
        raise RuntimeError("walk failed")

    monkeypatch.setattr(reload_module, "read_settled", explode)
    result = call(daemon.config.socket, "policies.reload")["result"]
    assert not result["reloaded"] and "RuntimeError: walk failed" in result["errors"][0]
    assert daemon.status.revision == old
    assert call(daemon.config.socket, "health")["result"]["policy"]["reloads_failed"] == 1
    monkeypatch.undo()
    calls = []

    def crashing_body():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(24, "Too many open files")

    daemon.supervisor.run("crashy", crashing_body)
    deadline = time.monotonic() + 20
    while daemon.health()["threads"]["crashy"]["restarts"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "Too many open files" in daemon.health()["threads"]["crashy"]["last_error"]
