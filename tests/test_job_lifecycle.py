"""The job lifecycle: job.* operations, checkpoints on disk, resume, decision-log aggregation, and the daemon's
jobs.run/status/cancel/resume and --resume-interrupted, driven by the Rust counter (extensions/test-extension)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest
from daemon_helpers import install
from wasm_helpers import call_job, extension

from capengine.daemon.server import Daemon, DaemonConfig, call
from capengine.host.checkpoints import CheckpointError, CheckpointStore
from capengine.host.dispatcher import ActivePolicies, Dispatcher
from capengine.host.envelope import CallRecord
from capengine.host.extension_host import Host
from capengine.host.job_run import JobRun
from capengine.host.libraries import LibraryCatalog
from capengine.host.manifests import load_extension
from capengine.host.operations import default_registry
from capengine.host.runtime import Limits
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths

ROOT = Path(__file__).resolve().parent.parent
COUNTER_DIR = ROOT / "extensions" / "test-extension"
JOB_POLICY = ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: jobs}\nspec:\n"
              "  extensions: ['com.example.*']\n  rules:\n"
              "    - {id: lifecycle, effect: allow, operations: ['job.*']}\n")


@pytest.fixture(scope="module")
def counter_ext():
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "extensions")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return load_extension(COUNTER_DIR)


def job_policies(tmp_path: Path) -> PolicySet:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "jobs.yaml").write_text(JOB_POLICY)
    load = load_paths([tmp_path / "policies"])
    assert not load.has_errors
    return PolicySet.from_load(load)


def logs(result) -> list[str]:
    return [text for _, text in result.logs]


# ---- in-process: interrupt, checkpoint, resume ---------------------------------------------------------------

def test_counter_interrupted_midway_resumes_from_its_checkpoint(counter_ext, tmp_path):
    records: list[CallRecord] = []
    host = Host(job_policies(tmp_path), tmp_path / "data", on_call=records.append)
    interrupt_at = 37

    def on_change(run: JobRun) -> None:  # called during the guest's own job.metrics call: deterministic
        if run.items == interrupt_at:
            run.interrupt()

    try:
        run = host.new_run(counter_ext, "counter")
        run.on_change = on_change
        first, _ = host.run_job(counter_ext, "counter", b'{"target": 100}', run)
        assert first.status == "interrupted" and first.code == 1
        assert run.items == interrupt_at and run.interrupted
        # not installed here: the checkpoint is keyed by the module's development namespace, like its vault
        assert run.extension == host.bind(counter_ext).namespace == f"dev:{counter_ext.module_sha256}"
        assert CheckpointStore(tmp_path / "data").load(run.extension, run.run_id) == (
            True, {"current": interrupt_at, "target": 100})
        resumed = host.new_run(counter_ext, "counter", run.run_id)
        second, _ = host.run_job(counter_ext, "counter", b'{"target": 100}', resumed)
    finally:
        host.close()
    assert second.status == "completed", second
    assert resumed.items == 100 - interrupt_at  # counted only what was left: no step twice, none lost
    assert "job counter resumes from its last checkpoint" in logs(second)
    assert "counted to 100" in logs(second)
    assert CheckpointStore(tmp_path / "data").load(run.extension, run.run_id) == (False, None)  # done: removed


def test_lifecycle_calls_are_aggregated_in_the_decision_log(counter_ext, tmp_path):
    records: list[CallRecord] = []
    host = Host(job_policies(tmp_path), tmp_path / "data", on_call=records.append)
    try:
        run = host.new_run(counter_ext, "counter")
        result, calls = host.run_job(counter_ext, "counter", b'{"target": 500}', run)
    finally:
        host.close()
    assert result.status == "completed" and run.progress == 1.0 and run.items == 500 and run.message == "counting"
    by_op: dict[str, list[CallRecord]] = {}
    for r in records:
        by_op.setdefault(r.operation, []).append(r)
    # 500 progress + 500 metrics + 501 interrupt checks + 50 checkpoints: two records each (first + summary).
    assert {op: len(rs) for op, rs in by_op.items()} == {"job.state": 1, "job.interrupted": 2, "job.progress": 2,
                                                         "job.metrics": 2, "job.checkpoint": 2}
    assert by_op["job.progress"][1].message == "499 further allowed call(s) aggregated"
    assert by_op["job.checkpoint"][1].message == "49 further allowed call(s) aggregated"
    assert all(r.rules == ("jobs/lifecycle",) for r in records)
    assert list(calls) == records


def test_a_denied_lifecycle_call_is_never_aggregated(tmp_path):
    run = JobRun("com.example.app", "go", CheckpointStore(tmp_path))
    allowed = CallRecord("com.example.app", "job.progress", "", "", True, True, ("p/r",), (), {}, "OK", "", "r1", 5)
    assert not run.absorb(allowed) and run.absorb(allowed) and run.absorb(allowed)
    denied = attrs.evolve(allowed, allowed=False, rules=(), code="PERMISSION_DENIED")
    assert not run.absorb(denied)
    reloaded = attrs.evolve(allowed, revision="r2")  # a new policy revision is logged again
    assert not run.absorb(reloaded)
    summaries = run.flush()
    assert [(s.revision, s.message) for s in summaries] == [("r1", "2 further allowed call(s) aggregated")]


# ---- job.* through the ABI, attacked ---------------------------------------------------------------------------

def run_wat(tmp_path: Path, method: str, payload: str, store: CheckpointStore | None = None,
            run_id: str | None = None) -> tuple[list[str], JobRun]:
    """One call from a WAT guest in a run keyed by the guest's namespace (`run_id`: an earlier run's)."""
    host = Host(job_policies(tmp_path), tmp_path / "data")
    ext = extension(tmp_path, call_job(method, payload, 0), operations=("job.*",))
    run = host.new_run(ext, "go", run_id)
    if store is not None:
        run = JobRun(run.extension, "go", store, run.run_id)
    try:
        result, _ = host.run_job(ext, "go", b"{}", run)
    finally:
        host.close()
    return logs(result), run


def envelope(lines: list[str]) -> dict:
    return json.loads(lines[0])


def test_checkpoint_over_the_cap_is_refused_and_the_old_one_kept(tmp_path):
    store = CheckpointStore(tmp_path / "data", max_bytes=64)
    run = JobRun("com.example.app", "go", store)
    store.save(run.extension, run.run_id, {"cursor": 1})
    dispatcher = Dispatcher(lambda: ActivePolicies(job_policies(tmp_path)), default_registry(),
                            LibraryCatalog(tmp_path / "data"), tmp_path / "data", job=run)
    ext = extension(tmp_path, "(module)", operations=("job.*",))
    env = dispatcher.dispatch(ext, "job.checkpoint", "", {"state": {"blob": "x" * 100}})
    assert env["error"]["code"] == "RESOURCE_EXHAUSTED" and "64-byte cap" in env["error"]["message"]
    # through the ABI too (the run completes, so its checkpoint is removed afterwards)
    lines, _ = run_wat(tmp_path, "job.checkpoint", json.dumps({"state": {"blob": "x" * 100}}), store)
    assert envelope(lines)["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert store.load(run.extension, run.run_id) == (True, {"cursor": 1})


def test_checkpoint_with_a_lone_surrogate_is_an_invalid_argument(tmp_path):
    lines, run = run_wat(tmp_path, "job.checkpoint", '{"state": "\\ud800"}')
    assert envelope(lines)["error"]["code"] == "INVALID_ARGUMENT"
    assert run.checkpoints.load(run.extension, run.run_id) == (False, None)


@pytest.mark.parametrize("payload", ['{"progress": 1.5}', '{"progress": -0.1}', '{"progress": "half"}',
                                     '{"progress": 0.5, "extra": 1}',
                                     '{"progress": 0.5, "message": "' + "m" * 257 + '"}'])
def test_bad_progress_is_refused_by_the_schema(tmp_path, payload):
    lines, run = run_wat(tmp_path, "job.progress", payload)
    assert envelope(lines)["error"]["code"] == "INVALID_ARGUMENT"
    assert run.progress == 0.0


@pytest.mark.parametrize("payload", ["{}", '{"items": -1}', '{"items": 9007199254740992}', '{"items": 1.5}'])
def test_bad_metrics_are_refused(tmp_path, payload):
    lines, run = run_wat(tmp_path, "job.metrics", payload)
    assert envelope(lines)["error"]["code"] == "INVALID_ARGUMENT" and run.items == 0


def test_warnings_are_capped(tmp_path):
    run = JobRun("com.example.app", "go", CheckpointStore(tmp_path))
    for i in range(150):
        run.warn(f"w{i}")
    assert len(run.warnings) == 100 and run.dropped_warnings == 50 and run.snapshot()["dropped_warnings"] == 50


def test_job_operations_outside_a_job_are_refused(tmp_path):
    ext = extension(tmp_path, "(module)", operations=("job.*",))
    dispatcher = Dispatcher(lambda: ActivePolicies(job_policies(tmp_path)), default_registry(),
                            LibraryCatalog(tmp_path / "data"), tmp_path / "data")
    env = dispatcher.dispatch(ext, "job.interrupted", "", {})
    assert env["error"]["code"] == "INVALID_ARGUMENT" and "running job" in env["error"]["message"]


def test_job_operations_are_denied_without_a_policy(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "none.yaml").write_text(JOB_POLICY.replace("com.example.*", "com.other.*"))
    dispatcher = Dispatcher(lambda: ActivePolicies(PolicySet.from_load(load_paths([tmp_path / "policies"]))),
                            default_registry(), LibraryCatalog(tmp_path / "data"), tmp_path / "data",
                            job=JobRun("com.example.app", "go", CheckpointStore(tmp_path)))
    env = dispatcher.dispatch(extension(tmp_path, "(module)", operations=("job.*",)), "job.checkpoint", "",
                              {"state": 1})
    assert env["error"]["code"] == "PERMISSION_DENIED"


# ---- the checkpoint store ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [("../../etc", "00112233aabbccdd"), ("com.example.app", "../x"),
                                 ("com.example.app", "00112233aabbccdd/../../x"), ("Com.Example", "00112233"),
                                 ("dev:" + "a" * 63, "00112233"), ("dev:../" + "a" * 61, "00112233"),
                                 ("dev:" + "A" * 64, "00112233"), ("dev:" + "a" * 64 + "/x", "00112233"),
                                 ("com.example.app\n", "00112233"), ("com.example.app", "00112233\n")])
def test_checkpoint_keys_cannot_leave_the_store(tmp_path, key):
    with pytest.raises(CheckpointError, match="bad checkpoint key"):
        CheckpointStore(tmp_path).save(*key, {"a": 1})


def test_development_namespaces_are_checkpoint_keys(tmp_path):
    store = CheckpointStore(tmp_path)
    namespace = "dev:" + "0123456789abcdef" * 4
    store.save(namespace, "00112233", {"a": 1})
    assert (tmp_path / "checkpoints" / namespace / "00112233.json").is_file()
    assert store.load(namespace, "00112233") == (True, {"a": 1})
    assert store.load("com.example.app", "00112233") == (False, None)  # another namespace sees nothing


def test_a_run_of_another_namespace_is_refused(tmp_path):
    """A run created for one namespace cannot carry its checkpoints into another extension's job."""
    store = CheckpointStore(tmp_path / "data")
    store.save("com.example.app", "00112233aabbccdd", {"secret": "of com.example.app"})
    host = Host(job_policies(tmp_path), tmp_path / "data")
    ext = extension(tmp_path, call_job("job.state", "{}", 0), operations=("job.*",))
    try:
        result, calls = host.run_job(ext, "go", b"{}", JobRun("com.example.app", "go", store, "00112233aabbccdd"))
    finally:
        host.close()
    assert result.status == "failed" and "belongs to com.example.app/go" in result.error and not calls
    assert store.load("com.example.app", "00112233aabbccdd") == (True, {"secret": "of com.example.app"})


def test_corrupt_checkpoint_is_reported_not_silently_restarted(tmp_path):
    namespace = f"dev:{extension(tmp_path, call_job('job.state', '{}', 0)).module_sha256}"  # what run_wat runs
    store = CheckpointStore(tmp_path / "data")
    store.save(namespace, "00112233aabbccdd", {"a": 1})
    (tmp_path / "data" / "checkpoints" / namespace / "00112233aabbccdd.json").write_bytes(b'{"a": ')
    lines, _ = run_wat(tmp_path, "job.state", "{}", run_id="00112233aabbccdd")
    env = envelope(lines)
    assert env["error"]["code"] == "INTERNAL" and str(tmp_path) not in lines[0]


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A real write limit (RLIMIT_FSIZE, in a child process) makes the save fail: the error says the disk is
    exhausted, the previous checkpoint is intact and no temp file is left."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from capengine.host.checkpoints import CheckpointError, CheckpointStore
        store = CheckpointStore({str(tmp_path)!r})
        store.save("com.example.app", "0011223344556677", {{"cursor": 1}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        try:
            store.save("com.example.app", "0011223344556677", {{"blob": "x" * 1000}})
        except CheckpointError as exc:
            print("exhausted" if exc.exhausted else "other", exc.message)
            sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("exhausted") and "previous checkpoint is kept" in proc.stdout
    assert CheckpointStore(tmp_path).load("com.example.app", "0011223344556677") == (True, {"cursor": 1})
    assert [p.name for p in (tmp_path / "checkpoints" / "com.example.app").iterdir()] == ["0011223344556677.json"]


# ---- the daemon: jobs.run / status / cancel / resume, --resume-interrupted -----------------------------------

def daemon_dirs(tmp_path: Path, counter_ext) -> DaemonConfig:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "jobs.yaml").write_text(JOB_POLICY)
    ext_dir = tmp_path / "extensions" / "counter"
    ext_dir.mkdir(parents=True)
    for name in ("manifest.yaml", counter_ext.module_path.name):
        (ext_dir / name).write_bytes((COUNTER_DIR / name).read_bytes())
    install(ext_dir, tmp_path / "data")  # the daemon serves installed extensions only
    # The CPU limit is wall-clock: checkpoints fsync, and a busy disk must not fail the job.
    return DaemonConfig(tmp_path / "policies", tmp_path / "extensions", tmp_path / "data",
                        tmp_path / "data" / "ctl.sock", watch_interval=0, limits=Limits(cpu_seconds=300))


def wait_for(socket: Path, job_id: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = call(socket, "jobs.status", {"id": job_id})
        status = reply.get("result")
        if status is not None and predicate(status):
            return status
        assert time.monotonic() < deadline, reply
        time.sleep(0.01)


TARGET = 3000  # long enough for a cancel to land mid-way, short enough for the default 10 s CPU limit


def test_daemon_cancel_then_resume_finishes_with_the_right_count(counter_ext, tmp_path):
    config = daemon_dirs(tmp_path, counter_ext)
    d = Daemon(config)
    d.start()
    try:
        started = call(config.socket, "jobs.run", {"extension": counter_ext.id, "job": "counter",
                                                   "input": {"target": TARGET}, "detach": True})["result"]
        job_id = started["id"]
        wait_for(config.socket, job_id, lambda s: s["items"] >= 20)
        assert call(config.socket, "jobs.cancel", {"id": job_id})["result"] == {"id": job_id, "status": "cancelling"}
        first = wait_for(config.socket, job_id, lambda s: s["status"] != "running")
        assert first["status"] == "interrupted" and first["interrupted_by"] == "cancel"
        assert 20 <= first["items"] < TARGET
        saved = CheckpointStore(config.data_dir).load(counter_ext.id, job_id)
        assert saved == (True, {"current": first["items"], "target": TARGET})  # checkpointed where it stopped
        again = call(config.socket, "jobs.cancel", {"id": job_id})
        assert "not running" in again["error"]["message"]
        summary = call(config.socket, "jobs.resume", {"id": job_id})["result"]
        assert summary["status"] == "completed" and summary["attempt"] == 2, summary
        messages = [entry["message"] for entry in summary["logs"]]
        assert "job counter resumes from its last checkpoint" in messages and f"counted to {TARGET}" in messages
        assert summary["progress"]["items"] == TARGET - first["items"]
        final = call(config.socket, "jobs.status", {"id": job_id})["result"]
        assert final["status"] == "completed" and final["items"] == TARGET and final["attempts"] == 2
        done = call(config.socket, "jobs.resume", {"id": job_id})
        assert "only an interrupted or failed job" in done["error"]["message"]
        assert "must be a job id" in call(config.socket, "jobs.status", {"id": "../../etc"})["error"]["message"]
    finally:
        d.stop()


@pytest.mark.parametrize(("method", "params", "names"), [
    ("jobs.status", {}, "missing parameter 'id'"), ("jobs.status", {"id": 12345678}, "'id' must be str"),
    ("jobs.cancel", {"id": None}, "'id' must be str"), ("jobs.cancel", {"id": "00112233\n"}, "must be a job id"),
    ("jobs.resume", {"id": ["00112233"]}, "'id' must be str"),
    ("jobs.resume", {"id": "00112233", "detach": 1}, "'detach' must be bool"),
    ("jobs.resume", {"id": "00112233", "wait_ms": True}, "'wait_ms' must be int"),
    ("jobs.run", {"extension": "com.example.counter", "job": "counter", "detach": "yes"}, "'detach' must be bool"),
])
def test_job_methods_refuse_wrong_param_types(counter_ext, tmp_path, method, params, names):
    """Strict JSON-RPC (rpc.py): a wrong or missing field is -32602 naming it, never a coerced value."""
    config = daemon_dirs(tmp_path, counter_ext)
    d = Daemon(config)
    try:
        reply = json.loads(d.answer(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                                "params": params}).encode()) or b"null")
    finally:
        d.stop()
    assert reply["error"]["code"] == -32602 and names in reply["error"]["message"], reply


def test_unknown_and_finished_jobs_are_refused_by_cancel_and_resume(counter_ext, tmp_path):
    config = daemon_dirs(tmp_path, counter_ext)
    d = Daemon(config)
    try:
        assert "no job 0011223344556677" in d.answer(
            b'{"jsonrpc": "2.0", "id": 1, "method": "jobs.resume", "params": {"id": "0011223344556677"}}').decode()
        done = d.run_job(counter_ext.id, "counter", {"target": 5})
        assert done["status"] == "completed" and done["attempt"] == 1
        again = json.loads(d.answer(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "jobs.cancel",
                                                "params": {"id": done["id"]}}).encode()))
        assert again["error"]["code"] == -32602 and "not running" in again["error"]["message"]
        assert d.job_status(done["id"])["items"] == 5
    finally:
        d.stop()


def test_twin_resumes_run_the_job_once(counter_ext, tmp_path):
    """Two jobs.resume of one interrupted job wait for the one slot; the first finishes the job, the second is
    refused when its turn comes (the record is checked again then), instead of counting it all over again."""
    import threading

    config = attrs.evolve(daemon_dirs(tmp_path, counter_ext), max_jobs_per_extension=1)
    d = Daemon(config)
    d.start()
    try:
        job = d.run_job(counter_ext.id, "counter", {"target": TARGET}, detach=True)["id"]
        wait_for(config.socket, job, lambda s: s["items"] >= 20)
        d.cancel_job(job)
        wait_for(config.socket, job, lambda s: s["status"] == "interrupted")
        blocker = d.run_job(counter_ext.id, "counter", {"target": 10 * TARGET}, detach=True)["id"]
        replies: list[dict] = []
        twins = [threading.Thread(target=lambda: replies.append(call(config.socket, "jobs.resume", {"id": job},
                                                                     timeout=120))) for _ in range(2)]
        for t in twins:
            t.start()
        deadline = time.monotonic() + 60
        while d.admission.counts()["queued"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        d.cancel_job(blocker)
        for t in twins:
            t.join(120)
    finally:
        d.stop()
    results = sorted(replies, key=lambda r: "error" in r)
    assert results[0]["result"]["status"] == "completed", results
    assert results[1]["error"]["code"] == -32602 and "is completed" in results[1]["error"]["message"], results
    final = d.jobs.get(job)
    assert final is not None and final.status == "completed" and final.items == TARGET and final.attempts == 2


def start_daemon(config: DaemonConfig, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "capengine", "daemon", "--policies", str(config.policies),
                             "--extensions", str(config.extensions), "--data-dir", str(config.data_dir),
                             "--socket", str(config.socket), "--watch-interval", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "serving on" in (proc.stdout.readline() if proc.stdout else "")
    return proc


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_restart_with_resume_interrupted_resumes_the_job(counter_ext, tmp_path, stop_signal):
    """SIGTERM: the daemon asks the job to stop, it checkpoints and returns ("interrupted" by "shutdown").
    SIGKILL: the record still says "running" and the last periodic checkpoint is all there is. Either way a
    restart with --resume-interrupted finishes the count from the checkpoint; one without it does not."""
    config = daemon_dirs(tmp_path, counter_ext)
    proc = start_daemon(config)
    try:
        job_id = call(config.socket, "jobs.run", {"extension": counter_ext.id, "job": "counter",
                                                  "input": {"target": TARGET}, "detach": True})["result"]["id"]
        wait_for(config.socket, job_id, lambda s: s["items"] >= 20)
        proc.send_signal(stop_signal)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    record = json.loads((config.data_dir / "jobs" / f"{job_id}.json").read_text())
    if stop_signal == signal.SIGTERM:
        assert record["status"] == "interrupted" and record["interrupted_by"] == "shutdown"
    else:
        assert record["status"] == "running"
        config.socket.unlink(missing_ok=True)
    found, state = CheckpointStore(config.data_dir).load(counter_ext.id, job_id)
    assert found and 0 < state["current"] < TARGET

    plain = start_daemon(config)  # without the flag nothing resumes
    try:
        assert call(config.socket, "jobs.status", {"id": job_id})["result"]["status"] == record["status"]
    finally:
        plain.terminate()
        plain.wait(30)
    proc = start_daemon(config, "--resume-interrupted")
    try:
        final = wait_for(config.socket, job_id, lambda s: s["status"] not in ("running", "interrupted"))
    finally:
        proc.terminate()
        proc.wait(30)
    assert final["status"] == "completed" and final["attempts"] == 2, final
    assert CheckpointStore(config.data_dir).load(counter_ext.id, job_id) == (False, None)
    if stop_signal == signal.SIGTERM:  # the job checkpointed exactly where it stopped: no step counted twice
        assert final["items"] == TARGET


# ---- capengine run's progress display ------------------------------------------------------------------------

def test_progress_lines_are_one_per_tenth_and_escape_the_guest_message(tmp_path):
    from io import StringIO

    from capengine.progress_display import ProgressDisplay

    out = StringIO()
    display = ProgressDisplay(out, tty=False)
    run = JobRun("com.example.app", "go", CheckpointStore(tmp_path))
    run.on_change = display.update
    for step in range(1, 101):
        run.set_progress(step / 100, "\x1b[2J\x1b]0;owned\x07counting\nforged line")
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("progress 100%")  # the first report, then each tenth
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert all("\\x1b[2J" in line and "forged line" in line for line in lines)  # escaped, one line each
    bar = StringIO()
    tty = ProgressDisplay(bar, tty=True)
    run.on_change = tty.update
    run.set_progress(1.0, "\x1b[31mred")
    tty.finish(run)
    assert "\x1b" not in bar.getvalue() and bar.getvalue().endswith("\n")


@pytest.mark.parametrize("content", [b'{"a": ', b"[]", b'"x"', b"\xff\xfe",
                                     b'{"id": "0011223344556677", "extension": "e", "job": "j", "input": 5}',
                                     b'{"id": "0011223344556677", "extension": "e", "job": "j", "input": {}, '
                                     b'"attempts": true}',
                                     b'{"id": "0011223344556677", "extension": "e", "job": "j", "input": {}, '
                                     b'"status": "resumed"}',
                                     b'{"id": "0011223344556677", "extension": "e", "job": "j", "input": {}, '
                                     b'"items": -3}',
                                     b'{"id": "0011223344556677", "extension": "e", "job": "j", "input": {}, '
                                     b'"surprise": 1}'])
def test_damaged_job_records_are_reported_and_skipped(tmp_path, content, caplog):
    """A record is read back from disk before a resume: anything malformed is logged and left alone, so one bad
    file neither crashes --resume-interrupted nor resumes a job with made-up fields."""
    from capengine.daemon.job_table import JobRecord, JobTable

    table = JobTable(tmp_path / "jobs")
    table.save(JobRecord("aabbccdd", "com.example.app", "go", {"n": 1}, status="interrupted",
                         interrupted_by="shutdown"))
    (tmp_path / "jobs" / "0011223344556677.json").write_bytes(content)
    (tmp_path / "jobs" / "not-an-id.json").write_bytes(b"{}")
    assert table.get("0011223344556677") is None
    assert [r.id for r in table.to_resume_after_restart()] == ["aabbccdd"]
    assert "0011223344556677" in caplog.text
    assert [p.name for p in (tmp_path / "jobs").iterdir() if p.name.endswith(".tmp")] == []
