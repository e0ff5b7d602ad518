"""Adversarial review of the daemon under reload races, real signals and stalled workers.

- A worker SIGSTOPped (idle or busy) or SIGKILLed during a reload's prepare: it is killed (its job fails as a
  dead worker's does), the reload is refused everywhere, and the daemon retries it by itself, with backoff,
  once the pool is whole again: the pool converges on the set on disk without an operator.
- The policy directory holding what no reload can read whole: a FIFO swapped in for a policy file between the
  walk and the read, a sparse file of a terabyte, a `current` symlink that loops. Each reload is refused with
  an error naming the file, in bounded time and memory; the daemon, its reloader and watcher stay up; a start
  on such a directory is refused with a clear message, never a traceback.
- A second daemon on the same data directory (another socket): refused, naming the directory and the pid that
  holds it (before: it started, a second decision-log writer appended to and repaired the first's log, and
  `--resume-interrupted` re-ran jobs the first was still running). SIGKILL frees the directory at once.
- Real daemons with worker processes under signals: a SIGHUP storm while policies change and workers are
  SIGKILLed converges on the set on disk; SIGTERM while a reload waits on a stopped worker exits cleanly and
  leaves no worker; SIGKILL of the daemon mid-reload, then a restart, serves the set on disk.
- A replacement worker that hangs while it starts (before: the maintainer held the reload lock for the 120 s
  start-up bound, so every reload waited that long, again after each attempt): reloads go through at once.
- Whatever is at the socket path: a stale socket (kill -9) is replaced, but a regular file, a symlink or a
  directory there is never deleted (before: connect() to a non-socket fails like a stale socket, and the
  file was unlinked): the start is refused, naming it.
- Concurrent `policies.reload` calls while a reload waits on a stopped worker: health and the other control
  methods still answer (before: each waiting call held one of the 4 control threads for up to 60 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from daemon_helpers import DaemonProcess, make_setup
from helpers import policy_yaml, write
from test_daemon_workers import gone, run, setup, wait_for

from capengine.daemon import policy_source
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


def test_a_removal_accepted_for_a_reload_refused_by_a_stalled_worker_is_carried_by_its_retry_only(tmp_path, started):
    """accept_removals was given for that content: the automatic retry of the same content carries it (or it
    would be refused for the removal and never converge); different content on disk by then does not."""
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    assert daemon.reload()["reloaded"] is True
    with_q = daemon.status.revision
    pool.prepare_timeout = 1.0
    os.kill(pool.live()[0].proc.pid, signal.SIGSTOP)
    (daemon.config.policies / "q.yaml").unlink()
    assert daemon.reload(accept_removals=True)["reloaded"] is False
    wait_for(lambda: daemon.status.revision != with_q and pool.state()["revisions"] == [daemon.status.revision], 60)
    assert daemon.status.files == 1

    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    assert daemon.reload()["reloaded"] is True
    os.kill(pool.live()[1].proc.pid, signal.SIGSTOP)
    (daemon.config.policies / "q.yaml").unlink()
    refused = daemon.reload(accept_removals=True)
    assert refused["reloaded"] is False
    write(daemon.config.policies, "r.yaml", policy_yaml("r", OTHER))  # other content before the retry runs
    wait_for(lambda: daemon.policies.reloads_failed >= 3 and daemon.status.retrying is None, 60)
    assert any("q.yaml" in e and "accept_removals" in e for e in daemon.status.last_error), daemon.status
    assert daemon.status.revision == with_q


def test_a_worker_alive_but_slow_to_load_the_set_is_not_killed_and_the_reload_not_retried(tmp_path, started,
                                                                                           monkeypatch):
    """Only a silent worker is taken for stopped or hung: one that says it is still loading (a set that takes
    longer than the timeout to compile) keeps running its job; the reload is refused, not retried (it would
    take as long again), and nothing is killed over and over."""
    marker = tmp_path / "slow-prepare"
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\nfrom capengine.policy import loader\nfast = loader.load_text_cached\n"
        "def slow(*args, **kwargs):\n"
        f"    if os.path.exists({str(marker)!r}):\n        time.sleep(4)\n"
        "    return fast(*args, **kwargs)\nloader.load_text_cached = slow\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH")))))
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    pool.prepare_timeout = 1.0
    pids = pool.state()["pids"]
    marker.touch()
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    outcome = daemon.reload()
    assert outcome["reloaded"] is False and "still loading" in outcome["errors"][0], outcome
    assert daemon.status.retrying is None and pool.state()["pids"] == pids and pool.restarts == 0
    marker.unlink()
    pool.prepare_timeout = 60.0
    assert daemon.reload()["reloaded"] is True and pool.state()["pids"] == pids


READ = {"extension": "com.example.reader", "job": "go"}


def refused_start(dirs: dict[str, Path]) -> str:
    """Start a daemon that must refuse: its stderr (exit status 1, no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "capengine", "daemon", "--policies", str(dirs["policies"]),
                           "--extensions", str(dirs["extensions"]), "--data-dir", str(dirs["data"]),
                           "--socket", str(dirs["socket"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_a_fifo_swapped_in_between_the_walk_and_the_read_is_refused_not_waited_on(tmp_path, monkeypatch, started):
    """The walk skips FIFOs, but a file can become one after it was listed (`mkfifo x; mv x allow.yaml`): the
    read must not block on it (before: the reloader hung in open() for ever, every later reload with it)."""
    daemon = started(setup(tmp_path, policy_yaml("p", PING)))
    fifo = daemon.config.policies / "later.yaml"
    os.mkfifo(fifo)
    listed = policy_source.walk
    monkeypatch.setattr(policy_source, "walk", lambda root: [*listed(root), "later.yaml"])  # the walk's view
    outcome: dict = {}
    reloader = threading.Thread(target=lambda: outcome.update(daemon.reload()), daemon=True)
    reloader.start()
    reloader.join(30)
    if reloader.is_alive():  # unblock the stuck open() so the test ends
        with open(fifo, "wb"):
            pass
    assert not reloader.is_alive(), "the reload blocked on a FIFO"
    assert outcome["reloaded"] is False and "later.yaml" in outcome["errors"][0], outcome
    assert "not a regular file" in outcome["errors"][0], outcome


def test_files_flipping_between_a_fifo_and_a_policy_under_a_sighup_storm_never_hang_reloads(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0.01").wait_ready()
    allow = dirs["policies"] / "allow.yaml"
    text = allow.read_text()
    stop = threading.Event()

    def flip() -> None:
        staged, fifo = dirs["policies"] / ".staged", dirs["policies"] / ".fifo"
        while not stop.is_set():
            os.mkfifo(fifo)
            os.replace(fifo, allow)
            staged.write_text(text)
            os.replace(staged, allow)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            d.signal(signal.SIGHUP)
            time.sleep(0.005)
    finally:
        stop.set()
        flipper.join()
    try:
        assert allow.is_file()
        outcome = d.call("policies.reload", timeout=60)["result"]
        assert outcome["reloaded"] is True, outcome
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert all(state["alive"] for state in d.result("health")["threads"].values())
        assert d.stop()[0] == 0
    finally:
        d.kill()


def test_a_terabyte_sparse_policy_file_is_refused_by_name_in_bounded_memory(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs).wait_ready()
    try:
        revision = d.result("policies.status")["revision"]
        with (dirs["policies"] / "huge.yaml").open("wb") as f:
            f.truncate(1 << 40)
        outcome = d.call("policies.reload", timeout=60)["result"]
        assert outcome["reloaded"] is False and outcome["revision"] == revision, outcome
        assert any("huge.yaml" in e and "larger than" in e for e in outcome["errors"]), outcome
        assert "internal error" not in " ".join(outcome["errors"]), outcome
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert d.stop()[0] == 0
    finally:
        d.kill()
    message = refused_start(dirs)
    assert "huge.yaml" in message and "larger than" in message, message


def test_a_current_symlink_that_loops_is_refused_clearly_and_the_watcher_stays_up(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0.05").wait_ready()
    loop = dirs["policies"] / "current"
    try:
        loop.symlink_to("current")
        outcome = d.call("policies.reload", timeout=60)["result"]
        assert outcome["reloaded"] is False, outcome
        assert "current" in outcome["errors"][0] and "internal error" not in outcome["errors"][0], outcome
        time.sleep(1)  # the watcher checks the directory's identity every 0.05 s
        threads = d.result("health")["threads"]
        assert threads["watcher"]["alive"] and threads["watcher"]["restarts"] == 0, threads
        assert "Traceback" not in d.stderr()
        assert d.stop()[0] == 0
    finally:
        d.kill()
    message = refused_start(dirs)
    assert "current" in message and "symbolic links" in message, message


def test_a_second_daemon_on_the_same_data_dir_is_refused_and_a_killed_one_frees_it(tmp_path):
    dirs = make_setup(tmp_path)
    first = DaemonProcess(dirs).wait_ready()
    try:
        other = {**dirs, "socket": tmp_path / "other.sock"}
        message = refused_start(other)
        assert "data directory" in message and str(dirs["data"]) in message and str(first.proc.pid) in message
        assert not other["socket"].exists()
        assert first.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
        assert dirs["socket"].exists()  # stale, after kill -9
        again = DaemonProcess(other).wait_ready()  # the lock died with the process; a stale socket elsewhere
        try:
            assert again.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
            stale = DaemonProcess(dirs)  # the stale socket of the killed one, but the directory is taken
            assert stale.proc.wait(120) == 1 and "data directory" in stale.stderr(), stale.stderr()
            assert again.stop()[0] == 0
        finally:
            again.kill()
        restarted = DaemonProcess(dirs).wait_ready()  # the stale socket file is replaced
        assert restarted.stop()[0] == 0
    finally:
        first.kill()


def revision_on_disk(policies: Path) -> str:
    from capengine.policy.check import run_check

    outcome = run_check([policies])
    assert outcome.policy_set is not None
    return outcome.policy_set.revision


def converged(d: DaemonProcess, revision: str, workers: int = 2) -> bool:
    state = d.result("health")
    return (state["policy"]["revision"] == revision and state["workers"]["alive"] == workers
            and state["workers"]["revisions"] == [revision])


def test_a_sighup_storm_while_policies_change_and_workers_are_killed_converges_on_the_set_on_disk(tmp_path):
    import random

    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0", "--max-jobs", "4").wait_ready()
    stop = threading.Event()
    answers: list[dict] = []

    def jobs() -> None:
        while not stop.is_set():
            answers.append(d.call("jobs.run", READ, timeout=120))

    def edits() -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            write(dirs["policies"], f"extra{i % 4}.yaml",
                  policy_yaml(f"extra{i % 4}", f"- {{id: r{i % 4}, effect: allow, operations: [vdfs.stat],\n"
                              f"   condition: 'path.under(\"/d{i}\")'}}\n"))  # the same rule ids: nothing lost
            time.sleep(0.05)

    def kills() -> None:
        while not stop.wait(random.uniform(0.2, 0.6)):
            pids = d.result("health")["workers"]["pids"]
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)

    threads = [threading.Thread(target=f) for f in (jobs, jobs, edits, kills)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            d.signal(signal.SIGHUP)
            time.sleep(0.003)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    try:
        assert not any(t.is_alive() for t in threads)
        for answer in answers:  # every job answered: completed, or failed because its worker was killed
            assert "result" in answer, answer
            job = answer["result"]
            assert job["status"] == "completed" or "worker process running the job died" in job["error"], job
            assert all(c["code"] in ("PERMISSION_DENIED", "OUTCOME_UNKNOWN") for c in job["calls"]), job
        final = revision_on_disk(dirs["policies"])
        d.signal(signal.SIGHUP)  # nothing else: a reload refused for a killed worker is retried by the daemon
        deadline = time.monotonic() + 90
        while not converged(d, final):
            assert time.monotonic() < deadline, (json.dumps(d.result("health")), d.stderr()[-3000:])
            time.sleep(0.2)
        assert all(state["alive"] for state in d.result("health")["threads"].values())
        assert d.stop()[0] == 0
    finally:
        d.kill()


def worker_pids(d: DaemonProcess) -> list[int]:
    return d.result("health")["workers"]["pids"]


def test_sigterm_while_a_reload_waits_on_a_stopped_worker_exits_cleanly_and_leaves_no_worker(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0").wait_ready()
    pids = worker_pids(d)
    try:
        os.kill(pids[0], signal.SIGSTOP)  # its prepare stays unanswered: the reload waits (up to 120 s)
        write(dirs["policies"], "more.yaml", policy_yaml("more", OTHER))
        d.signal(signal.SIGHUP)
        time.sleep(1.0)
        started = time.monotonic()
        code, err = d.stop(60)
        assert code == 0 and time.monotonic() - started < 30, err
        assert "Traceback" not in err, err
        assert not dirs["socket"].exists()
        for pid in pids:
            wait_for(lambda pid=pid: gone(pid), 10)
    finally:
        d.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigkill_of_the_daemon_mid_reload_then_a_restart_serves_the_set_on_disk(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0").wait_ready()
    pids = worker_pids(d)
    try:
        os.kill(pids[1], signal.SIGSTOP)
        write(dirs["policies"], "more.yaml", policy_yaml("more", OTHER))
        d.signal(signal.SIGHUP)
        time.sleep(1.0)
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
        for pid in pids:  # no worker outlives the daemon, the stopped one included
            wait_for(lambda pid=pid: gone(pid), 10)
    finally:
        d.kill()
    again = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0").wait_ready()
    try:
        assert converged(again, revision_on_disk(dirs["policies"]))
        assert again.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert again.stop()[0] == 0
    finally:
        again.kill()


def test_a_replacement_worker_hanging_at_start_never_holds_up_a_reload(tmp_path, started, monkeypatch):
    marker = tmp_path / "hang-new-workers"
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import os, time\nif os.path.exists({str(marker)!r}):\n"
                                           "    time.sleep(3600)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH")))))
    daemon = started(setup(tmp_path, policy_yaml("p", PING), workers=2))
    pool = daemon.pool
    assert pool is not None
    v1 = daemon.status.revision
    marker.touch()  # from now on a new worker never says it is ready
    victim = pool.live()[0]
    os.kill(victim.proc.pid, signal.SIGKILL)
    wait_for(lambda: pool.state()["restarts"] == 1)
    time.sleep(0.5)  # the maintainer is waiting for the replacement now
    write(daemon.config.policies, "q.yaml", policy_yaml("q", OTHER))
    outcome = daemon.policies.reload(timeout=30)
    assert outcome["reloaded"] is True and outcome["revision"] != v1, outcome
    assert pool.state()["revisions"] == [outcome["revision"]] and pool.state()["alive"] == 1
    assert run(daemon.config.socket, "com.example.burst")["status"] == "completed"
    marker.unlink()  # the hung one is killed at its start-up bound; its replacement starts on the new revision
    pool.startup_timeout = 1.0
    wait_for(lambda: pool.state()["alive"] == 2, 180)
    assert pool.state()["revisions"] == [outcome["revision"]]


def test_a_file_at_the_socket_path_is_never_deleted_as_if_it_were_a_stale_socket(tmp_path):
    dirs = make_setup(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for what, make in (("regular file", lambda p: p.write_text("keep me")),
                       ("symlink", lambda p: p.symlink_to(precious)),
                       ("directory", lambda p: p.mkdir())):
        sock = tmp_path / f"taken-{what.replace(' ', '-')}.sock"
        make(sock)
        message = refused_start({**dirs, "socket": sock})
        assert str(sock) in message and "not a socket" in message, (what, message)
        assert sock.exists() or sock.is_symlink(), what
    assert precious.read_text() == "keep me"


def test_reload_calls_waiting_on_a_stuck_reload_leave_the_control_methods_answering(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--workers", "2", "--watch-interval", "0").wait_ready()
    pids = worker_pids(d)
    try:
        os.kill(pids[0], signal.SIGSTOP)  # the reload waits for its answer (120 s)
        write(dirs["policies"], "more.yaml", policy_yaml("more", OTHER))
        with ThreadPoolExecutor(8) as callers:
            waiting = [callers.submit(d.call, "policies.reload", None, 180) for _ in range(8)]
            time.sleep(1.0)
            for method in ("health", "policies.status", "jobs.list"):
                assert "result" in call(dirs["socket"], method, timeout=10), method
            for future in waiting:
                assert "result" in future.result(), future.result()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGKILL)
        d.kill()


def test_daemons_started_at_once_on_one_socket_leave_exactly_one_serving_and_none_orphaned(tmp_path):
    """Each has its own data directory; all find the socket free (or stale) at once. Before the socket's lock,
    a later unlink could leave an earlier daemon running with its socket file gone (unreachable, an orphan)."""
    import shutil

    dirs = make_setup(tmp_path / "a")
    sock = tmp_path / "shared.sock"
    racers = []
    for i in range(4):
        data = tmp_path / f"data{i}"
        shutil.copytree(dirs["data"], data)
        racers.append(DaemonProcess({**dirs, "data": data, "socket": sock}))
    try:
        deadline = time.monotonic() + 180
        while sum(r.proc.poll() is None for r in racers) > 1 or not sock.exists():
            assert time.monotonic() < deadline, [r.stderr()[-500:] for r in racers]
            time.sleep(0.1)
        [winner] = [r for r in racers if r.proc.poll() is None]
        for loser in racers:
            if loser is not winner:
                assert loser.proc.returncode == 1 and "another daemon" in loser.stderr(), loser.stderr()
        assert winner.wait_ready().result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert winner.stop()[0] == 0
    finally:
        for r in racers:
            r.kill()
