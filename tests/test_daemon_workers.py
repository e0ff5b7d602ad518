"""The daemon with job worker processes (`workers = N`): every guarantee of the threaded daemon still holds.

Attacks: many concurrent jobs on several workers against one rate limit (exact counts), a reload one worker
refuses (nobody switches), kill -9 of a worker mid-job (job failed, worker replaced, no record lost, the log
parseable), SIGTERM and kill -9 of the daemon (no orphan worker left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest
from daemon_helpers import DaemonProcess, child_pids, read_log
from helpers import policy_yaml, write
from wasm_helpers import PING_METHOD as METHOD
from wasm_helpers import pings

from capengine.daemon.config import DaemonConfig, DaemonError
from capengine.daemon.server import call
from capengine.host.installed import InstalledRegistry
from capengine.host.manifests import load_extension
from capengine.host.runtime import Limits

PING = "- {id: ping, effect: allow, operations: [test.ping]}\n"
LIMITED = policy_yaml("p", PING) + "  limits:\n    - {operations: [test.*], rate: 1/hour, burst: 50}\n"


def setup(tmp_path: Path, policies: str = LIMITED, **config: object) -> DaemonConfig:
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies", "p.yaml", policies)
    data = tmp_path / "data"
    for name, guest in (("burst", pings(40)), ("spinner", pings(1, spin=True)),
                        ("steady", pings(20_000, until_refused=True))):
        ext = tmp_path / "extensions" / name
        ext.mkdir(parents=True)
        (ext / "guest.wat").write_text(guest)
        (ext / "manifest.yaml").write_text(f"id: com.example.{name}\nname: {name}\nversion: 1.0.0\n"
                                           "module: guest.wat\njobs: [go]\noperations: [test.ping]\n")
        InstalledRegistry(data).install(load_extension(ext))
    return DaemonConfig(tmp_path / "policies", tmp_path / "extensions", data, tmp_path / "ctl.sock",
                        watch_interval=0, **config)  # type: ignore[arg-type]


def run(sock: Path, extension: str, **params: object) -> dict:
    reply = call(sock, "jobs.run", {"extension": extension, "job": "go", "input": {}, **params}, timeout=120)
    assert "result" in reply, reply
    return reply["result"]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")  # a zombie has exited
    except FileNotFoundError:
        return True


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_rate_limit_exact_across_worker_processes(tmp_path, started):
    """3 workers, 8 concurrent clients, 24 jobs of 40 calls each against one bucket of 50: exactly 50 pass."""
    daemon = started(setup(tmp_path, workers=3, max_jobs_per_extension=8))
    assert daemon.pool is not None and daemon.pool.state()["alive"] == 3
    with ThreadPoolExecutor(8) as clients:
        results = list(clients.map(lambda _: run(daemon.config.socket, "com.example.burst"), range(24)))
    codes = Counter(c["code"] for r in results for c in r["calls"])
    assert codes == {"OK": 50, "RATE_LIMITED": 24 * 40 - 50}
    assert daemon.decisions.flush()
    records = [r for r in read_log(daemon.config.data_dir) if r["operation"] == METHOD]
    assert Counter(r["code"] for r in records) == codes  # every call recorded exactly once, by the one writer
    assert len({r["call_id"] for r in records}) == len(records)  # ids unique across workers
    sample = daemon.metrics.registry.get_sample_value
    assert sample("capengine_decisions_total", {"extension": "com.example.burst", "operation": METHOD,
                                                "outcome": "allow"}) == 24 * 40
    assert sample("capengine_rate_limited_total", {"extension": "com.example.burst", "operation": METHOD}) \
        == 24 * 40 - 50
    assert sample("capengine_worker_processes") == 3


def test_in_flight_limit_holds_across_workers(tmp_path, started):
    """max_jobs_per_extension = 2 with 4 workers: the third job is queued (here: refused at once), never run."""
    daemon = started(setup(tmp_path, workers=4, max_jobs_per_extension=2, limits=Limits(cpu_seconds=60)))
    sock = daemon.config.socket
    first = [run(sock, "com.example.spinner", detach=True) for _ in range(2)]
    refused = call(sock, "jobs.run", {"extension": "com.example.spinner", "job": "go", "wait_ms": 0, "detach": True})
    assert refused["error"]["code"] == -32001
    health = call(sock, "health")["result"]
    assert health["jobs"]["running"] == 2 and len(health["workers"]["running"]) == 2
    for job in first:
        assert call(sock, "jobs.cancel", {"id": job["id"]})["result"]["status"] == "cancelling"


def test_reload_switches_every_worker_or_none(tmp_path, started):
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2, max_jobs_per_extension=4))
    sock, pool = daemon.config.socket, daemon.pool
    assert pool is not None
    v1 = daemon.status.revision
    write(daemon.config.policies, "q.yaml", policy_yaml("q", "- {id: other, effect: allow, operations: [vdfs.stat]}\n"))
    v2 = daemon.reload()["revision"]
    assert v2 != v1 and pool.state()["revisions"] == [v2] and daemon.host.policy_set.revision == v2
    with ThreadPoolExecutor(4) as clients:
        results = list(clients.map(lambda _: run(sock, "com.example.burst"), range(8)))
    assert all(r["status"] == "completed" for r in results)
    assert daemon.decisions.flush()
    assert {r["revision"] for r in read_log(daemon.config.data_dir)} == {v2}

    # one worker gets texts that do not compile to the announced revision: it says no, so nobody switches
    victim = pool.live()[0]
    honest = victim.send
    victim.send = lambda m: honest((*m[:3], m[3][:-1]) if m[0] == "prepare" else m)  # type: ignore[method-assign]
    write(daemon.config.policies, "q.yaml",
          policy_yaml("q", "- {id: other, effect: allow, operations: [vdfs.list_dir]}\n"))
    outcome = daemon.reload()
    assert outcome["reloaded"] is False and "none switched" in outcome["errors"][0], outcome
    assert daemon.status.revision == v2 and daemon.host.policy_set.revision == v2
    assert pool.state()["revisions"] == [v2]
    before = len(read_log(daemon.config.data_dir))
    with ThreadPoolExecutor(4) as clients:
        list(clients.map(lambda _: run(sock, "com.example.burst"), range(4)))
    assert daemon.decisions.flush()
    assert {r["revision"] for r in read_log(daemon.config.data_dir)[before:]} == {v2}
    victim.send = honest  # type: ignore[method-assign]
    assert daemon.reload()["reloaded"] is True and pool.state()["revisions"] == [daemon.status.revision] != [v2]


def test_kill_9_of_a_worker_mid_job_fails_the_job_replaces_the_worker_and_loses_no_record(tmp_path):
    config = setup(tmp_path, policy_yaml("p", PING), limits=Limits(cpu_seconds=120))
    dirs = {"policies": config.policies, "extensions": config.extensions, "data": config.data_dir,
            "socket": config.socket}
    daemon = DaemonProcess(dirs, "--workers", "2", "--max-jobs", "8", "--watch-interval", "0").wait_ready()
    try:
        spinning: dict = {}
        spinner = threading.Thread(target=lambda: spinning.update(run(config.socket, "com.example.spinner")))
        spinner.start()
        wait_for(lambda: daemon.result("health")["workers"]["running"])
        [(pid, job_id)] = daemon.result("health")["workers"]["running"].items()
        with ThreadPoolExecutor(6) as clients:  # concurrent writers from both workers while one is killed
            futures = [clients.submit(run, config.socket, "com.example.burst") for _ in range(30)]
            time.sleep(0.2)
            os.kill(int(pid), signal.SIGKILL)
            results = [f.result() for f in futures]
        spinner.join(60)
        assert spinning["status"] == "failed" and "killed by signal 9" in spinning["error"], spinning
        assert daemon.result("jobs.status", {"id": job_id})["status"] == "failed"  # resumable, not lost
        wait_for(lambda: daemon.result("health")["workers"]["alive"] == 2)
        workers = daemon.result("health")["workers"]
        assert workers["restarts"] == 1 and int(pid) not in workers["pids"]
        assert all(r["status"] == "completed" for r in results)
        assert run(config.socket, "com.example.burst")["status"] == "completed"  # the replacement serves
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.kill()
    records = read_log(config.data_dir)  # strict: every line whole JSON
    per_extension = Counter(r["extension"] for r in records if r["operation"] == METHOD)
    assert per_extension == {"com.example.burst": 31 * 40, "com.example.spinner": 1}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_the_daemon(tmp_path, how):
    config = setup(tmp_path, policy_yaml("p", PING), limits=Limits(cpu_seconds=120))
    dirs = {"policies": config.policies, "extensions": config.extensions, "data": config.data_dir,
            "socket": config.socket}
    daemon = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0", "--shutdown-grace", "0.2").wait_ready()
    try:
        pids = daemon.result("health")["workers"]["pids"]
        assert len(pids) == 2
        job = run(config.socket, "com.example.spinner", detach=True)  # busy while the daemon goes
        wait_for(lambda: daemon.result("health")["workers"]["running"])
        daemon.signal(how)
        assert daemon.proc.wait(60) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        wait_for(lambda: all(gone(pid) for pid in pids), 30)
    finally:
        daemon.kill()
    if how == signal.SIGTERM:  # drained: the job was interrupted and recorded so, resumable
        record = json.loads((config.data_dir / "jobs" / f"{job['id']}.json").read_text())
        assert record["status"] == "interrupted" and record["interrupted_by"] == "shutdown"


def test_workers_config_is_validated_and_zero_keeps_threads(tmp_path, started):
    config = setup(tmp_path)
    for bad in (-1, 1.5, "2"):
        with pytest.raises((ValueError, TypeError)):
            attrs.evolve(config, workers=bad)
    daemon = started(attrs.evolve(config, workers=0))
    assert daemon.pool is None and "workers" not in call(daemon.config.socket, "health")["result"]


def test_a_worker_that_never_answers_a_reload_aborts_it_everywhere(tmp_path, started):
    """SIGSTOP one worker: the prepare times out, nobody (not the daemon either) switches; the stalled worker is
    killed as unresponsive and replaced, and the next reload switches everyone."""
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    v1 = daemon.status.revision
    write(daemon.config.policies, "q.yaml", policy_yaml("q", "- {id: other, effect: allow, operations: [vdfs.stat]}\n"))
    good = daemon.policies.good
    stalled = pool.live()[1]
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    activated = []
    try:
        from capengine.daemon.config import DaemonError
        from capengine.daemon.server import _files
        from capengine.policy.check import run_check

        outcome = run_check([daemon.config.policies])
        with pytest.raises(DaemonError, match=f"worker {stalled.proc.pid}: no answer in 1 s"):
            pool.switch(outcome.policy_set.revision, _files(outcome.load.files), lambda: activated.append(1),
                        timeout=1.0)
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed (and maybe reaped) by then
            os.kill(stalled.proc.pid, signal.SIGCONT)
    wait_for(lambda: gone(stalled.proc.pid), 10)
    assert not activated and pool.state()["revisions"] == [v1] and daemon.policies.good is good
    results = [run(daemon.config.socket, "com.example.burst") for _ in range(4)]
    assert {c["code"] for r in results for c in r["calls"]} == {"OK"}
    assert daemon.decisions.flush()
    assert {r["revision"] for r in read_log(daemon.config.data_dir)} == {v1}
    v2 = daemon.reload()
    assert v2["reloaded"] is True and pool.state()["revisions"] == [v2["revision"]] != [v1]


def test_when_no_worker_can_be_started_jobs_fail_with_the_reason_instead_of_hanging(tmp_path, started):
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=1, queue_timeout=1.0))
    pool = daemon.pool
    assert pool is not None
    good = pool._setup
    pool._setup = attrs.evolve(good, revision="0" * 16)  # replacements get texts that are not that revision
    [pid] = pool.state()["pids"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool.last_error is not None)
    assert "did not start" in pool.last_error and "not " + "0" * 16 in pool.last_error
    health = call(daemon.config.socket, "health")["result"]
    assert health["status"] == "degraded" and "0 of 1 worker processes running" in health["problems"]
    failed = run(daemon.config.socket, "com.example.burst")
    assert failed["status"] == "failed" and "no worker process could be started" in failed["error"], failed
    pool._setup = good
    wait_for(lambda: pool.state()["alive"] == 1)
    assert run(daemon.config.socket, "com.example.burst")["status"] == "completed"
    assert call(daemon.config.socket, "health")["result"]["workers"]["restarts"] == 1


def test_a_log_that_cannot_keep_up_refuses_calls_in_every_worker_and_accounts_for_each(tmp_path, started):
    """A backlog high-water mark of 2 and a writer process that is stopped (SIGSTOP: it cannot keep up, whatever
    the machine's speed). Jobs already running in both workers are told the log is throttled and their next
    call is refused with RESOURCE_EXHAUSTED, new jobs are refused; every call made is either a record or
    counted in a refusal summary, none is lost, and calls run again once the writer catches up."""
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2, max_jobs_per_extension=4,
                           log_high_water=2))
    wait_for(lambda: daemon.decisions._process is not None)
    writer = daemon.decisions._process.proc.pid
    codes: Counter[str] = Counter()
    os.kill(writer, signal.SIGSTOP)
    try:  # "steady" calls until a call is refused (20,000 at most): it is running when the refusal starts
        with ThreadPoolExecutor(2) as clients:
            replies = list(clients.map(lambda _: call(daemon.config.socket, "jobs.run", {
                "extension": "com.example.steady", "job": "go"}, timeout=120), range(2)))
    finally:
        os.kill(writer, signal.SIGCONT)
    jobs = [r["result"] for r in replies if "result" in r]
    assert jobs and all(j["status"] == "completed" and j["calls"][-1]["code"] == "RESOURCE_EXHAUSTED"
                        for j in jobs), replies
    assert all("log unavailable" in r["error"]["message"] for r in replies if "result" not in r), replies
    codes.update(c["code"] for j in jobs for c in j["calls"])
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes["OK"] < 20_000, codes

    def runs_again() -> bool:  # once the writer has caught up, the workers are told and calls run again
        reply = call(daemon.config.socket, "jobs.run", {"extension": "com.example.burst", "job": "go"}, timeout=120)
        after = reply.get("result", {"status": "refused", "calls": []})
        codes.update(c["code"] for c in after["calls"])
        return after["status"] == "completed" and {c["code"] for c in after["calls"]} == {"OK"}

    wait_for(runs_again)
    daemon.stop()  # the refusal summaries are written when the log drains
    records = read_log(daemon.config.data_dir)
    logged = sum(1 for r in records if r["operation"] == METHOD and "refused_calls" not in r)
    refused = sum(r["refused_calls"] for r in records if "refused_calls" in r)
    assert logged == codes["OK"] and refused == codes["RESOURCE_EXHAUSTED"]


def test_workers_that_cannot_start_refuse_the_start_and_leave_no_process(tmp_path, started, monkeypatch):
    from capengine.daemon import worker_pool
    from capengine.daemon.config import DaemonError

    config = setup(tmp_path, policy_yaml("p", PING), workers=3)
    first = tmp_path / "first-failed"
    python = tmp_path / "python"  # the first worker fails at once; the others start and must not be left behind
    python.write_text("#!/bin/sh\n"  # only workers fail: the decision-log writer starts as usual
                      f"case \"$*\" in *worker_process*) if mkdir {first} 2>/dev/null; then exit 1; fi;; esac\n"
                      f"exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setattr(worker_pool.sys, "executable", str(python))
    with pytest.raises(DaemonError, match=r"worker process \d+ did not start: it exited with status 1"):
        started(config)
    assert first.is_dir()
    assert not config.socket.exists()
    assert all(gone(pid) for pid in child_pids())


def test_a_start_refused_for_a_busy_socket_leaves_no_decision_log_writer(tmp_path, started):
    config = setup(tmp_path, policy_yaml("p", PING))
    started(config)
    before = child_pids()
    second = attrs.evolve(config, data_dir=tmp_path / "data2")
    with pytest.raises(DaemonError, match="another daemon (is listening|\\(pid [0-9]+\\) is using the socket)"):
        started(second)
    assert all(gone(pid) for pid in child_pids() - before)  # its writer process was stopped with the start
    assert config.socket.exists()  # and the running daemon's socket is untouched
