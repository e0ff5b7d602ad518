"""The daemon's job table: one JSON file per job under `<data dir>/jobs/`, so that a job interrupted by a
shutdown (or lost in a crash) can be resumed after a restart (`capengine daemon --resume-interrupted`).

A record is written when the job starts ("running") and when each attempt ends. A record still "running"
when the daemon starts means the previous daemon died mid-job; it is treated like a shutdown interruption.
The job's checkpoint lives beside it in the host's CheckpointStore, under the same id.

Finished records are not kept forever: at 100 jobs/s one file per job is millions a day, and the daemon
reads every record at start to find the ones to resume. `prune` keeps the newest `keep` records and removes
older finished ones (completed, failed, cancelled) beyond that or past `max_age`, with their checkpoints;
a record a restart would resume ("running", or interrupted by a shutdown) is never removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Container
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

import attrs

from capengine.host.checkpoints import CheckpointStore
from capengine.host.data_dir import write_atomic

log = logging.getLogger("capengine.daemon.job_table")
Status = Literal["running", "completed", "interrupted", "failed"]
_ID = re.compile(r"^[0-9a-f]{8,64}$")


_str = attrs.validators.instance_of(str)
_count = [attrs.validators.instance_of(int), attrs.validators.ge(0)]
_number = attrs.validators.instance_of((int, float))


def _not_bool(_: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a number, not a boolean")


@attrs.define
class JobRecord:
    """Validated: records are read back from disk, where anything may have been written."""

    id: str = attrs.field(validator=attrs.validators.matches_re(_ID))
    extension: str = attrs.field(validator=_str)
    job: str = attrs.field(validator=_str)
    input: dict = attrs.field(validator=attrs.validators.instance_of(dict))
    status: Status = attrs.field(default="running", validator=attrs.validators.in_(
        ("running", "completed", "interrupted", "failed")))
    # "cancel" (an operator's choice: resumed only on request) or "shutdown"
    interrupted_by: str = attrs.field(default="", validator=attrs.validators.in_(("", "cancel", "shutdown")))
    attempts: int = attrs.field(default=1, validator=[_not_bool, attrs.validators.instance_of(int),
                                                      attrs.validators.ge(1)])
    started: float = attrs.field(factory=time.time, validator=[_not_bool, _number])
    finished: float | None = attrs.field(default=None, validator=attrs.validators.optional([_not_bool, _number]))
    error: str = attrs.field(default="", validator=_str)
    progress: float = attrs.field(default=0.0, validator=[_not_bool, _number])
    message: str = attrs.field(default="", validator=_str)
    items: int = attrs.field(default=0, validator=[_not_bool, *_count])  # over all attempts
    bytes: int = attrs.field(default=0, validator=[_not_bool, *_count])
    warnings: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(
        _str, attrs.validators.instance_of(list)))

    def public(self) -> dict:
        return attrs.asdict(self)


DEFAULT_KEEP = 10_000
DEFAULT_MAX_AGE = 30 * 86400.0


@attrs.frozen
class Retention:
    """How many job records to keep at least (the newest), and how long a finished one is kept at most."""

    keep: int = attrs.field(default=DEFAULT_KEEP, validator=[_not_bool, attrs.validators.instance_of(int),
                                                             attrs.validators.ge(0)])
    max_age: float = attrs.field(default=DEFAULT_MAX_AGE, validator=[_not_bool, _number, attrs.validators.gt(0)])

    @property
    def every(self) -> int:
        """Finished jobs between two prunes: each prune reads only the records beyond `keep`, so pruning every
        tenth of `keep` keeps both the table and the work per prune bounded."""
        return max(100, self.keep // 10)


def _removable(record: JobRecord) -> bool:
    """Finished for good: not running, and not a shutdown's interruption (which a restart resumes)."""
    return record.status in ("completed", "failed") or (record.status == "interrupted"
                                                         and record.interrupted_by == "cancel")


class JobTable:
    def __init__(self, directory: Path, retention: Retention | None = None,
                 checkpoints: CheckpointStore | None = None) -> None:
        self.directory = Path(directory)
        self.retention = retention or Retention()
        self.checkpoints = checkpoints
        self._finished_since_prune = 0

    def due(self, record: JobRecord) -> bool:
        """Count a finished record; True when enough have finished since the last prune that one is due."""
        if record.status == "running":
            return False
        self._finished_since_prune += 1
        return self._finished_since_prune >= self.retention.every

    def prune(self, busy: Container[str] = (), lock: AbstractContextManager | None = None,
              now: float | None = None) -> int:
        """Remove finished records older than the newest `keep` or than `max_age` (by the time of their last
        write), and their checkpoints; returns how many. `busy`: ids of jobs running now, never touched; `lock`:
        the lock under which jobs start and resume (and `busy` changes), held for each record from reading it to
        removing it, so a job cannot be resumed from a record being removed. Errors are logged: a prune never
        fails a job."""
        self._finished_since_prune = 0
        lock = lock or contextlib.nullcontext()
        cutoff = (time.time() if now is None else now) - self.retention.max_age
        try:
            with os.scandir(self.directory) as entries:
                found = []
                for entry in entries:
                    if entry.name.endswith(".json") and _ID.fullmatch(entry.name[:-5]):
                        with contextlib.suppress(FileNotFoundError):
                            found.append((entry.stat().st_mtime, entry.name[:-5]))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot prune the job records in %s: %s", self.directory, exc)
            return 0
        found.sort(reverse=True)
        removed = 0
        for index, (mtime, job_id) in enumerate(found):
            if index < self.retention.keep and mtime >= cutoff:
                continue
            with lock:
                if job_id in busy:
                    continue
                record = self.get(job_id)
                if record is None or not _removable(record):
                    continue  # unreadable records stay for an operator to look at; resumable ones for the restart
                try:  # the checkpoint first: a crash in between leaves a finished record the next prune removes
                    if self.checkpoints is not None:
                        self.checkpoints.delete_run(job_id)
                    self._path(job_id).unlink()
                except OSError as exc:
                    log.error("cannot remove the job record %s: %s", job_id, exc)
                    continue
            removed += 1
        if removed:
            log.info("removed %d finished job record(s) beyond the newest %d or older than %g days", removed,
                     self.retention.keep, self.retention.max_age / 86400)
        return removed

    def _path(self, job_id: str) -> Path:
        if not _ID.fullmatch(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.directory / f"{job_id}.json"

    def save(self, record: JobRecord) -> None:
        """Atomic and durable (temp + fsync + rename + fsync of the directory); a failure is logged, never raised
        into the job it describes."""
        path = self._path(record.id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, json.dumps(record.public()).encode("utf-8"))
        except (OSError, TypeError, ValueError) as exc:
            log.error("cannot save job %s: %s", record.id, exc)

    def get(self, job_id: str) -> JobRecord | None:
        try:
            data = json.loads(self._path(job_id).read_text(encoding="utf-8"))
            return JobRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.error("job record %s unreadable: %s", job_id, exc)
            return None

    def all(self) -> list[JobRecord]:
        records = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.glob("*.json")):
                record = self.get(path.stem)
                if record is not None:
                    records.append(record)
        return records

    def to_resume_after_restart(self) -> list[JobRecord]:
        """Jobs a shutdown interrupted, and jobs whose daemon died while they ran. Not cancelled ones."""
        return [r for r in self.all()
                if r.status == "running" or (r.status == "interrupted" and r.interrupted_by == "shutdown")]
