"""Adversarial review of the worker-process mode (`workers = N`): each guarantee attacked with real processes.

- A worker SIGKILLed right after an action's effect, before that call's record left it: the call is in the log
  (OUTCOME_UNKNOWN), the job failed saying so.
- A worker whose reader is late to see a reload's commit: no call after the reload returned is decided under
  the old revision; every record's decision is the one its revision's policies give.
- A worker SIGSTOPped mid-job: the job fails within its bound (never hangs its client), the worker is replaced.
- Workers SIGKILLed at random moments while jobs stream actions: every job answered, the log strictly parseable,
  no call id twice, the pool back to size.
- A worker that cannot load the policy set at start: the start is refused, naming why, no process left.

Faults inside a worker are injected with a `sitecustomize` module on the worker's PYTHONPATH (the worker is a
fresh interpreter: nothing else reaches into it).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import signal
import sqlite3
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, child_pids, fill, read_log, tmpfs
from helpers import policy_yaml, write
from test_daemon_workers import gone, setup, wait_for
from wasm_helpers import call_job, pings, wat_bytes, wat_module

from capengine.daemon.config import DaemonConfig, DaemonError
from capengine.daemon.server import call
from capengine.host.installed import InstalledRegistry
from capengine.host.manifests import load_extension
from capengine.host.runtime import Limits

STORE = "credentials.store"
STORE_PAYLOAD = '{"name": "k", "secret": "s3cret", "replace": true}'
PING_ALLOW = "- {id: ping, effect: allow, operations: [test.ping]}\n"
PING_DENY = "- {id: ping, effect: deny, operations: [test.ping]}\n"
STORE_ALLOW = "- {id: store, effect: allow, operations: [credentials.store]}\n"


@pytest.fixture
def inject(tmp_path, monkeypatch):
    """Run `code` at the start of every Python process the daemon spawns from now on (its workers)."""
    def put(code: str) -> None:
        site = tmp_path / "inject"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(textwrap.dedent(code))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH")))))
    return put


def storer(count: int) -> str:
    """A guest whose job `go` stores (replace: true) the same credential `count` times."""
    data = (f'  (data (i32.const 1024) "{wat_bytes(STORE)}")\n'
            f'  (data (i32.const 4096) "{wat_bytes(STORE_PAYLOAD)}")')
    body = f"""
  (func (export "execute_go") (result i32)
    (local $i i32)
    (block $done (loop $again
      (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
      (drop (call $spacedrive_call (i32.const 1024) (i32.const {len(STORE)}) (i32.const 0)
                                   (i32.const 4096) (i32.const {len(STORE_PAYLOAD)})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $again)))
    (i32.const 0))"""
    return wat_module(body, data)


def add_extension(config: DaemonConfig, name: str, guest: str, operations: str) -> str:
    ext = config.extensions / name
    ext.mkdir(parents=True)
    (ext / "guest.wat").write_text(guest)
    (ext / "manifest.yaml").write_text(f"id: com.example.{name}\nname: {name}\nversion: 1.0.0\n"
                                       f"module: guest.wat\njobs: [go]\noperations: [{operations}]\n")
    InstalledRegistry(config.data_dir).install(load_extension(ext))
    return f"com.example.{name}"


def job(sock: Path, extension: str, **params: object) -> dict:
    reply = call(sock, "jobs.run", {"extension": extension, "job": "go", "input": {}, **params}, timeout=120)
    assert "result" in reply, reply
    return reply["result"]


def stored_secrets(data: Path) -> int:
    with sqlite3.connect(data / "vault.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM secrets").fetchone()[0]


def test_a_worker_killed_after_an_effect_before_its_record_leaves_the_call_recorded_as_outcome_unknown(
        tmp_path, started, inject):
    """The handler stored the secret, then the worker was SIGKILLed before the call's record was written to
    its socket: the effect happened, so the call must be in the log (allowed, OUTCOME_UNKNOWN, the revision it
    was decided under) and the job must fail saying which call's outcome is unknown."""
    inject("""
        import os, signal
        from capengine.host.operations import credentials
        _store = credentials.store
        def store(ctx, args):
            result = _store(ctx, args)
            os.kill(os.getpid(), signal.SIGKILL)  # the effect is committed; the record is not sent yet
            return result
        credentials.store = store
    """)
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW + STORE_ALLOW), workers=1)
    ext = add_extension(config, "storer", call_job(STORE, STORE_PAYLOAD, 0), STORE)
    daemon = started(config)
    result = job(config.socket, ext)
    assert result["status"] == "failed", result
    assert f"during a call to {STORE}, whose outcome is unknown" in result["error"], result
    assert [c["code"] for c in result["calls"]] == ["OUTCOME_UNKNOWN"]
    assert stored_secrets(config.data_dir) == 1  # the effect did happen
    assert daemon.decisions.flush()
    [record] = [r for r in read_log(config.data_dir) if r["operation"] == STORE]
    assert record["extension"] == ext and record["decision"] == "allow"
    assert record["code"] == "OUTCOME_UNKNOWN" and record["rules"] == ["p/store"]
    assert record["revision"] == daemon.status.revision
    assert "secret" not in record["args"] and "s3cret" not in json.dumps(record)  # still never logged
    assert daemon.pool is not None
    wait_for(lambda: daemon.pool is not None and daemon.pool.state()["alive"] == 1)


def test_a_worker_killed_in_the_middle_of_writing_a_record_leaves_the_call_recorded(tmp_path, started, inject,
                                                                                     caplog):
    """The worker writes half of the record of a credentials.store that succeeded, then is SIGKILLed: the half
    record is dropped (the log stays parseable), and the call is still recorded, as OUTCOME_UNKNOWN."""
    inject("""
        import os, signal
        from multiprocessing import connection
        _send = connection.Connection._send_bytes
        def send(self, buf):
            data = bytes(buf)
            if b'"operation":"credentials.store"' in data and b'"code":"OK"' in data:
                frame = len(data).to_bytes(4, "big") + data
                os.write(self.fileno(), frame[: len(frame) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _send(self, buf)
        connection.Connection._send_bytes = send
    """)
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW + STORE_ALLOW), workers=1)
    ext = add_extension(config, "storer", call_job(STORE, STORE_PAYLOAD, 0), STORE)
    daemon = started(config)
    with caplog.at_level("ERROR", logger="capengine.daemon.worker_pool"):
        result = job(config.socket, ext)
    assert result["status"] == "failed" and "whose outcome is unknown" in result["error"], result
    assert "died in the middle of a message" in caplog.text
    assert stored_secrets(config.data_dir) == 1
    assert daemon.decisions.flush()
    [record] = [r for r in read_log(config.data_dir) if r["operation"] == STORE]  # strict: whole JSON lines
    assert record["code"] == "OUTCOME_UNKNOWN" and record["decision"] == "allow"


def test_no_call_after_a_reload_returned_is_decided_under_the_old_revision(tmp_path, started, inject):
    """The workers' reader threads take 3 s to act on a commit message (a busy or starved thread). A reload
    turns the allow of test.ping into a deny while a job keeps pinging: once the reload has returned, none of
    that job's calls may still be allowed under the old revision (with threads, the next call reads the new
    set). Other jobs race the reload: every record's decision is the one its own revision's policies give."""
    inject("""
        import threading, time
        from capengine.host import dispatcher
        _active = dispatcher.ActivePolicies
        def slow(*args, **kwargs):
            if threading.current_thread().name == "capengine-worker-reader":
                time.sleep(3.0)
            return _active(*args, **kwargs)
        dispatcher.ActivePolicies = slow
    """)
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2, max_jobs_per_extension=4,
                   limits=Limits(cpu_seconds=3))
    endless = add_extension(config, "endless", pings(10**9), "test.ping")
    daemon = started(config)
    sock, pool = config.socket, daemon.pool
    assert pool is not None
    v1 = daemon.status.revision
    long_job: dict = {}
    runner = threading.Thread(target=lambda: long_job.update(job(sock, endless)))
    runner.start()
    wait_for(lambda: pool.state()["running"])
    time.sleep(0.3)
    write(config.policies, "p.yaml", policy_yaml("p", PING_DENY))
    outcome = daemon.reload()
    returned = time.time()
    assert outcome["reloaded"] is True, outcome
    v2 = outcome["revision"]
    after = job(sock, "com.example.burst")  # a job that starts after the reload
    runner.join(60)
    assert {c["code"] for c in after["calls"]} == {"PERMISSION_DENIED"}, after
    assert long_job["status"] in ("failed", "interrupted"), long_job  # it ran into its 3 s bound
    assert daemon.decisions.flush()
    records = [r for r in read_log(config.data_dir) if r["operation"] == "test.ping"]
    assert {r["revision"] for r in records} == {v1, v2}
    for record in records:  # what the record's own revision decides, nothing else (an allowed call may still
        # have met the job's 3 s bound: RESOURCE_EXHAUSTED)
        if record["revision"] == v1:
            assert record["decision"] == "allow" and record["code"] in ("OK", "RESOURCE_EXHAUSTED"), record
        else:
            assert (record["code"], record["decision"]) == ("PERMISSION_DENIED", "deny"), record
    stamp = datetime.datetime.fromisoformat
    late = [r for r in records if r["revision"] == v1
            and stamp(r["time"].replace("Z", "+00:00")).timestamp() > returned + 0.5]
    assert not late, f"{len(late)} calls allowed under {v1} more than 0.5 s after the reload to {v2} returned"
    assert pool.state()["revisions"] == [v2]


def test_a_stopped_worker_fails_its_job_within_its_bound_and_is_replaced(tmp_path, started):
    """SIGSTOP the worker running a job: its guest cannot be interrupted (the process does not run), so the
    daemon kills it once the job is past its wall-clock bound plus the grace; the client gets the failure."""
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2, limits=Limits(cpu_seconds=2))
    daemon = started(config)
    pool = daemon.pool
    assert pool is not None
    pool.hang_grace = 1.0
    answer: dict = {}
    client = threading.Thread(target=lambda: answer.update(job(config.socket, "com.example.spinner")))
    client.start()
    wait_for(lambda: pool.state()["running"])
    [(pid, _)] = pool.state()["running"].items()
    os.kill(int(pid), signal.SIGSTOP)
    client.join(20)
    assert not client.is_alive(), "the job's client was left waiting on a stopped worker"
    assert answer["status"] == "failed" and "had not finished the job" in answer["error"], answer
    wait_for(lambda: pool.state()["alive"] == 2 and int(pid) not in pool.state()["pids"], 30)
    wait_for(lambda: gone(int(pid)), 10)
    assert job(config.socket, "com.example.burst")["status"] == "completed"


def test_workers_killed_at_random_moments_while_actions_stream_lose_nothing(tmp_path, started):
    """Six SIGKILLs at random moments (mid-handler, mid-record, between jobs) while two workers run jobs of
    20 credentials.store calls: every client is answered, every completed job's calls are all in the log,
    every failed one names the death, the log parses strictly, no call id appears twice, and a stored
    secret always has a record (OK or OUTCOME_UNKNOWN)."""
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW + STORE_ALLOW), workers=2, max_jobs_per_extension=4)
    ext = add_extension(config, "storer", storer(20), STORE)
    daemon = started(config)
    pool = daemon.pool
    assert pool is not None
    rng = random.Random(15)
    results: list[dict] = []
    with ThreadPoolExecutor(4) as clients:
        futures = [clients.submit(job, config.socket, ext) for _ in range(24)]
        kills = 0
        while kills < 6 and not all(f.done() for f in futures):
            time.sleep(rng.uniform(0.0, 0.15))
            live = pool.state()["pids"]
            if live:
                os.kill(rng.choice(live), signal.SIGKILL)
                kills += 1
                wait_for(lambda: pool.state()["alive"] == 2, 30)
        results = [f.result(timeout=120) for f in futures]
    assert {r["status"] for r in results} <= {"completed", "failed"}
    failed = [r for r in results if r["status"] == "failed"]
    assert all("the worker process running the job died" in r["error"] for r in failed)
    assert daemon.decisions.flush()
    records = [r for r in read_log(config.data_dir) if r["operation"] == STORE]  # strict parse
    assert len({r["call_id"] for r in records}) == len(records)
    codes = Counter(r["code"] for r in records)
    assert set(codes) <= {"OK", "OUTCOME_UNKNOWN"}, codes
    completed = sum(1 for r in results if r["status"] == "completed")
    assert codes["OK"] >= 20 * completed and codes["OUTCOME_UNKNOWN"] <= len(failed)
    if stored_secrets(config.data_dir):
        assert records
    wait_for(lambda: pool.state()["alive"] == 2, 30)


def test_a_worker_that_cannot_load_the_set_refuses_the_start_and_leaves_no_process(tmp_path, started, inject,
                                                                                  monkeypatch):
    inject("""
        import os
        if os.environ.get("CAPENGINE_WORKER_TEST_BREAK"):
            from capengine.policy import loader
            def broken(*args, **kwargs):
                raise OSError("injected: the policy texts cannot be compiled here")
            loader.load_text_cached = broken
    """)
    monkeypatch.setenv("CAPENGINE_WORKER_TEST_BREAK", "1")
    with pytest.raises(DaemonError, match="did not start: OSError: injected: the policy texts cannot be"):
        started(setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2))
    assert all(gone(pid) for pid in child_pids())


def test_a_stopped_worker_never_blocks_a_reload_or_the_daemon_stop(tmp_path, started, monkeypatch):
    """SIGSTOP one worker: its socket fills and stays full. A reload shipping 4 MB of policy texts, and a
    stop that keeps telling it to interrupt its job, must both end (before: each blocked forever in send(),
    the reload holding the lock every replacement needs). The stuck worker is killed, named in the refusal."""
    from capengine.daemon import worker_pool

    monkeypatch.setattr(worker_pool, "SEND_TIMEOUT", 1.0)
    daemon = started(setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2, shutdown_grace=0.2,
                           drain_timeout=3.0))
    pool = daemon.pool
    assert pool is not None
    stalled = pool.live()[0]
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    outcome: list[BaseException | None] = []

    def switch() -> None:
        try:
            pool.switch("0" * 16, (("big.yaml", "#" * (4 << 20) + "\n"),), lambda: None, timeout=5.0)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reloader = threading.Thread(target=switch, daemon=True)
    reloader.start()
    reloader.join(20)
    assert outcome, "the reload blocked on a stopped worker"
    assert isinstance(outcome[0], DaemonError) and "none switched" in str(outcome[0])
    wait_for(lambda: gone(stalled.proc.pid), 10)
    assert stalled.killed_because is not None and "took no message" in stalled.killed_because
    wait_for(lambda: pool.state()["alive"] == 2, 30)
    assert daemon.reload()["reloaded"] is True  # the next reload goes through everywhere

    busy = job(config_socket := daemon.config.socket, "com.example.spinner", detach=True)
    wait_for(lambda: pool.state()["running"])
    [(pid, _)] = pool.state()["running"].items()
    os.kill(int(pid), signal.SIGSTOP)
    stopper = threading.Thread(target=daemon.stop, daemon=True)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "the daemon's stop blocked on a stopped worker"
    assert not config_socket.exists()
    record = json.loads((daemon.config.data_dir / "jobs" / f"{busy['id']}.json").read_text())
    assert record["status"] in ("failed", "interrupted")


def test_hostile_guests_in_workers_fail_their_jobs_and_the_workers_go_on(tmp_path, started):
    """An endless loop and a memory bomb (memory.grow until refused, then a trap) on both workers at once:
    each job fails with its reason, no worker dies (no restart), and the next jobs run."""
    bomb = wat_module("""
  (func (export "execute_go") (result i32)
    (block $full (loop $grow
      (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
      (br $grow)))
    unreachable)""")
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2, max_jobs_per_extension=4,
                   limits=Limits(cpu_seconds=2, memory_bytes=32 << 20))
    bomber = add_extension(config, "bomber", bomb, "test.ping")
    daemon = started(config)
    pool = daemon.pool
    assert pool is not None
    pids = sorted(pool.state()["pids"])
    with ThreadPoolExecutor(4) as clients:
        loops = [clients.submit(job, config.socket, "com.example.spinner") for _ in range(2)]
        bombs = [clients.submit(job, config.socket, bomber) for _ in range(2)]
        spun, blown = [f.result() for f in loops], [f.result() for f in bombs]
    assert all(r["status"] == "failed" and "CPU time limit" in r["error"] for r in spun), spun
    assert all(r["status"] == "failed" and "unreachable" in r["error"] for r in blown), blown
    assert sorted(pool.state()["pids"]) == pids and pool.state()["restarts"] == 0
    assert all(job(config.socket, "com.example.burst")["status"] == "completed" for _ in range(2))


def test_a_full_disk_with_workers_refuses_calls_and_every_call_that_ran_is_logged(tmp_path):
    """The data dir (decision log, job table, vault) on a 24 MiB tmpfs, filled while two workers run jobs from
    two clients: calls are refused (RESOURCE_EXHAUSTED in the workers, -32002 for new jobs), never run
    unrecorded; after space returns the daemon recovers by itself, and the log holds every OK call."""
    with tmpfs(tmp_path / "data", "24m") as data:
        config = setup(tmp_path, policy_yaml("p", PING_ALLOW))
        dirs = {"policies": config.policies, "extensions": config.extensions, "data": data, "socket": config.socket}
        daemon = DaemonProcess(dirs, "--workers", "2", "--max-jobs", "4", "--watch-interval", "0").wait_ready()
        ok = Counter[str]()
        counting = threading.Lock()
        try:
            def stream(stop: threading.Event) -> None:
                while not stop.is_set():
                    reply = daemon.call("jobs.run", {"extension": "com.example.burst", "job": "go"})
                    if "result" in reply:
                        with counting:
                            ok.update(c["code"] for c in reply["result"]["calls"])
                    else:
                        assert reply["error"]["code"] in (-32002, -32603), reply
                        with counting:
                            ok[str(reply["error"]["code"])] += 1
                        time.sleep(0.05)

            stop = threading.Event()
            clients = [threading.Thread(target=stream, args=(stop,)) for _ in range(2)]
            for client in clients:
                client.start()
            time.sleep(0.5)
            filler = fill(data)
            wait_for(lambda: daemon.result("health")["decision_log"]["state"] == "failing", 20)
            time.sleep(0.5)
            filler.unlink()
            wait_for(lambda: daemon.result("health")["decision_log"]["state"] == "ok", 20)
            time.sleep(0.5)
            stop.set()
            for client in clients:
                client.join(60)
            assert set(ok) <= {"OK", "RESOURCE_EXHAUSTED", "-32002", "-32603"} and ok["OK"] > 0, ok
            assert ok["RESOURCE_EXHAUSTED"] + ok["-32002"] > 0, ok  # refused while the log could not be written
            code, errors = daemon.stop()
            assert code == 0, errors
        finally:
            daemon.kill()
        records = read_log(data)  # strict: every line whole JSON
        # a record the log could not write when the daemon stopped is on its stderr, never dropped
        spilled = [json.loads(line.split(": ", 1)[1]) for line in errors.splitlines()
                   if line.startswith("capengine decision log (unwritten): ")]
        records += spilled
        # >=: a job whose calls ran may still have been answered -32603 (its job record could not be saved)
        assert sum(r.get("code") == "OK" for r in records if r.get("operation") == "test.ping") >= ok["OK"]


def test_reloads_flipping_allow_and_deny_race_jobs_and_worker_kills(tmp_path, started):
    """Twelve reloads alternate test.ping between allow and deny while two clients stream jobs and workers are
    SIGKILLed at random (some mid-prepare, some mid-job): each reload either switches everyone or is rejected
    with a reason; every record's decision is the one its own revision gives; at the end every worker is on
    the daemon's revision; every client got an answer."""
    config = setup(tmp_path, policy_yaml("p", PING_ALLOW), workers=2, max_jobs_per_extension=4)
    daemon = started(config)
    pool = daemon.pool
    assert pool is not None
    allows = {daemon.status.revision: True}
    rng = random.Random(1515)
    stop = threading.Event()
    answers: list[dict] = []

    def stream() -> None:
        while not stop.is_set():
            answers.append(job(config.socket, "com.example.burst"))

    clients = [threading.Thread(target=stream) for _ in range(2)]
    for client in clients:
        client.start()
    switched = rejected = 0
    for flip in range(12):
        allow = flip % 2 == 1
        write(config.policies, "p.yaml", policy_yaml("p", PING_ALLOW if allow else PING_DENY))
        if rng.random() < 0.5:  # a kill racing the reload's prepare or the jobs
            threading.Timer(rng.uniform(0.0, 0.2), lambda: (live := pool.state()["pids"]) and
                            os.kill(rng.choice(live), signal.SIGKILL)).start()
        outcome = daemon.reload()
        if outcome["reloaded"]:
            switched += 1
            assert allows.setdefault(outcome["revision"], allow) == allow  # a revision is a hash of the texts
        else:
            rejected += 1
            assert outcome["errors"] and "none switched" in outcome["errors"][0], outcome
        time.sleep(rng.uniform(0.05, 0.3))
        wait_for(lambda: pool.state()["alive"] == 2, 30)
    stop.set()
    for client in clients:
        client.join(60)
    assert {a["status"] for a in answers} <= {"completed", "failed"}
    assert daemon.decisions.flush()
    records = [r for r in read_log(config.data_dir) if r["operation"] == "test.ping"]
    assert records and {r["revision"] for r in records} <= set(allows)
    for record in records:
        if record["code"] == "OUTCOME_UNKNOWN":
            continue
        expected = ("OK", "allow") if allows[record["revision"]] else ("PERMISSION_DENIED", "deny")
        assert (record["code"], record["decision"]) == expected, record
    wait_for(lambda: pool.state()["alive"] == 2, 30)
    assert pool.state()["revisions"] == [daemon.status.revision]
    assert switched + rejected == 12 and switched > 0


def test_a_rate_limit_hammered_from_three_workers_stays_exact_while_workers_are_killed(tmp_path, started):
    """24 jobs of 40 test.ping calls from 6 clients on 3 workers against one bucket of 50 (1/hour), with three
    SIGKILLs mid-stream: never more than 50 calls pass; a killed worker can take with it at most the one call
    it was deciding (its token spent, its result never returned), so at least 50 - kills pass and are logged."""
    from test_daemon_workers import LIMITED

    config = setup(tmp_path, LIMITED, workers=3, max_jobs_per_extension=8)
    daemon = started(config)
    pool = daemon.pool
    assert pool is not None
    rng = random.Random(3)
    with ThreadPoolExecutor(6) as clients:
        futures = [clients.submit(job, config.socket, "com.example.burst") for _ in range(24)]
        kills = 0
        while kills < 3 and not all(f.done() for f in futures):  # each kill hits a worker running a job
            time.sleep(rng.uniform(0.0, 0.05))
            running = list(pool.state()["running"])
            if running:
                os.kill(int(rng.choice(running)), signal.SIGKILL)
                kills += 1
                wait_for(lambda: pool.state()["alive"] == 3, 30)
        results = [f.result(timeout=120) for f in futures]
    assert sum(r["status"] == "failed" for r in results) >= 1
    answered = Counter(c["code"] for r in results for c in r["calls"])
    assert set(answered) <= {"OK", "RATE_LIMITED"}, answered
    assert daemon.decisions.flush()
    records = [r for r in read_log(config.data_dir) if r["operation"] == "test.ping"]
    logged = Counter(r["code"] for r in records)
    assert 50 - kills <= logged["OK"] <= 50, (logged, kills)
    assert answered["OK"] <= logged["OK"]  # a failed job's calls are not in its reply, but are in the log
