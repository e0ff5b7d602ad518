"""The wasm half of `spacedrive_call`: the host functions of the ABI (docs/abi.md) over one instance's memory.
The host never calls into guest code during a call: the guest passes an output buffer (`spacedrive_call_into`)
and gets the envelope in it when it fits; otherwise (or with `spacedrive_call`) it asks for the envelope's
size, allocates, and fetches it with `spacedrive_result`.

The session knows nothing of policies: it hands each decoded call to a `CallHandler` (the Dispatcher).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Protocol

import attrs
import wasmtime

from capengine.host import guest_memory, raw_functions, safe_text
from capengine.host.deadline import DEFAULT_SECONDS, Deadline
from capengine.host.envelope import FAULT_RANGE, FAULT_TOO_LARGE, ErrorCode, encode_envelope, error_envelope
from capengine.host.host_errors import HostErrors
from capengine.host.manifests import Extension

log = logging.getLogger("capengine.guest")
_FAULT_NAMES = {guest_memory.FAULT_RANGE: FAULT_RANGE, guest_memory.FAULT_TOO_LARGE: FAULT_TOO_LARGE}
_INTERNAL = encode_envelope(error_envelope(ErrorCode.INTERNAL, "host error; see the host log"))


class CallHandler(Protocol):
    def reply(self, ext: Extension, method: str, library_id: str, payload: dict[str, Any],
              deadline: Deadline | None, errors: HostErrors | None) -> bytes: ...

    def reject(self, ext: Extension, method: str, library_id: str, code: str, message: str,
               duration_us: int = 0) -> None: ...


@attrs.frozen
class BridgeLimits:
    max_request: int = 1024 * 1024
    max_json_depth: int = 64
    max_log_line: int = 4096
    max_log_lines: int = 1000  # per job; further lines are counted, not stored


@attrs.define
class GuestSession:
    """The ABI's host functions for one instance. Holds the last envelope and the job's input.

    `deadline` is the job's: every host call gets it, so a long host call ends when the job's CPU time (or
    the host, shutting down) says so."""

    extension: Extension
    dispatcher: CallHandler
    limits: BridgeLimits
    input: bytes = b"{}"
    memory: wasmtime.Memory | None = None  # set by attach() once the instance exists; saves a lookup per call
    held: bytes = b""
    logs: list[tuple[int, str]] = attrs.field(factory=list)
    dropped_logs: int = 0
    host_errors: HostErrors = attrs.field(factory=HostErrors)
    deadline: Deadline = attrs.field(factory=lambda: Deadline.after(DEFAULT_SECONDS))

    _addresses: tuple[int, int] | None = None  # (store context, memory handle) for guest_memory.View

    def attach(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        """The instance exists: every later call reaches its memory without a lookup."""
        self.memory = memory
        self._addresses = (raw_functions.context_address(store), raw_functions.memory_address(memory))

    def _view(self, caller: Any) -> guest_memory.View:
        """Linear memory for this call; `caller` is the raw caller pointer of the running host call."""
        if self._addresses is not None:
            return guest_memory.View(*self._addresses)
        memory = raw_functions.export(caller, "memory")  # in a start function there is no instance yet
        if not isinstance(memory, wasmtime.Memory):
            raise guest_memory.AbiFault(guest_memory.FAULT_RANGE, "the module exports no memory")
        return guest_memory.View(raw_functions.caller_context_address(caller), raw_functions.memory_address(memory))

    def call(self, caller: Any, method_ptr: int, method_len: int, library_ptr: int, payload_ptr: int,
             payload_len: int) -> int:
        """`spacedrive_call`: the envelope is held for `spacedrive_result`."""
        return self.call_into(caller, method_ptr, method_len, library_ptr, payload_ptr, payload_len, 0, 0)

    def call_into(self, caller: Any, method_ptr: int, method_len: int, library_ptr: int,
                  payload_ptr: int, payload_len: int, out_ptr: int, out_cap: int) -> int:
        """`spacedrive_call_into`: `spacedrive_call` that also copies the envelope to [out_ptr, out_ptr + out_cap)
        when it fits, saving the guest its second host call. The output range is checked with the request
        ranges, before anything is decided or run: a call the guest cannot receive is never made."""
        self.held = b""
        start = time.perf_counter_ns()
        raw_method = b""
        try:
            view = self._view(caller)
            raw_method = view.read(method_ptr, method_len, 256)
            raw_library = b"" if guest_memory.u32(library_ptr) == 0 else view.read(library_ptr, 16, 16)
            raw_payload = view.read(payload_ptr, payload_len, self.limits.max_request)
            out_cap = guest_memory.u32(out_cap)
            view.check(out_ptr, out_cap)
        except guest_memory.AbiFault as fault:
            self._reject(raw_method, "", _FAULT_NAMES[fault.code], str(fault), start)
            return fault.code
        except Exception as exc:  # noqa: BLE001 - never let a host bug become an uncontrolled trap
            self._reject(raw_method, "", FAULT_RANGE, "host error; see the host log", start)
            return self._internal("spacedrive_call", exc)
        try:
            self.held = held = self._reply(raw_method, raw_library, raw_payload, start)
        except Exception as exc:  # noqa: BLE001 - the dispatcher records what it can; this is the last net
            self.held = held = _INTERNAL
            self._internal("spacedrive_call", exc)
        if len(held) <= out_cap:
            # No guest code ran and the host grew no memory since the range was checked: the View is valid.
            view.write(out_ptr, held)
        return len(held)

    def _reply(self, raw_method: bytes, raw_library: bytes, raw_payload: bytes, start: int) -> bytes:
        library = str(uuid.UUID(bytes=raw_library)) if raw_library else ""
        try:
            method = guest_memory.decode_text(raw_method, "method")
            payload = guest_memory.parse_payload(raw_payload, self.limits.max_json_depth)
        except guest_memory.PayloadError as exc:
            self._reject(raw_method, library, ErrorCode.INVALID_ARGUMENT, str(exc), start)
            return encode_envelope(error_envelope(ErrorCode.INVALID_ARGUMENT, str(exc)))
        return self.dispatcher.reply(self.extension, method, library, payload, self.deadline, self.host_errors)

    def _reject(self, raw_method: bytes, library: str, code: str, message: str, start: int) -> None:
        try:
            self.dispatcher.reject(self.extension, raw_method.decode("utf-8", "backslashreplace"), library, code,
                                   message, (time.perf_counter_ns() - start) // 1000)
        except Exception as exc:  # noqa: BLE001 - recording must not change what the guest gets
            self._internal("recording a refused call", exc)

    def _copy_out(self, caller: Any, data: bytes, out_ptr: int, out_cap: int) -> int:
        try:
            if guest_memory.u32(out_cap) >= len(data):
                self._view(caller).write(out_ptr, data)
        except guest_memory.AbiFault as fault:
            return fault.code
        except Exception as exc:  # noqa: BLE001
            return self._internal("copying out", exc)
        return len(data)

    def result(self, caller: Any, out_ptr: int, out_cap: int) -> int:
        return self._copy_out(caller, self.held, out_ptr, out_cap)

    def input_(self, caller: Any, out_ptr: int, out_cap: int) -> int:
        return self._copy_out(caller, self.input, out_ptr, out_cap)

    def log(self, caller: Any, level: int, ptr: int, length: int) -> None:
        """Guest text is escaped (safe_text) before it is stored or logged: no forged lines, no ANSI codes."""
        try:
            cap = self.limits.max_log_line
            raw = self._view(caller).read(ptr, min(guest_memory.u32(length), cap), cap)
        except guest_memory.AbiFault:
            raw = b"<log message outside linear memory>"
        except Exception as exc:  # noqa: BLE001
            self._internal("spacedrive_log", exc)
            return
        if len(self.logs) >= self.limits.max_log_lines:
            self.dropped_logs += 1
            return
        level = min(max(level, 0), 3)
        text = safe_text.escape(raw.decode("utf-8", "replace"))[:self.limits.max_log_line]
        self.logs.append((level, text))
        log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[level], "[%s] %s",
                self.extension.id, text)

    def _internal(self, where: str, exc: BaseException) -> int:
        self.host_errors.add(where, exc)
        return guest_memory.FAULT_RANGE
