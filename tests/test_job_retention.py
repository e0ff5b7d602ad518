"""Finished job records do not pile up: the newest `keep` stay, older finished ones (and those past the maximum
age) go with their checkpoints; running, shutdown-interrupted, busy and unreadable records always stay. A real
daemon prunes at start and after every `Retention.every` finished jobs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, make_setup

from capengine.daemon.job_table import JobRecord, JobTable, Retention
from capengine.host.checkpoints import CheckpointStore

NOW = 2_000_000_000.0
DAY = 86400.0


def _table(tmp_path: Path, keep: int, max_age: float = 30 * DAY) -> tuple[JobTable, CheckpointStore]:
    store = CheckpointStore(tmp_path)
    return JobTable(tmp_path / "jobs", Retention(keep, max_age), store), store


def _add(table: JobTable, store: CheckpointStore, index: int, age: float, **fields) -> str:
    """A record written `age` seconds before NOW, with a checkpoint under its namespace."""
    job_id = f"{index:016x}"
    table.save(JobRecord(job_id, "com.example.app", "go", {}, **fields))
    os.utime(table.directory / f"{job_id}.json", (NOW - age, NOW - age))
    store.save("com.example.app", job_id, {"cursor": index})
    return job_id


def _ids(table: JobTable) -> set[str]:
    return {p.stem for p in table.directory.glob("*.json")}


def test_keeps_the_newest_and_removes_older_finished_records_with_their_checkpoints(tmp_path):
    table, store = _table(tmp_path, keep=3)
    ids = [_add(table, store, i, age=100 - i, status="completed", finished=NOW) for i in range(10)]
    assert table.prune(now=NOW) == 7
    assert _ids(table) == set(ids[-3:])  # the three written last
    for job_id in ids:
        assert store.load("com.example.app", job_id)[0] == (job_id in ids[-3:])


def test_records_a_restart_resumes_and_running_ones_are_never_removed(tmp_path):
    table, store = _table(tmp_path, keep=0, max_age=DAY)
    kept = [_add(table, store, 0, age=90 * DAY),  # "running": its daemon died mid-job
            _add(table, store, 1, age=90 * DAY, status="interrupted", interrupted_by="shutdown")]
    gone = [_add(table, store, 2, age=90 * DAY, status="interrupted", interrupted_by="cancel"),
            _add(table, store, 3, age=90 * DAY, status="failed", error="trap"),
            _add(table, store, 4, age=90 * DAY, status="completed")]
    busy = _add(table, store, 5, age=90 * DAY, status="completed")
    assert table.prune(busy={busy}, now=NOW) == 3
    assert _ids(table) == {*kept, busy}
    assert all(store.load("com.example.app", job_id)[0] for job_id in [*kept, busy])
    assert not any(store.load("com.example.app", job_id)[0] for job_id in gone)


def test_age_removes_finished_records_even_among_the_newest(tmp_path):
    table, store = _table(tmp_path, keep=100, max_age=7 * DAY)
    old = _add(table, store, 0, age=8 * DAY, status="completed")
    young = _add(table, store, 1, age=6 * DAY, status="completed")
    assert table.prune(now=NOW) == 1
    assert _ids(table) == {young} and old not in _ids(table)


def test_unreadable_and_foreign_files_stay(tmp_path):
    table, store = _table(tmp_path, keep=0)
    table.directory.mkdir(parents=True)
    damaged = table.directory / ("ab" * 8 + ".json")
    damaged.write_text('{"id": "abababab')  # cut short: for an operator to look at, not to delete
    foreign = table.directory / "notes.json"
    foreign.write_text("{}")
    (table.directory / ("cd" * 8 + ".json.tmp")).write_text("{}")
    for path in table.directory.iterdir():
        os.utime(path, (NOW - 90 * DAY, NOW - 90 * DAY))
    assert table.prune(now=NOW) == 0
    assert damaged.exists() and foreign.exists()


def test_a_missing_directory_prunes_nothing(tmp_path):
    assert JobTable(tmp_path / "none", Retention(0)).prune() == 0


def test_each_record_is_read_and_removed_under_the_callers_lock(tmp_path):
    """A resume takes the same lock and re-reads the record: it finds it whole or gone, never half-way."""
    table, store = _table(tmp_path, keep=0)
    ids = [_add(table, store, i, age=90 * DAY, status="failed") for i in range(5)]
    held: list[bool] = []

    class Lock:
        def __init__(self) -> None:
            self.inner = threading.Lock()

        def __enter__(self) -> None:
            self.inner.acquire()

        def __exit__(self, *exc: object) -> None:
            held.append(store.load("com.example.app", ids[len(held)])[0] is False)
            self.inner.release()

    lock = Lock()
    original = table.get
    table.get = lambda job_id: (pytest.fail("read outside the lock") if not lock.inner.locked()  # type: ignore
                                else original(job_id))
    assert table.prune(lock=lock, now=NOW) == 5
    assert len(held) == 5


@pytest.mark.parametrize("keep, days", [(-1, 30.0), (10, 0.0), (True, 30.0)])
def test_bad_retention_is_refused(keep, days):
    with pytest.raises((ValueError, TypeError)):
        Retention(keep, days * DAY)


def test_a_daemon_prunes_at_start_and_after_finished_jobs(tmp_path):
    dirs = make_setup(tmp_path)
    table, store = JobTable(dirs["data"] / "jobs"), CheckpointStore(dirs["data"])
    old = [_add(table, store, i, age=NOW - time.time() + 40 * DAY, status="completed") for i in range(20)]
    resumable = _add(table, store, 99, age=NOW - time.time() + 40 * DAY, status="interrupted",
                     interrupted_by="shutdown")
    daemon = DaemonProcess(dirs, "--keep-jobs", "100", "--keep-jobs-days", "30").wait_ready()
    try:
        deadline = time.monotonic() + 30
        while _ids(table) != {resumable} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ids(table) == {resumable}, "the start-up prune left finished records past the maximum age"
        assert not any(store.load("com.example.app", job_id)[0] for job_id in old)
        ran = [daemon.result("jobs.run", {"extension": "com.example.pinger", "job": "go"})["id"] for _ in range(200)]
        deadline = time.monotonic() + 30
        while len(_ids(table)) > 101 and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _ids(table)
        # the prune after the 200th finished job: the 100 newest finished + the resumable one
        assert resumable in left and len(left) == 101, len(left)
        assert set(ran[-50:]) <= left
    finally:
        daemon.stop()


def test_the_cli_refuses_a_negative_keep(tmp_path):
    dirs = make_setup(tmp_path)
    daemon = DaemonProcess(dirs, "--keep-jobs", "-5")
    daemon.proc.wait(60)
    code, err = daemon.stop()
    assert code != 0 and "keep" in err and "Traceback" not in err, err
