"""Adversarial review of the daemon under reload races, real signals and stalled workers.

- A worker SIGSTOPped (idle or busy) or SIGKILLed during a reload's prepare: it is killed (its job fails as a
  dead worker's does), the reload is refused everywhere, and the daemon retries it by itself, with backoff,
  once the pool is whole again: the pool converges on the set on disk without an operator.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from helpers import policy_yaml, write
from test_daemon_workers import gone, run, setup, wait_for

from capengine.daemon.server import call

PING = "- {id: ping, effect: allow, operations: [test.ping]}\n"
OTHER = "- {id: other, effect: allow, operations: [vdfs.stat]}\n"


def health(sock: Path) -> dict:
    reply = call(sock, "health")
    assert "result" in reply, reply
    return reply["result"]


def test_a_worker_stopped_while_idle_is_killed_at_the_prepare_timeout_and_the_reload_retried(tmp_path, started):
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    pool.prepare_timeout = 1.0
    v1 = daemon.status.revision
    stalled = pool.live()[1]
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    outcome = daemon.reload()
    assert outcome["reloaded"] is False and f"worker {stalled.proc.pid}: no answer in 1 s" in outcome["errors"][0]
    assert "tried again automatically" in outcome["errors"][0], outcome
    wait_for(lambda: gone(stalled.proc.pid), 10)  # killed: a stopped process is no worker
    assert "prepare" in (stalled.killed_because or "")
    retrying = health(daemon.config.socket)["policy"]["reload_retry"]
    assert retrying is None or "attempt" in retrying
    # nobody touches anything: the replacement starts on v1, then the retry switches every worker
    wait_for(lambda: daemon.status.revision != v1 and pool.state()["revisions"] == [daemon.status.revision], 60)
    assert daemon.host.policy_set.revision == daemon.status.revision and pool.state()["alive"] == 2
    state = health(daemon.config.socket)
    assert state["policy"]["reload_retry"] is None and state["policy"]["last_reload_error"] == []
    assert run(daemon.config.socket, "com.example.burst")["status"] == "completed"


def test_a_worker_stopped_mid_job_fails_its_job_at_the_prepare_timeout_and_the_reload_converges(tmp_path,
                                                                                                 started):
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    pool.prepare_timeout = 1.0
    v1 = daemon.status.revision
    answer: dict = {}
    client = threading.Thread(target=lambda: answer.update(run(daemon.config.socket, "com.example.spinner")))
    client.start()
    wait_for(lambda: pool.state()["running"])
    [(pid, _)] = pool.state()["running"].items()
    os.kill(int(pid), signal.SIGSTOP)
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    assert daemon.reload()["reloaded"] is False
    client.join(30)
    assert not client.is_alive() and answer["status"] == "failed", answer
    assert "died" in answer["error"] and "did not answer" in answer["error"], answer
    wait_for(lambda: daemon.status.revision != v1 and pool.state()["revisions"] == [daemon.status.revision], 60)
    assert pool.state()["alive"] == 2


def test_a_worker_killed_during_the_prepare_makes_a_reload_that_is_retried(tmp_path, started):
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    pool.prepare_timeout = 30.0
    v1 = daemon.status.revision
    victim = pool.live()[0]
    os.kill(victim.proc.pid, signal.SIGSTOP)  # holds the prepare unanswered until it is killed
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    outcome: dict = {}
    reloader = threading.Thread(target=lambda: outcome.update(daemon.reload()))
    reloader.start()
    wait_for(lambda: pool._reload_lock.locked())
    os.kill(victim.proc.pid, signal.SIGKILL)
    reloader.join(30)
    assert outcome["reloaded"] is False and f"worker {victim.proc.pid}: died" in outcome["errors"][0], outcome
    wait_for(lambda: daemon.status.revision != v1 and pool.state()["revisions"] == [daemon.status.revision], 60)
    assert daemon.policies.reloads_ok >= 1
