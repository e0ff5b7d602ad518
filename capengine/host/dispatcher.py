"""The pure-Python half of `spacedrive_call`: a call as Python values in, an envelope out.

request -> manifest -> schema -> library -> canonical path -> decide -> rate limit -> handler. Shared by the
wasm glue (session.py), the daemon and the tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from capengine.host.envelope import OK, CallRecord, ErrorCode, error_envelope
from capengine.host.job_run import JobRun
from capengine.host.libraries import LibraryCatalog
from capengine.host.manifests import Extension
from capengine.host.operations.registry import CallContext, OperationError, Registry
from capengine.host.rate_limiter import RateLimiter
from capengine.policy import paths
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request

log = logging.getLogger("capengine.guest")


@attrs.frozen
class ActivePolicies:
    """What decides calls, swapped as one unit on reload: the policy set and the rate limits it declares."""

    policy_set: PolicySet
    limiter: RateLimiter | None = None


class Dispatcher:
    """Decides and executes calls. `active` is a callable so that a hot reload swaps the set atomically:
    each call reads it once and is decided (and rate-limited) entirely under that set."""

    def __init__(self, active: Callable[[], ActivePolicies], registry: Registry, catalog: LibraryCatalog,
                 data_dir: Path, on_call: Callable[[CallRecord], None] | None = None,
                 job: JobRun | None = None) -> None:
        self.active, self.registry, self.catalog = active, registry, catalog
        self.data_dir, self.on_call, self.job = data_dir, on_call, job

    def dispatch(self, ext: Extension, method: str, library_id: str, payload: dict) -> dict:
        start = time.perf_counter_ns()
        active = self.active()
        record = dict(extension=ext.id, operation=method, library=library_id, path="", decided=False,
                      allowed=False, rules=(), errors=(), args={}, revision=active.policy_set.revision)
        envelope = self._dispatch(active, ext, method, library_id, payload, record)
        err = envelope.get("error") or {}
        rec = CallRecord(**record, code=err.get("code", OK), message=err.get("message", ""),
                         duration_us=(time.perf_counter_ns() - start) // 1000)
        if self.on_call is not None and not self._absorbed(rec):
            self.on_call(rec)
        return envelope

    def _absorbed(self, rec: CallRecord) -> bool:
        """Cheap lifecycle calls (job.progress, ...) are counted by the job run, not logged one by one."""
        if self.job is None:
            return False
        op = self.registry.get(rec.operation)
        return op is not None and op.aggregate and self.job.absorb(rec)

    def _dispatch(self, active: ActivePolicies, ext: Extension, method: str, library_id: str, payload: dict,
                  record: dict) -> dict:
        op = self.registry.get(method)
        if op is None:
            return error_envelope(ErrorCode.UNKNOWN_OPERATION, f"no operation named {method!r}")
        if not ext.declares(method):
            return error_envelope(ErrorCode.PERMISSION_DENIED, f"{method} is not declared in the manifest of {ext.id}",
                                  "manifest")
        try:
            op.validate(payload)
        except OperationError as exc:
            return error_envelope(exc.code, exc.message)
        library = None
        if library_id:
            library = self.catalog.get(library_id)
            if library is None:
                return error_envelope(ErrorCode.NOT_FOUND, f"no library {library_id}")
        elif op.needs_library:
            return error_envelope(ErrorCode.LIBRARY_REQUIRED, f"{method} needs a library id")
        args = payload
        if op.path_field is not None:
            args = dict(payload)  # the handler gets the canonical path the policy judged
            try:
                args[op.path_field] = paths.canonical_path(payload[op.path_field])
            except paths.PathError as exc:
                return error_envelope(ErrorCode.INVALID_ARGUMENT, f"{op.path_field}: {exc}")
            record["path"] = args[op.path_field]
        request = Request(ext.id, method, record["path"], library_id, op.policy_args(args))
        decision = active.policy_set.decide(request)
        record.update(decided=True, allowed=decision.allowed, rules=decision.rules,
                      args=active.policy_set.args_seen(request.args),
                      errors=tuple(f"{e.rule}: {e.message}" for e in decision.errors))
        if not decision.allowed:
            return error_envelope(ErrorCode.PERMISSION_DENIED, decision.message,
                                  decision.rules[0] if decision.rules else None)
        if active.limiter is not None:
            wait, limit = active.limiter.acquire(ext.id, method)
            if limit is not None:
                return error_envelope(ErrorCode.RATE_LIMITED, f"rate limit {limit} reached; retry in {wait:.3f} s",
                                      limit, retry_after_ms=max(1, round(wait * 1000)))
        try:
            result = op.handler(CallContext(ext.id, library, self.data_dir, self.job), args)
        except OperationError as exc:
            return error_envelope(exc.code, exc.message)
        except Exception:  # a handler bug must not trap the guest or leak internals into its memory
            log.exception("operation %s failed", method)
            return error_envelope(ErrorCode.INTERNAL, f"{method} failed inside the host; see the host log")
        return {"ok": True, "result": result}
