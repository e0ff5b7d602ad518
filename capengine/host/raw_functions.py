"""Host functions defined through wasmtime's raw ("unchecked") C callback instead of wasmtime-py's generic
trampoline.

The generic trampoline converts every argument and result through `Val` objects and allocates ValTypes per
call; for the ABI's all-i32 functions that is most of a host call's cost. The unchecked callback receives
the arguments as one array of raw values and writes the result into its first slot, so a call costs a
ctypes read per argument. This uses wasmtime-py's `_bindings` (its ctypes declarations of the C API) and its
`Caller`, both private, so the wasmtime dependency is pinned to one major version (pyproject.toml).

A Python exception inside a function becomes a trap of the guest (never a crash of the host); the ABI's
functions catch their own errors, so this is a last line of defence.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime._func import Caller

log = logging.getLogger("capengine.host.raw_functions")

HostFunction = Callable[..., int | None]  # (caller, *i32 args) -> i32 result, or None for no result


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(env: int | None) -> None:
    """The callbacks live as long as their Runtime (it keeps them), so there is nothing to free."""


def _trap(message: str) -> int:
    trap = wasmtime.Trap(message)._consume()
    return int(ctypes.cast(trap, ctypes.c_void_p).value or 0)


def define(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType, params: int,
           returns: bool, func: HostFunction, keep: list[Any]) -> None:
    """Define `module.name` in `linker` as `func(caller, *args)` over i32 arguments. `keep` receives the
    ctypes callback, which must stay alive as long as the linker's modules may run."""

    def callback(env: int | None, caller_ptr: Any, values: Any, count: int) -> int:
        caller = Caller(caller_ptr)
        try:
            result = func(caller, *[values[i].i32 for i in range(params)])
            if returns:
                values[0].i32 = ctypes.c_int32(result if result is not None else 0).value
            return 0
        except BaseException:  # noqa: BLE001 - a host bug must end the job, not the process
            log.exception("host function %s.%s failed", module, name)
            return _trap(f"host function {name} failed; see the host log")
        finally:
            caller._invalidate()

    raw = ffi.wasmtime_func_unchecked_callback_t(callback)
    keep.append(raw)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), ctypes.create_string_buffer(module_bytes), len(module_bytes),
        ctypes.create_string_buffer(name_bytes), len(name_bytes), ty.ptr(), raw, None, _no_finalizer)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
