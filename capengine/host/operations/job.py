"""job.*: the running job's lifecycle, as operations (so policies decide them and the decision log sees them).

progress, metrics, warnings and the interrupt flag live on the `JobRun` of the call; checkpoints go to the
`CheckpointStore` under the run's id, so a resumed run (same id) finds them with job.state. Every answer but
job.state carries `interrupted`, so a job that reports progress learns of a cancel without an extra call.
progress/metrics/interrupted/checkpoint calls are aggregated in the decision log (job_run.JobRun.absorb).
"""

from __future__ import annotations

import logging
from typing import Literal

from capengine.host.checkpoints import CheckpointError
from capengine.host.envelope import ErrorCode
from capengine.host.job_run import JobRun
from capengine.host.operations.registry import (
    CallContext,
    Handler,
    Operation,
    OperationError,
    Registry,
    load_schema,
)

log = logging.getLogger("capengine.host.operations.job")


def _run(ctx: CallContext) -> JobRun:
    if ctx.job is None:  # the host always runs guests with a JobRun; this guards direct callers
        raise OperationError(ErrorCode.INVALID_ARGUMENT, "job.* operations need a running job")
    return ctx.job


def progress(ctx: CallContext, args: dict) -> dict:
    run = _run(ctx)
    run.set_progress(args["progress"], args.get("message"))
    return {"interrupted": run.interrupted}


def metrics(ctx: CallContext, args: dict) -> dict:
    run = _run(ctx)
    run.add_metrics(args.get("items", 0), args.get("bytes", 0))
    return {"items": run.items, "bytes": run.bytes, "interrupted": run.interrupted}


def interrupted(ctx: CallContext, args: dict) -> dict:
    return {"interrupted": _run(ctx).interrupted}


def warn(ctx: CallContext, args: dict) -> dict:
    run = _run(ctx)
    return {"warnings": run.warn(args["message"]), "interrupted": run.interrupted}


def checkpoint(ctx: CallContext, args: dict) -> dict:
    run = _run(ctx)
    try:
        size = run.checkpoints.save(run.extension, run.run_id, args["state"])
    except CheckpointError as exc:
        code = ErrorCode.RESOURCE_EXHAUSTED if exc.exhausted else ErrorCode.INVALID_ARGUMENT
        raise OperationError(code, exc.message) from None
    run.checkpoints_saved += 1
    return {"size": size, "interrupted": run.interrupted}


def state(ctx: CallContext, args: dict) -> dict:
    run = _run(ctx)
    try:
        found, saved = run.checkpoints.load(run.extension, run.run_id)
    except CheckpointError as exc:  # details (a host path) go to the host log, not to the guest
        log.error("%s/%s run %s: %s", run.extension, run.job, run.run_id, exc.message)
        raise OperationError(ErrorCode.INTERNAL, "the checkpoint of this run is unreadable; see the host log") from None
    return {"resumed": found, "state": saved}


_OPERATIONS: tuple[tuple[str, Literal["query", "action"], Handler, str, bool, tuple[str, ...]], ...] = (
    ("job.progress", "action", progress, "Report the fraction done (0..1) and what the job is doing.", True, ()),
    ("job.metrics", "action", metrics, "Add to the job's item and byte counters.", True, ()),
    ("job.interrupted", "query", interrupted, "Whether the host asks the job to stop (cancel, shutdown).",
     True, ()),
    ("job.warn", "action", warn, "Record a warning in the job's status.", False, ()),
    ("job.checkpoint", "action", checkpoint, "Persist the job's state; a resumed run starts from it.", True,
     ("state",)),
    ("job.state", "query", state, "The run's last checkpoint, if it is being resumed.", False, ()),
)


def register(registry: Registry) -> None:
    for name, kind, handler, description, aggregate, hidden in _OPERATIONS:
        registry.register(Operation(name, kind, description, load_schema(name), handler, path_field=None,
                                    needs_library=False, hidden_args=hidden, aggregate=aggregate))
