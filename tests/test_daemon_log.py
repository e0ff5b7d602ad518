"""Attacks on the decision log through a real daemon: lone surrogates, a full disk, a read-only data dir, a torn
tail, a writer thread that dies. The log must never die, never freeze the daemon, never lose a record, and
no call may run without its record."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, fill, install, make_setup, read_log, tmpfs
from helpers import policy_yaml, write
from hypothesis import given, settings
from hypothesis import strategies as st
from wasm_helpers import call_job, wat_bytes, wat_module

from capengine.daemon.decision_log import DecisionLog, read_records, rfc3339
from capengine.host.envelope import CallRecord

READ_MESSAGE = "- {id: ping, effect: allow, operations: [test.ping], condition: 'args.message != \"no\"'}\n"


def _ping_surrogate(dirs: dict[str, Path]) -> None:
    ext = dirs["extensions"] / "surrogate"
    ext.mkdir()
    (ext / "guest.wat").write_text(call_job("test.ping", '{"message": "a\\ud800b"}', 0))
    (ext / "manifest.yaml").write_text("id: com.example.surrogate\nname: s\nversion: 1.0.0\nmodule: guest.wat\n"
                                       "jobs: [go]\noperations: [test.ping]\n")
    install(ext, dirs["data"])
    write(dirs["policies"], "ping.yaml", policy_yaml("ping", READ_MESSAGE))


def test_lone_surrogate_from_a_guest_is_refused_recorded_and_the_writer_lives(tmp_path):
    """A guest payload with a lone surrogate ("\\ud800", valid JSON) is refused at the ABI boundary
    (INVALID_ARGUMENT, recorded); one in a job's input over the socket reaches the log too: every record is
    written, the writer stays alive."""
    dirs = make_setup(tmp_path)
    _ping_surrogate(dirs)
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    try:
        for _ in range(3):
            job = d.result("jobs.run", {"extension": "com.example.surrogate", "job": "go"})
            assert job["calls"][0]["code"] == "INVALID_ARGUMENT"
        d.result("jobs.run", {"extension": "com.example.surrogate", "job": "go",
                              "input": {"x": "\ud800"}})  # and in the job input over the socket
        tail = d.result("decisions.tail", {"count": 4})["decisions"]
        assert [r["code"] for r in tail] == ["INVALID_ARGUMENT"] * 4
        health = d.result("health")
        assert health["decision_log"]["state"] == "ok" and health["decision_log"]["writer_alive"]
        assert d.stop()[0] == 0
    finally:
        d.kill()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_daemon_killed_right_after_a_job_replied_has_written_every_record_of_it(tmp_path, workers):
    """What a client holds, the log holds: a job's reply is sent only after its records are in the file, so a
    SIGKILL of the daemon the moment the reply arrives (inside the writer's batching delay) loses none of them.
    Jobs finish while the writer lingers; three daemons, each killed right after its third job."""
    dirs = make_setup(tmp_path)
    for attempt in range(3):
        d = DaemonProcess(dirs, "--watch-interval", "0", "--workers", workers).wait_ready()
        try:
            jobs = [d.result("jobs.run", {"extension": "com.example.pinger", "job": "go"}) for _ in range(3)]
            d.signal(signal.SIGKILL)
            d.proc.wait(30)
        finally:
            d.kill()
        assert all(j["status"] == "completed" for j in jobs), jobs
        pings = [r for r in read_log(dirs["data"]) if r["operation"] == "test.ping"]
        assert len(pings) == 3 * (attempt + 1), (attempt, len(pings))


def _two_effects_then_spin(first: str, second: str) -> str:
    """A job that writes the sidecar of `first`, then that of `second`, then spins until it is killed."""
    method = "vdfs.write_sidecar"
    payloads = [json.dumps({"path": path, "kind": "k", "data": "x"}) for path in (first, second)]
    data = (f'  (data (i32.const 1024) "{wat_bytes(method)}")\n'
            + "".join(f'  (data (i32.const {at}) "{wat_bytes(p)}")\n' for at, p in zip((4096, 8192), payloads)))
    calls = "".join(f"    (drop (call $spacedrive_call (i32.const 1024) (i32.const {len(method)}) (i32.const 64)"
                    f" (i32.const {at}) (i32.const {len(p)})))\n" for at, p in zip((4096, 8192), payloads))
    return wat_module(f'  (func (export "execute_go") (result i32)\n{calls}    (loop $spin (br $spin))\n'
                      "    (i32.const 0))", data)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_daemon_killed_right_after_an_effect_has_written_its_record(tmp_path, workers):
    """An allowed action (vdfs.write_sidecar) is not batched: the guest goes on only once its record is in the
    file. The guest writes a sidecar for /private/secret.txt, then one for /other.txt, then spins; the daemon is
    SIGKILLed the moment the second sidecar is on disk (well inside the writer's 50 ms batching delay): the
    record of the first write is in the log, every time."""
    dirs = make_setup(tmp_path)
    (dirs["library"] / "other.txt").write_text("other")
    write(dirs["policies"], "effects.yaml", policy_yaml("effects", "- {id: sidecars, effect: allow, operations: "
                                                                   "[vdfs.write_sidecar]}\n"))
    ext = dirs["extensions"] / "effector"
    ext.mkdir()
    (ext / "guest.wat").write_text(_two_effects_then_spin("/private/secret.txt", "/other.txt"))
    (ext / "manifest.yaml").write_text("id: com.example.effector\nname: e\nversion: 1.0.0\nmodule: guest.wat\n"
                                       "jobs: [go]\noperations: [vdfs.write_sidecar]\n")
    install(ext, dirs["data"])
    sidecars = dirs["library"] / ".capengine" / "sidecars"
    for attempt in range(3):
        d = DaemonProcess(dirs, "--watch-interval", "0", "--workers", workers).wait_ready()
        try:
            assert d.result("jobs.run", {"extension": "com.example.effector", "job": "go", "detach": True})
            deadline = time.monotonic() + 60
            while len(list(sidecars.rglob("k"))) < 2:
                assert time.monotonic() < deadline, "the guest never wrote its sidecars"
                time.sleep(0.001)
            d.signal(signal.SIGKILL)
            d.proc.wait(30)
        finally:
            d.kill()
        for f in sidecars.rglob("k"):
            f.unlink()
        firsts = [r for r in read_log(dirs["data"])
                  if r["operation"] == "vdfs.write_sidecar" and r["path"] == "/private/secret.txt"]
        assert len(firsts) == attempt + 1 and {r["decision"] for r in firsts} == {"allow"}, (attempt, firsts)


def test_lone_surrogates_in_a_record_are_written_escaped_and_read_back_exact(tmp_path):
    """Defence in depth behind the boundary: whatever reaches a record (an embedder's args, a path) is
    encodable; the writer escapes, never dies."""
    log = DecisionLog(tmp_path / "d.jsonl")
    log.record(_call(message="a\ud800b"))
    log.record(_call(n=2))
    log.close()
    first, second = [r for _, r in read_records(tmp_path / "d.jsonl")]
    assert first["args"]["message"] == "a\ud800b" and second["args"] == {"n": 2}
    assert b"\\ud800" in (tmp_path / "d.jsonl").read_bytes()


def test_full_disk_refuses_calls_keeps_records_and_recovers(tmp_path):
    with tmpfs(tmp_path / "data", "2m") as data:
        dirs = make_setup(tmp_path, data)
        d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
        try:
            ok_calls = 0
            job = d.result("jobs.run", {"extension": "com.example.pinger", "job": "go"})
            ok_calls += job["calls"][0]["code"] == "OK"
            assert d.result("decisions.tail", {"count": 1})["decisions"]  # written
            filler = fill(data)
            codes = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the writer has hit ENOSPC, calls may still pass
                reply = d.call("jobs.run", {"extension": "com.example.pinger", "job": "go"})
                if "error" in reply:
                    codes.append(reply["error"]["code"])
                    break
                code = reply["result"]["calls"][0]["code"]
                ok_calls += code == "OK"
                codes.append(code)
                if code == "RESOURCE_EXHAUSTED":
                    break
                time.sleep(0.05)
            assert codes[-1] in (-32002, "RESOURCE_EXHAUSTED"), codes
            health = d.result("health")
            assert health["status"] == "degraded" and health["decision_log"]["state"] == "failing"
            assert "ENOSPC" in health["decision_log"]["last_error"] and health["decision_log"]["writer_alive"]
            reply = d.call("jobs.run", {"extension": "com.example.pinger", "job": "go"})
            assert reply["error"]["code"] == -32002 and "decision log unavailable" in reply["error"]["message"]
            filler.unlink()  # space again: the writer catches up by itself
            deadline = time.monotonic() + 20
            while d.result("health")["decision_log"]["state"] != "ok":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            job = d.result("jobs.run", {"extension": "com.example.pinger", "job": "go"})
            ok_calls += job["calls"][0]["code"] == "OK"
            code, _ = d.stop()
            assert code == 0
        finally:
            d.kill()
        records = read_log(data)
        assert sum(r["code"] == "OK" for r in records) == ok_calls  # every call that ran is in the log
        assert all(r.get("refused_calls", 1) >= 1 for r in records)


def test_read_only_data_dir_fails_closed_and_sigterm_still_stops(tmp_path):
    """A data dir that turned read-only (a read-only bind mount): no call runs unlogged, health says why,
    the daemon still stops on SIGTERM; made writable again, the log resumes by itself."""
    dirs = make_setup(tmp_path)
    data = dirs["data"]
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()  # first run: catalogue, cache, keys
    d.result("jobs.run", {"extension": "com.example.pinger", "job": "go"})
    assert d.stop()[0] == 0
    before = len(read_log(data))
    if subprocess.run(["mount", "--bind", str(data), str(data)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], check=True)
        d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
        try:
            reply = d.call("jobs.run", {"extension": "com.example.pinger", "job": "go"})
            assert reply["error"]["code"] == -32002 and "EROFS" in reply["error"]["message"]
            health = d.result("health")
            assert health["status"] == "degraded" and "EROFS" in health["decision_log"]["last_error"]
            subprocess.run(["mount", "-o", "remount,bind,rw", str(data)], check=True)
            deadline = time.monotonic() + 20
            while d.result("health")["decision_log"]["state"] != "ok":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            job = d.result("jobs.run", {"extension": "com.example.pinger", "job": "go"})
            assert job["calls"][0]["code"] == "OK"
            subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], capture_output=True)  # busy: fine
            code, _ = d.stop(timeout=60)  # bounded: the stop does not wait forever for the disk
            assert code == 0
        finally:
            d.kill()
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
    assert len(read_log(data)) == before + 1


def test_torn_tail_is_fenced_on_open(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"time": "x", "extension": "a"}\n{"torn": "\xc3')  # half a record, half a character
    log = DecisionLog(path)
    log.record(_call())
    log.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"torn": "\xc3' and json.loads(lines[2])["operation"] == "test.ping"
    assert [r is None for _, r in read_records(path)] == [False, True, False]
    assert log.state().fenced_tails == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_writer_thread_death_is_restarted_and_nothing_is_lost(tmp_path):
    """Kill the writer thread from the inside (a bug in the loop); the supervisor restarts it."""
    from capengine.daemon.supervisor import Supervisor

    log = DecisionLog(tmp_path / "d.jsonl")
    original = log._write
    broken = threading.Event()

    def crash_once(lines):
        if not broken.is_set():
            broken.set()
            raise RuntimeError("bug in the writer")
        return original(lines)

    log._write = crash_once  # type: ignore[method-assign]
    stopped = threading.Event()
    sup = Supervisor(stopped, check_interval=0.05)
    sup.watch("decision-log", log.writer_alive, log.start)
    for i in range(10):
        log.record(_call(n=i))
    assert log.flush(10)
    assert sup.states()["decision-log"]["restarts"] == 1
    stopped.set()
    log.close()
    assert sorted(r["args"]["n"] for _, r in read_records(tmp_path / "d.jsonl")) == list(range(10))


def test_backlog_at_high_water_refuses_then_recovers(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl", high_water=10, start=False)
    for i in range(10):
        log.record(_call(n=i))
    assert "10 records waiting" in (log.admit() or "")
    log.start()
    assert log.flush(10) and log.admit() is None
    log.close()


def _call(**args) -> CallRecord:
    return CallRecord(extension="com.example.a", operation="test.ping", library="", path="", decided=True,
                      allowed=True, rules=("p/r",), errors=(), args=args, code="OK", message="", revision="r",
                      duration_us=1)


def test_a_record_that_cannot_be_built_becomes_a_stub_and_the_writer_goes_on(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl")
    log.record(CallRecord(
        extension="com.example.a", operation="test.ping", library="", path="", decided=True, allowed=True,
        rules=(), errors=(), args={1: "int key", "b": 2}, code="OK", message="", revision="r", duration_us=1))
    log.record(_call(n=2))
    log.close()
    stub, ok = [r for _, r in read_records(tmp_path / "d.jsonl")]
    assert stub["call_id"] and "TypeError" in stub["record_error"] and stub["decision"] == "error"
    assert ok["args"] == {"n": 2}


@settings(max_examples=2000, deadline=None)
@given(when=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_record_times_are_exact_rfc3339(when):
    """The per-second cache of the time format agrees with datetime's own rounding everywhere."""
    expected = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="microseconds")
    assert rfc3339(when) == expected.replace("+00:00", "Z")


# --- the writer process --------------------------------------------------------------------------------------------
def test_writer_process_killed_again_and_again_loses_and_duplicates_nothing(tmp_path, caplog):
    """kill -9 the writer process while records stream in (and mid-batch): every record is in the file exactly
    once, whole; a batch cut by the kill is resumed after the last call id written; each death is reported."""
    import os
    import signal

    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_bytes=512 * 1024, keep=100)  # small files: kills also land around rotations
    total, kills = 0, 0
    stop = threading.Event()

    def killer() -> None:
        """Kill the writer each time it has made progress (so the test ends however slow the machine)."""
        nonlocal kills
        seen = 0
        while not stop.is_set() and kills < 10:
            written = log.state().written
            process = log._process
            if written > seen and process is not None and process.proc.poll() is None:
                time.sleep(0.002 * kills)  # at different points of the next batch
                os.kill(process.proc.pid, signal.SIGKILL)
                kills += 1
                seen = written
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (kills < 5 or total < 5000) and total < 100_000 and time.monotonic() < deadline:  # 5 deaths
            log.record(_call(n=total))
            total += 1
            if total % 200 == 0:
                time.sleep(0.01)
        assert log.flush(60)
    finally:
        stop.set()
        thread.join()
    state = log.state()
    assert log.close() == 0
    assert kills >= 5 and state.writer_restarts >= 5 and state.written == total
    seen: list[int] = []
    torn = 0
    for file in sorted(tmp_path.glob("d.jsonl*")):
        for _, record in read_records(file):
            if record is None:
                torn += 1  # a line torn by a kill mid-write: fenced, and its record written again after it
            else:
                seen.append(record["args"]["n"])
    assert sorted(seen) == list(range(total)), "lost or duplicated records"
    assert torn <= kills
    assert any("writer process" in r.message and "ended" in r.message for r in caplog.records)


def test_writer_process_killed_while_idle_is_replaced_and_reported(tmp_path):
    import os
    import signal

    log = DecisionLog(tmp_path / "d.jsonl")
    log.record(_call(n=1))
    assert log.flush(10)
    first = log._process
    assert first is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while log.state().writer_restarts == 0:  # noticed and replaced without any record to write
        assert time.monotonic() < deadline
        time.sleep(0.02)
    log.record(_call(n=2))
    assert log.flush(10) and log.state().state == "ok"
    log.close()
    assert [r["args"]["n"] for _, r in read_records(tmp_path / "d.jsonl")] == [1, 2]


FSIZE_SCRIPT = """
import json, resource, signal, sys, time
from pathlib import Path
from capengine.daemon.decision_log import DecisionLog
from capengine.host.envelope import CallRecord
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
log = DecisionLog(Path(sys.argv[1]), max_bytes=10**9)
recorded = refused = 0
for i in range(2000):
    if log.admit() is not None:
        refused += 1
        continue
    log.record(CallRecord(extension="com.example.a", operation="test.ping", library="", path="", decided=True,
                          allowed=True, rules=("p/r",), errors=(), args={"n": i}, code="OK", message="",
                          revision="r", duration_us=1))
    recorded += 1
    if i % 50 == 0:
        log.flush(5)
state = log.state()
started = time.monotonic()
waited = log.flush(60, unless_failing=True), time.monotonic() - started  # a job's end: not 60 s on a failing log
spilled = log.close(timeout=1.0)
print(json.dumps({"recorded": recorded, "refused": refused, "spilled": spilled, "state": state.state,
                  "last_error": state.last_error, "written": state.written, "waited": waited}))
"""


def test_file_size_limit_is_reported_refuses_calls_and_keeps_every_record(tmp_path):
    """RLIMIT_FSIZE (inherited by the writer process): the write fails with EFBIG instead of killing the
    writer; records already written stay whole, new calls are refused, and what could not be written is
    spilled to stderr on close, never dropped."""
    path = tmp_path / "d.jsonl"
    run = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(path)], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    outcome = json.loads(run.stdout.decode().splitlines()[-1])
    assert outcome["state"] == "failing" and "EFBIG" in outcome["last_error"], outcome
    assert outcome["refused"] > 0
    assert outcome["waited"][0] is False and outcome["waited"][1] < 60, outcome  # gave up at once, not timed out
    records = [r for _, r in read_records(path)]
    assert all(r is not None for r in records), "a written record was torn"
    assert path.stat().st_size <= 20000
    spilled = run.stderr.count(b"capengine decision log (unwritten): ")
    assert spilled == outcome["spilled"]
    assert len(records) + spilled == outcome["recorded"], outcome  # nothing lost


def test_a_killed_writer_resumes_after_a_worker_encoded_line_without_duplicates(tmp_path):
    """Lines a worker process encoded carry their call id inside the line only: when a killed writer had written
    a batch ending with such lines, the new writer's last call id is one of them and the daemon must resume after
    it, not write the whole batch again."""
    from capengine.daemon.decision_log import encode_call

    path = tmp_path / "d.jsonl"
    lines = [encode_call(time.time(), f"worker-{i:04d}", _call(n=i), frozenset()) for i in range(5)]
    import os
    import signal

    log = DecisionLog(path)
    process = log._process
    assert process is not None
    os.kill(process.proc.pid, signal.SIGSTOP)  # the batch waits in the pipe, unread
    for line in lines:
        log.record_line(line)
    with path.open("ab") as out:  # what the writer wrote before it was killed, unacknowledged
        out.write(b"".join(lines))
    os.kill(process.proc.pid, signal.SIGKILL)
    log.record(_call(n=5))
    assert log.flush(10)
    log.close()
    ids = [record["call_id"] for _, record in read_records(path)]
    assert ids[:5] == [f"worker-{i:04d}" for i in range(5)] and len(ids) == 6, ids
