"""The wasm half of `spacedrive_call`: the four host functions of the ABI (docs/abi.md) over one instance's
memory. The host never calls into guest code during a call: the guest asks for the envelope's size,
allocates, and fetches it with `spacedrive_result`.

The session knows nothing of policies: it hands each decoded call to a `CallHandler` (the Dispatcher).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Protocol

import attrs
import wasmtime

from capengine.host import guest_memory
from capengine.host.envelope import ErrorCode, error_envelope
from capengine.host.manifests import Extension

log = logging.getLogger("capengine.guest")
# Compact, "ok" first (the C bindings test the prefix). Built once: json.dumps with options builds an encoder
# per call.
_ENVELOPE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class CallHandler(Protocol):
    def dispatch(self, ext: Extension, method: str, library_id: str, payload: dict[str, Any]) -> dict[str, Any]: ...


@attrs.frozen
class BridgeLimits:
    max_request: int = 1024 * 1024
    max_json_depth: int = 64
    max_log_line: int = 4096
    max_log_lines: int = 1000  # per job; further lines are counted, not stored


@attrs.define
class GuestSession:
    """The ABI's host functions for one instance. Holds the last envelope and the job's input."""

    extension: Extension
    dispatcher: CallHandler
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
            self.held = _ENVELOPE.encode(error_envelope(ErrorCode.INTERNAL, "host error; see the host log")).encode()
            self._internal(exc)
        return len(self.held)

    def _envelope(self, raw_method: bytes, raw_library: bytes, raw_payload: bytes) -> dict:
        try:
            method = guest_memory.decode_text(raw_method, "method")
            payload = guest_memory.parse_payload(raw_payload, self.limits.max_json_depth)
        except guest_memory.PayloadError as exc:
            return error_envelope(ErrorCode.INVALID_ARGUMENT, str(exc))
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
