"""One run of a job as the host sees it while it executes: progress, counters, warnings, the interrupt flag,
and the aggregation that keeps cheap lifecycle calls out of the decision log.

The guest reaches it through the job.* operations (operations/job.py); the daemon reads `snapshot()` for
jobs.status and sets the interrupt flag for jobs.cancel and shutdown. The same run id across attempts (a resume)
finds the same checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

from capengine.host.checkpoints import CheckpointStore, new_run_id
from capengine.host.envelope import OK, CallRecord

MAX_WARNINGS = 100
MAX_MESSAGE = 256


@attrs.define
class _Aggregate:
    """Calls of one operation absorbed since the first one (which went to the log with its rules)."""

    first: CallRecord
    count: int = 0
    duration_us: int = 0


@attrs.define(eq=False)
class JobRun:
    extension: str
    job: str
    checkpoints: CheckpointStore
    run_id: str = attrs.field(factory=new_run_id)
    on_change: Callable[[JobRun], None] | None = None  # progress/metrics changed (the CLI's progress bar)
    progress: float = 0.0
    message: str = ""
    items: int = 0
    bytes: int = 0
    warnings: list[str] = attrs.field(factory=list)
    dropped_warnings: int = 0
    checkpoints_saved: int = 0
    started: float = attrs.field(factory=time.time)
    _interrupt: threading.Event = attrs.field(factory=threading.Event)
    _aggregates: dict[str, _Aggregate] = attrs.field(factory=dict)
    _summaries: list[CallRecord] = attrs.field(factory=list)  # of aggregates closed before the end

    # interruption ------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Ask the guest to stop: job.interrupted (and every lifecycle answer) says so from now on."""
        self._interrupt.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    # what the guest reports ----------------------------------------------------------------------------
    def set_progress(self, progress: float, message: str | None) -> None:
        self.progress = min(max(float(progress), 0.0), 1.0)
        if message is not None:
            self.message = message[:MAX_MESSAGE]
        self._changed()

    def add_metrics(self, items: int, nbytes: int) -> None:
        self.items += items
        self.bytes += nbytes
        self._changed()

    def warn(self, message: str) -> int:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.dropped_warnings += 1
        return len(self.warnings) + self.dropped_warnings

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def snapshot(self) -> dict:
        return {"run_id": self.run_id, "extension": self.extension, "job": self.job, "progress": self.progress,
                "message": self.message, "items": self.items, "bytes": self.bytes,
                "warnings": list(self.warnings), "dropped_warnings": self.dropped_warnings,
                "checkpoints": self.checkpoints_saved, "interrupt_requested": self.interrupted}

    # decision-log aggregation ------------------------------------------------------------------------
    def absorb(self, record: CallRecord) -> bool:
        """True when `record` (an allowed, successful lifecycle call) is folded into a count instead of logged.
        The first call of each operation, and any call decided differently from it (other rules, another
        policy revision, an error), is logged as usual; `flush` logs one summary per operation at the end."""
        if record.code != OK:
            return False
        agg = self._aggregates.get(record.operation)
        if agg is None or (agg.first.rules, agg.first.revision) != (record.rules, record.revision):
            summary = self._flush_one(record.operation)
            if summary is not None:
                self._summaries.append(summary)
            self._aggregates[record.operation] = _Aggregate(record)
            return False
        agg.count += 1
        agg.duration_us += record.duration_us
        return True

    def _flush_one(self, operation: str) -> CallRecord | None:
        agg = self._aggregates.pop(operation, None)
        if agg is None or agg.count == 0:
            return None
        return attrs.evolve(agg.first, message=f"{agg.count} further allowed call(s) aggregated",
                            duration_us=agg.duration_us, args={})

    def flush(self) -> list[CallRecord]:
        """One summary record per operation with absorbed calls (their count and total duration)."""
        summaries, self._summaries = self._summaries, []
        return summaries + [r for r in (self._flush_one(op) for op in list(self._aggregates)) if r is not None]
