"""The pure-Python half of `spacedrive_call`: a call as Python values in, an envelope out.

request -> manifest -> schema -> library -> canonical path (spelled as on disk where the volume folds names)
-> decide -> rate limit -> handler (under the call's deadline). Shared by the wasm glue (session.py), the
daemon and the tests.

Every call is recorded (on_call) with the code the guest actually received: also a call refused before
dispatch (a payload that is not JSON, an ABI fault), and INTERNAL when the reply could not be encoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from capengine.host import safe_fs, safe_text
from capengine.host.deadline import DEFAULT_SECONDS, Deadline, DeadlineExceeded
from capengine.host.envelope import OK, CallRecord, ErrorCode, encode_envelope, error_envelope
from capengine.host.host_errors import HostErrors, log_once
from capengine.host.job_run import JobRun
from capengine.host.libraries import Library, LibraryCatalog
from capengine.host.manifests import Extension
from capengine.host.operations.registry import CallContext, OperationError, Registry
from capengine.host.rate_limiter import RateLimiter
from capengine.policy import paths
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request, RequestError

MAX_RECORDED_TEXT = 1024  # method names and messages in records: escaped, then cut


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
                 admit: Callable[[], str | None] | None = None, job: JobRun | None = None,
                 before_effect: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.active, self.registry, self.catalog = active, registry, catalog
        self.data_dir, self.on_call, self.admit, self.job = data_dir, on_call, admit, job
        # Told the record of an allowed action just before its handler runs (the daemon's worker processes send
        # it out, so a worker killed after the effect and before the record still leaves a trace of the call).
        self.before_effect = before_effect
        # The handler context of the last call: a job's calls share it (same namespace, library, deadline).
        self._context: CallContext | None = None

    def _call_context(self, namespace: str, library: Library | None, deadline: Deadline) -> CallContext:
        ctx = self._context
        if ctx is None or ctx.extension != namespace or ctx.library is not library or ctx.deadline is not deadline:
            ctx = self._context = CallContext(namespace, library, self.data_dir, deadline, self.job)
        return ctx

    def dispatch(self, ext: Extension, method: str, library_id: str, payload: dict,
                 deadline: Deadline | None = None) -> dict:
        """The envelope for one call (recorded). Callers that send the envelope on should use `reply`."""
        start = time.perf_counter_ns()
        envelope, record = self._decide_and_run(ext, method, library_id, payload, deadline, None)
        self._record(record, envelope, start)
        return envelope

    def reply(self, ext: Extension, method: str, library_id: str, payload: dict, deadline: Deadline | None,
              errors: HostErrors | None) -> bytes:
        """The encoded envelope for one call; recorded with the code in what is returned."""
        start = time.perf_counter_ns()
        envelope, record = self._decide_and_run(ext, method, library_id, payload, deadline, errors)
        try:
            encoded = encode_envelope(envelope)
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
            self._host_error(errors, f"encoding the reply of {safe_text.escape(method)[:100]}", exc)
            envelope = error_envelope(ErrorCode.INTERNAL, f"{method} produced a reply the host cannot encode; see "
                                                          "the host log")
            encoded = encode_envelope(envelope)
        self._record(record, envelope, start)
        return encoded

    def reject(self, ext: Extension, method: str, library_id: str, code: str, message: str,
               duration_us: int = 0) -> None:
        """Record a call refused before dispatch (bad payload, ABI fault) with the code the guest got."""
        if self.on_call is None:
            return
        record = self._blank(ext, method, library_id, self.active().policy_set.revision)
        self.on_call(CallRecord(**record, code=code, message=_printable(message), duration_us=duration_us))

    @staticmethod
    def _blank(ext: Extension, method: str, library_id: str, revision: str) -> dict[str, Any]:
        return dict(extension=ext.id, operation=_printable(method), library=library_id, path="", decided=False,
                    allowed=False, rules=(), errors=(), args={}, revision=revision)

    def _record(self, record: dict[str, Any], envelope: dict, start: int) -> None:
        if self.on_call is None:
            return
        err = envelope.get("error") or {}
        rec = CallRecord(**record, code=err.get("code", OK), message=_printable(err.get("message", "")),
                         duration_us=(time.perf_counter_ns() - start) // 1000)
        if not self._absorbed(rec):
            self.on_call(rec)

    def _absorbed(self, rec: CallRecord) -> bool:
        """Cheap lifecycle calls (job.progress, ...) are counted by the job run, not logged one by one."""
        if self.job is None:
            return False
        op = self.registry.get(rec.operation)
        return op is not None and op.aggregate and self.job.absorb(rec)

    @staticmethod
    def _host_error(errors: HostErrors | None, where: str, exc: BaseException) -> None:
        if errors is not None:
            errors.add(where, exc)
        else:
            log_once(where, exc)

    def _decide_and_run(self, ext: Extension, method: str, library_id: str, payload: dict,
                        deadline: Deadline | None, errors: HostErrors | None) -> tuple[dict, dict[str, Any]]:
        active = self.active()
        record = self._blank(ext, method, library_id, active.policy_set.revision)
        try:
            envelope = self._dispatch(active, ext, method, library_id, payload, record, deadline, errors)
        except Exception as exc:  # a host bug outside the handler (a policy, a path lookup): INTERNAL, recorded
            self._host_error(errors, f"deciding {safe_text.escape(method)[:100]}", exc)
            envelope = error_envelope(ErrorCode.INTERNAL, f"{method} failed inside the host; see the host log")
        return envelope, record

    def _dispatch(self, active: ActivePolicies, ext: Extension, method: str, library_id: str, payload: dict,
                  record: dict, deadline: Deadline | None, errors: HostErrors | None) -> dict:
        refusal = self.admit() if self.admit is not None else None
        if refusal is not None:  # e.g. the daemon's decision log cannot be written: no call without its record
            return error_envelope(ErrorCode.RESOURCE_EXHAUSTED, refusal)
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
                if library is not None and args[op.path_field]:
                    args[op.path_field] = safe_fs.spelled_path(library.root, args[op.path_field],
                                                               library.case_insensitive)
            except paths.PathError as exc:
                return error_envelope(ErrorCode.INVALID_ARGUMENT, f"{op.path_field}: {exc}")
            except safe_fs.FsError as exc:
                record["path"] = args[op.path_field]
                return error_envelope(ErrorCode(exc.code), exc.message)
            record["path"] = args[op.path_field]
        try:
            request = Request(ext.id, method, record["path"], library_id, op.policy_args(args))
        except RequestError as exc:  # e.g. an integer beyond uint64: no condition could judge it (fail closed)
            return error_envelope(ErrorCode.INVALID_ARGUMENT, str(exc))
        decision = active.policy_set.decide(request)
        record.update(decided=True, allowed=decision.allowed, rules=decision.rules,
                      args=active.policy_set.args_seen(request.args),
                      errors=tuple(f"{e.rule}: {e.message}" for e in decision.errors) if decision.errors else ())
        if not decision.allowed:
            return error_envelope(ErrorCode.PERMISSION_DENIED, decision.message,
                                  decision.rules[0] if decision.rules else None)
        if active.limiter is not None:
            wait, limit = active.limiter.acquire(ext.id, method, ext.namespace)
            if limit is not None:
                return error_envelope(ErrorCode.RATE_LIMITED, f"rate limit {limit} reached; retry in {wait:.3f} s",
                                      limit, retry_after_ms=max(1, round(wait * 1000)))
        deadline = deadline or Deadline.after(DEFAULT_SECONDS)
        if self.before_effect is not None and op.kind == "action" and not op.aggregate:
            self.before_effect(record)
        try:
            deadline.check(method)
            result = op.handler(self._call_context(ext.namespace, library, deadline), args)
        except OperationError as exc:
            return error_envelope(exc.code, exc.message)
        except DeadlineExceeded as exc:
            return error_envelope(ErrorCode.RESOURCE_EXHAUSTED, str(exc))
        except Exception as exc:  # a handler bug must not trap the guest or leak internals into its memory
            self._host_error(errors, f"operation {method}", exc)
            return error_envelope(ErrorCode.INTERNAL, f"{method} failed inside the host; see the host log")
        return {"ok": True, "result": result}


def _printable(text: str) -> str:
    """Guest-controlled text as it may reach a terminal or log: escaped (safe_text) and bounded."""
    escaped = safe_text.escape(text)
    return escaped if len(escaped) <= MAX_RECORDED_TEXT else escaped[:MAX_RECORDED_TEXT] + "..."
