"""Host functions defined through wasmtime's raw ("unchecked") C callback instead of wasmtime-py's generic
trampoline, and the few C-API calls a host call makes, bound without releasing the GIL.

The generic trampoline converts every argument and result through `Val` objects and allocates ValTypes per
call; for the ABI's all-i32 functions that is most of a host call's cost. The unchecked callback receives
the arguments as one array of raw values and writes the result into its first slot. Measured per host call
(bench/bench_roundtrip.py): a ctypes callback that does nothing costs ~0.26 us; wrapping the caller in
wasmtime-py's `Caller` (one C call through a GIL-releasing ctypes binding, and its invalidation) ~1.6 us more,
and a list comprehension over the arguments ~0.75 us more. So a function here gets the raw caller pointer
(`export()` looks an export up through it, for the rare call made before the instance exists) and its
arguments read one by one.

The C functions a call needs on every invocation (memory base and size) are bound through `PyDLL`: the same
library, but a call keeps the GIL (~0.2 us instead of ~0.5 us); they do not block, so releasing it buys nothing.

This uses wasmtime-py's `_bindings`/`_ffi` (its ctypes declarations of the C API) and its `Caller`, all
private, so the wasmtime dependency is pinned to one major version (pyproject.toml).

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
from wasmtime._ffi import dll
from wasmtime._func import Caller

log = logging.getLogger("capengine.host.raw_functions")

HostFunction = Callable[..., int | None]  # (caller pointer, *i32 args) -> i32 result, or None for no result

_nogil = ctypes.PyDLL(dll._name)
memory_data_size = _nogil.wasmtime_memory_data_size  # (context, wasmtime_memory_t *) -> size_t
memory_data_size.restype, memory_data_size.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_void_p]
memory_data = _nogil.wasmtime_memory_data  # (context, wasmtime_memory_t *) -> uint8_t *
memory_data.restype, memory_data.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]


def context_address(store: wasmtime.Store) -> int:
    """The store's wasmtime_context_t as an address. A host call of that store may use it for the memory calls
    above: the caller's context is the same pointer (both are the store's `StoreContextMut`)."""
    return ctypes.cast(store._context(), ctypes.c_void_p).value or 0


def memory_address(memory: wasmtime.Memory) -> int:
    """The address of the memory's wasmtime_memory_t handle (it lives as long as the Memory object)."""
    return ctypes.addressof(memory._memory)


def export(caller_ptr: Any, name: str) -> object:
    """The calling instance's export `name`, looked up through the raw caller pointer of a running call."""
    caller = Caller(caller_ptr)
    try:
        return caller.get(name)
    finally:
        caller._invalidate()


def caller_context_address(caller_ptr: Any) -> int:
    return ctypes.cast(ffi.wasmtime_caller_context(caller_ptr), ctypes.c_void_p).value or 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(env: int | None) -> None:
    """The callbacks live as long as their Runtime (it keeps them), so there is nothing to free."""


def _trap(message: str) -> int:
    trap = wasmtime.Trap(message)._consume()
    return int(ctypes.cast(trap, ctypes.c_void_p).value or 0)


def _failed(module: str, name: str) -> int:
    log.exception("host function %s.%s failed", module, name)
    return _trap(f"host function {name} failed; see the host log")


def _callback(module: str, name: str, params: int, returns: bool, func: HostFunction) -> Callable[..., int]:
    """The C callback for `func`: arguments read one by one for the ABI's arities (an index per argument
    costs far less than a loop), generically for any other."""
    if returns and params == 2:
        def callback2(env: int | None, caller: Any, v: Any, count: int) -> int:
            try:
                v[0].i32 = func(caller, v[0].i32, v[1].i32) or 0
                return 0
            except BaseException:  # noqa: BLE001 - a host bug must end the job, not the process
                return _failed(module, name)
        return callback2
    if returns and params == 5:
        def callback5(env: int | None, caller: Any, v: Any, count: int) -> int:
            try:
                v[0].i32 = func(caller, v[0].i32, v[1].i32, v[2].i32, v[3].i32, v[4].i32) or 0
                return 0
            except BaseException:  # noqa: BLE001
                return _failed(module, name)
        return callback5
    if returns and params == 7:
        def callback7(env: int | None, caller: Any, v: Any, count: int) -> int:
            try:
                v[0].i32 = func(caller, v[0].i32, v[1].i32, v[2].i32, v[3].i32, v[4].i32, v[5].i32, v[6].i32) or 0
                return 0
            except BaseException:  # noqa: BLE001
                return _failed(module, name)
        return callback7

    def callback(env: int | None, caller: Any, v: Any, count: int) -> int:
        try:
            result = func(caller, *[v[i].i32 for i in range(params)])
            if returns:
                v[0].i32 = result or 0
            return 0
        except BaseException:  # noqa: BLE001
            return _failed(module, name)
    return callback


def define(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType, params: int,
           returns: bool, func: HostFunction, keep: list[Any]) -> None:
    """Define `module.name` in `linker` as `func(caller_ptr, *args)` over i32 arguments (a result outside i32
    wraps, as ctypes stores it). `caller_ptr` is valid only during the call (see `export`). `keep` receives the
    ctypes callback, which must stay alive as long as the linker's modules may run."""
    raw = ffi.wasmtime_func_unchecked_callback_t(_callback(module, name, params, returns, func))
    keep.append(raw)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), ctypes.create_string_buffer(module_bytes), len(module_bytes),
        ctypes.create_string_buffer(name_bytes), len(name_bytes), ty.ptr(), raw, None, _no_finalizer)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
