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
import os
import re
import time
from pathlib import Path
from typing import Literal

import attrs

log = logging.getLogger("capengine.daemon.job_table")
Status = Literal["running", "completed", "interrupted", "failed"]
_ID = re.compile(r"^[0-9a-f]{8,64}$")


@attrs.define
class JobRecord:
    id: str
    extension: str
    job: str
    input: dict
    status: Status = "running"
    interrupted_by: str = ""  # "cancel" (an operator's choice: resumed only on request) or "shutdown"
    attempts: int = 1
    started: float = attrs.field(factory=time.time)
    finished: float | None = None
    error: str = ""
    progress: float = 0.0
    message: str = ""
    items: int = 0  # over all attempts
    bytes: int = 0
    warnings: list[str] = attrs.field(factory=list)

    def public(self) -> dict:
        return attrs.asdict(self)


class JobTable:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.directory / f"{job_id}.json"

    def save(self, record: JobRecord) -> None:
        """Atomic (temp + rename); a failure is logged, never raised into the job it describes."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._path(record.id)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record.public(), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
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
