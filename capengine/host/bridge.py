"""The `spacedrive_call` bridge: guest memory -> request -> decide -> operation -> envelope -> guest memory.

`Dispatcher` is the pure-Python half (a call as Python values in, an envelope out), shared by the wasm glue,
the daemon and the tests. `GuestSession` is the wasm half: the four host functions of the ABI (docs/abi.md)
over one instance's memory. The host never calls into guest code during a call: the guest asks for the
envelope's size, allocates, and fetches it with `spacedrive_result`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import wasmtime

from capengine.host import guest_memory
from capengine.host.libraries import LibraryCatalog
from capengine.host.manifests import Extension
from capengine.host.operations.registry import CallContext, OperationError, Registry
from capengine.host.rate_limiter import RateLimiter
from capengine.policy import paths
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request

log = logging.getLogger("capengine.guest")
# Compact, "ok" first (the C bindings test the prefix). Built once: json.dumps with options builds an encoder
# per call.
_ENVELOPE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@attrs.frozen
class CallRecord:
    """One call as `capengine run` prints it and the decision log stores it (never raw args or secrets)."""

    extension: str
    operation: str
    library: str
    path: str
    decided: bool  # False when the call failed before the policy saw it (unknown op, bad input, ...)
    allowed: bool
    rules: tuple[str, ...]
    errors: tuple[str, ...]  # condition evaluation errors, "<rule>: <message>"
    args: dict  # the args the policy set's conditions can read (secrets are hidden from policies altogether)
    code: str  # "OK" or the envelope error code
    message: str
    revision: str
    duration_us: int


@attrs.frozen
class BridgeLimits:
    max_request: int = 1024 * 1024
    max_json_depth: int = 64
    max_log_line: int = 4096
    max_log_lines: int = 1000  # per job; further lines are counted, not stored


def error_envelope(code: str, message: str, rule: str | None = None, **extra: object) -> dict:
    return {"ok": False, "error": {"code": code, "message": message, "rule": rule, **extra}}


@attrs.frozen
class ActivePolicies:
    """What decides calls, swapped as one unit on reload: the policy set and the rate limits it declares."""

    policy_set: PolicySet
    limiter: RateLimiter | None = None


class Dispatcher:
    """Decides and executes calls. `active` is a callable so that a hot reload swaps the set atomically:
    each call reads it once and is decided (and rate-limited) entirely under that set."""

    def __init__(self, active: Callable[[], ActivePolicies], registry: Registry, catalog: LibraryCatalog,
                 data_dir: Path, on_call: Callable[[CallRecord], None] | None = None) -> None:
        self.active, self.registry, self.catalog = active, registry, catalog
        self.data_dir, self.on_call = data_dir, on_call

    def dispatch(self, ext: Extension, method: str, library_id: str, payload: dict) -> dict:
        start = time.perf_counter_ns()
        active = self.active()
        record = dict(extension=ext.id, operation=method, library=library_id, path="", decided=False,
                      allowed=False, rules=(), errors=(), args={}, revision=active.policy_set.revision)
        envelope = self._dispatch(active, ext, method, library_id, payload, record)
        err = envelope.get("error") or {}
        rec = CallRecord(**record, code=err.get("code", "OK"), message=err.get("message", ""),
                         duration_us=(time.perf_counter_ns() - start) // 1000)
        if self.on_call is not None:
            self.on_call(rec)
        return envelope

    def _dispatch(self, active: ActivePolicies, ext: Extension, method: str, library_id: str, payload: dict,
                  record: dict) -> dict:
        op = self.registry.get(method)
        if op is None:
            return error_envelope("UNKNOWN_OPERATION", f"no operation named {method!r}")
        if not ext.declares(method):
            return error_envelope("PERMISSION_DENIED", f"{method} is not declared in the manifest of {ext.id}",
                                  "manifest")
        try:
            op.validate(payload)
        except OperationError as exc:
            return error_envelope(exc.code, exc.message)
        library = None
        if library_id:
            library = self.catalog.get(library_id)
            if library is None:
                return error_envelope("NOT_FOUND", f"no library {library_id}")
        elif op.needs_library:
            return error_envelope("LIBRARY_REQUIRED", f"{method} needs a library id")
        args = payload
        if op.path_field is not None:
            args = dict(payload)  # the handler gets the canonical path the policy judged
            try:
                args[op.path_field] = paths.canonical_path(payload[op.path_field])
            except paths.PathError as exc:
                return error_envelope("INVALID_ARGUMENT", f"{op.path_field}: {exc}")
            record["path"] = args[op.path_field]
        request = Request(ext.id, method, record["path"], library_id, op.policy_args(args))
        decision = active.policy_set.decide(request)
        record.update(decided=True, allowed=decision.allowed, rules=decision.rules,
                      args=active.policy_set.args_seen(request.args),
                      errors=tuple(f"{e.rule}: {e.message}" for e in decision.errors))
        if not decision.allowed:
            return error_envelope("PERMISSION_DENIED", decision.message,
                                  decision.rules[0] if decision.rules else None)
        if active.limiter is not None:
            wait, limit = active.limiter.acquire(ext.id, method)
            if limit is not None:
                return error_envelope("RATE_LIMITED", f"rate limit {limit} reached; retry in {wait:.3f} s", limit,
                                      retry_after_ms=max(1, round(wait * 1000)))
        try:
            result = op.handler(CallContext(ext.id, library, self.data_dir), args)
        except OperationError as exc:
            return error_envelope(exc.code, exc.message)
        except Exception:  # a handler bug must not trap the guest or leak internals into its memory
            log.exception("operation %s failed", method)
            return error_envelope("INTERNAL", f"{method} failed inside the host; see the host log")
        return {"ok": True, "result": result}


@attrs.define
class GuestSession:
    """The ABI's host functions for one instance. Holds the last envelope and the job's input."""

    extension: Extension
    dispatcher: Dispatcher
    limits: BridgeLimits
    input: bytes = b"{}"
    memory: wasmtime.Memory | None = None  # set once the instance exists; saves a lookup per call
    held: bytes = b""
    logs: list[tuple[int, str]] = attrs.field(factory=list)
    dropped_logs: int = 0
    host_errors: list[str] = attrs.field(factory=list)

    def _memory(self, caller: wasmtime.Caller) -> wasmtime.Memory:
        if self.memory is not None:
            return self.memory
        memory = caller.get("memory")  # during instantiation (a start function) there is no instance yet
        if not isinstance(memory, wasmtime.Memory):
            raise guest_memory.AbiFault(guest_memory.FAULT_RANGE, "the module exports no memory")
        return memory

    def call(self, caller, method_ptr: int, method_len: int, library_ptr: int, payload_ptr: int,
             payload_len: int) -> int:
        self.held = b""
        try:
            view = guest_memory.View(self._memory(caller), caller)
            raw_method = view.read(method_ptr, method_len, 256)
            raw_library = b"" if guest_memory.u32(library_ptr) == 0 else view.read(library_ptr, 16, 16)
            raw_payload = view.read(payload_ptr, payload_len, self.limits.max_request)
        except guest_memory.AbiFault as fault:
            return fault.code
        except Exception as exc:  # noqa: BLE001 - never let a host bug become an uncontrolled trap
            return self._internal(exc)
        try:
            envelope = self._envelope(raw_method, raw_library, raw_payload)
            self.held = _ENVELOPE.encode(envelope).encode()
        except Exception as exc:  # noqa: BLE001
            self.held = _ENVELOPE.encode(error_envelope("INTERNAL", "host error; see the host log")).encode()
            self._internal(exc)
        return len(self.held)

    def _envelope(self, raw_method: bytes, raw_library: bytes, raw_payload: bytes) -> dict:
        try:
            method = guest_memory.decode_text(raw_method, "method")
            payload = guest_memory.parse_payload(raw_payload, self.limits.max_json_depth)
        except guest_memory.PayloadError as exc:
            return error_envelope("INVALID_ARGUMENT", str(exc))
        library = str(uuid.UUID(bytes=raw_library)) if raw_library else ""
        return self.dispatcher.dispatch(self.extension, method, library, payload)

    def _copy_out(self, caller, data: bytes, out_ptr: int, out_cap: int) -> int:
        try:
            if guest_memory.u32(out_cap) >= len(data):
                guest_memory.View(self._memory(caller), caller).write(out_ptr, data)
        except guest_memory.AbiFault as fault:
            return fault.code
        except Exception as exc:  # noqa: BLE001
            return self._internal(exc)
        return len(data)

    def result(self, caller, out_ptr: int, out_cap: int) -> int:
        return self._copy_out(caller, self.held, out_ptr, out_cap)

    def input_(self, caller, out_ptr: int, out_cap: int) -> int:
        return self._copy_out(caller, self.input, out_ptr, out_cap)

    def log(self, caller, level: int, ptr: int, length: int) -> None:
        try:
            cap = self.limits.max_log_line
            raw = guest_memory.View(self._memory(caller), caller).read(ptr, min(guest_memory.u32(length), cap), cap)
        except guest_memory.AbiFault:
            raw = b"<log message outside linear memory>"
        except Exception as exc:  # noqa: BLE001
            self._internal(exc)
            return
        if len(self.logs) >= self.limits.max_log_lines:
            self.dropped_logs += 1
            return
        level = min(max(level, 0), 3)
        text = raw.decode("utf-8", "replace")
        self.logs.append((level, text))
        log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[level], "[%s] %s",
                self.extension.id, text)

    def _internal(self, exc: BaseException) -> int:
        self.host_errors.append(f"{type(exc).__name__}: {exc}")
        log.error("host function failed for %s", self.extension.id, exc_info=exc)
        return guest_memory.FAULT_RANGE
