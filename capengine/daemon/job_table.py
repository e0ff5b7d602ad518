"""The daemon's job table: one JSON file per job under `<data dir>/jobs/`, so that a job interrupted by a
shutdown (or lost in a crash) can be resumed after a restart (`capengine daemon --resume-interrupted`).

A record is written when the job starts ("running") and when each attempt ends. A record still "running"
when the daemon starts means the previous daemon died mid-job; it is treated like a shutdown interruption.
The job's checkpoint lives beside it in the host's CheckpointStore, under the same id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Literal

import attrs

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


class JobTable:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

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
