"""Running extensions under wasmtime with CPU, memory and instance limits.

One Engine per process (per daemon), with epoch interruption driven by a ticker thread, and optional fuel.
Every job runs in a fresh Store and instance: nothing a job leaves in linear memory or globals reaches the
next job or another extension, and a trap, a host bug or an exhausted limit ends only that job.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import wasmtime

from capengine.errors import CapengineError
from capengine.host import raw_functions, safe_text
from capengine.host.deadline import Deadline
from capengine.host.manifests import Extension, IdentityError
from capengine.host.module_cache import ModuleCache, ModuleError, compile_module
from capengine.host.module_limits import ModuleLimits, read_regular
from capengine.host.session import BridgeLimits, CallHandler, GuestSession

log = logging.getLogger("capengine.host.runtime")
TICK_SECONDS = 0.01
WASM_PAGE = 65536
MAX_PREPARED = 64  # linked modules kept in memory (one per extension version in use)
JobStatus = Literal["completed", "interrupted", "failed"]
_STATUS: dict[int, JobStatus] = {0: "completed", 1: "interrupted", 2: "failed"}


MAX_CPU_SECONDS = 86_400.0  # a day: beyond it the epoch deadline's tick count stops meaning anything sane


class LimitsError(CapengineError, ValueError):
    """A Limits value that cannot be enforced (zero, negative, NaN, infinite, not a number)."""


def _count(minimum: int) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if type(value) is not int or value < minimum:
            raise LimitsError(f"Limits.{attribute.name} must be an integer >= {minimum}, not {value!r}")
    return check


def _seconds(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_CPU_SECONDS):
        raise LimitsError(f"Limits.{attribute.name} must be a number of seconds in (0, {MAX_CPU_SECONDS:g}], "
                          f"not {value!r}")


def _fuel(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (type(value) is not int or value <= 0):
        raise LimitsError(f"Limits.{attribute.name} must be None (no fuel metering) or an integer > 0, not {value!r}")


def _instance(kind: type) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, kind):
            raise LimitsError(f"Limits.{attribute.name} must be a {kind.__name__}, not {type(value).__name__}")
    return check


# WebAssembly proposals the ABI has no use for, switched off: each is attack surface, and some escape the
# limits above (a GC heap or exception objects live outside linear memory: with GC on, a guest had a second
# heap as large as its memory limit; a 64-bit or second memory is not what the i32 ABI addresses).
DISABLED_PROPOSALS = ("gc", "function_references", "exceptions", "threads", "memory64", "multi_memory",
                      "stack_switching", "custom_page_sizes", "component_model")


@attrs.frozen
class Limits:
    """Per-job limits; checked when built (LimitsError) because a zero, negative or NaN limit would either
    stop every job or, worse, silently remove the bound (a NaN deadline, fuel that never runs out)."""

    memory_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_count(1))
    table_elements: int = attrs.field(default=10_000, validator=_count(0))
    instances: int = attrs.field(default=4, validator=_count(1))
    tables: int = attrs.field(default=4, validator=_count(0))
    memories: int = attrs.field(default=1, validator=_count(1))
    # wall-clock bound per job, enforced by the epoch deadline
    cpu_seconds: float = attrs.field(default=10.0, validator=_seconds)
    fuel: int | None = attrs.field(default=None, validator=_fuel)  # optional instruction budget per job
    max_wasm_stack: int = attrs.field(default=512 * 1024, validator=_count(1))
    bridge: BridgeLimits = attrs.field(default=BridgeLimits(), validator=_instance(BridgeLimits))
    module: ModuleLimits = attrs.field(default=ModuleLimits(), validator=_instance(ModuleLimits))


@attrs.frozen
class JobResult:
    extension: str
    job: str
    status: JobStatus
    code: int | None  # the job's return value, None when it did not return
    error: str  # "" when completed; RESOURCE_EXHAUSTED/... with the reason otherwise
    logs: tuple[tuple[int, str], ...]


class Runtime:
    def __init__(self, limits: Limits = Limits(), cache_dir: Path | None = None) -> None:
        self.limits = limits
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = limits.fuel is not None
        config.max_wasm_stack = limits.max_wasm_stack
        for proposal in DISABLED_PROPOSALS:
            setattr(config, f"wasm_{proposal}", False)
        config.gc_support = False
        self.engine = wasmtime.Engine(config)
        # Everything above that changes the compiled code or what compiles, for the module cache's tag (Config
        # has no getters); the module limits too, so an entry compiled under looser caps is never loaded.
        self.engine_config = (f"machine={platform.machine()};epoch_interruption=1;consume_fuel="
                              f"{int(limits.fuel is not None)};max_wasm_stack={limits.max_wasm_stack};"
                              + "".join(f"{p}=0;" for p in DISABLED_PROPOSALS) + limits.module.describe())
        i32 = wasmtime.ValType.i32()
        # FuncTypes belong to this Engine (sharing one across engines aborts the process).
        self._types = {
            "spacedrive_call": wasmtime.FuncType([i32] * 5, [i32]),
            "spacedrive_call_into": wasmtime.FuncType([i32] * 7, [i32]),
            "spacedrive_result": wasmtime.FuncType([i32] * 2, [i32]),
            "spacedrive_input": wasmtime.FuncType([i32] * 2, [i32]),
            "spacedrive_log": wasmtime.FuncType([i32] * 3, []),
        }
        self.cache = (ModuleCache(self.engine, cache_dir, self.engine_config, limits.module)
                      if cache_dir is not None else None)
        self._linker = self._abi_linker()
        # module sha256 -> (linked module, its exports that ought to be () -> i32 but are not)
        self._prepared: OrderedDict[str, tuple[wasmtime.InstancePre, dict[str, str]]] = OrderedDict()
        self._prepared_lock = threading.Lock()
        self._stop = threading.Event()
        self._interrupting = False
        self._ticker = threading.Thread(target=self._tick, name="capengine-epoch", daemon=True)
        self._ticker.start()

    def _abi_linker(self) -> wasmtime.Linker:
        """One Linker for every job: the ABI's host functions find the running job's session through a
        thread-local (a job runs on one thread, and the guest calls the host on that thread), so nothing is
        rebuilt per job and a module is linked once (InstancePre)."""
        current = self._current = threading.local()

        def call(caller: Any, method_ptr: int, method_len: int, library_ptr: int, payload_ptr: int,
                 payload_len: int) -> int:
            session: GuestSession = current.session
            return session.call(caller, method_ptr, method_len, library_ptr, payload_ptr, payload_len)

        def call_into(caller: Any, method_ptr: int, method_len: int, library_ptr: int, payload_ptr: int,
                      payload_len: int, out_ptr: int, out_cap: int) -> int:
            session: GuestSession = current.session
            return session.call_into(caller, method_ptr, method_len, library_ptr, payload_ptr, payload_len, out_ptr,
                                     out_cap)

        def result(caller: Any, out_ptr: int, out_cap: int) -> int:
            session: GuestSession = current.session
            return session.result(caller, out_ptr, out_cap)

        def input_(caller: Any, out_ptr: int, out_cap: int) -> int:
            session: GuestSession = current.session
            return session.input_(caller, out_ptr, out_cap)

        def log_(caller: Any, level: int, ptr: int, length: int) -> None:
            session: GuestSession = current.session
            session.log(caller, level, ptr, length)

        linker = wasmtime.Linker(self.engine)
        self._callbacks: list[object] = []  # the raw callbacks must outlive every instance of the linker
        abi: tuple[tuple[str, raw_functions.HostFunction, int, bool], ...] = (
            ("spacedrive_call", call, 5, True), ("spacedrive_call_into", call_into, 7, True),
            ("spacedrive_result", result, 2, True),
            ("spacedrive_input", input_, 2, True), ("spacedrive_log", log_, 3, False))
        for name, handler, params, returns in abi:
            raw_functions.define(linker, "spacedrive", name, self._types[name], params, returns, handler,
                                 self._callbacks)
        return linker

    def prepare(self, ext: Extension) -> tuple[wasmtime.InstancePre, dict[str, str]]:
        """The extension's module compiled and linked, kept in memory by the digest it was vouched for (at
        most MAX_PREPARED modules): a job pays neither a file read, a hash, a cache check nor a link. The
        first use reads and verifies the file (load_module), so a module swapped on disk before it is never
        run; after it, the bytes that run are the ones verified, whatever happens to the file. Also returned:
        the module's entry points (plugin_init, execute_*) whose type is not () -> i32, with what they are."""
        digest = ext.module_sha256
        with self._prepared_lock:
            found = self._prepared.get(digest)
            if found is not None:
                self._prepared.move_to_end(digest)
                return found
        module = self.load_module(ext)
        self._check_imports(module, ext)
        pre = self._linker.instantiate_pre(module), _entry_problems(module)
        with self._prepared_lock:
            self._prepared[digest] = pre
            while len(self._prepared) > MAX_PREPARED:
                self._prepared.popitem(last=False)
        return pre

    def _check_imports(self, module: wasmtime.Module, ext: Extension) -> None:
        """ModuleError naming every import the host does not provide, or provides with another type, instead of
        the linker's first complaint."""
        problems = []
        for imp in module.imports:
            want = self._types.get(imp.name or "") if imp.module == "spacedrive" else None
            got, name = imp.type, _short(f"{imp.module}.{imp.name}")  # the guest's names: bounded, escaped later
            if want is None:
                problems.append(f"{name} ({_describe(got)})")
            elif not isinstance(got, wasmtime.FuncType) or (got.params, got.results) != (want.params, want.results):
                problems.append(f"{name} as {_describe(got)}, but the host's is {_describe(want)}")
        if problems:
            listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {len(problems) - MAX_LISTED} more"
                                                         if len(problems) > MAX_LISTED else "")
            raise ModuleError(f"{ext.module_path.name} imports {listed}: the host provides only the "
                              "spacedrive_* functions of docs/abi.md (no WASI, memories, tables or globals); "
                              "rebuild it against extensions/include")

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.engine.increment_epoch()

    def interrupt_all(self) -> None:
        """Stop every running job now (shutdown): push the engine's epoch past every job's deadline. Jobs
        started afterwards are refused."""
        self._interrupting = True
        for _ in range(self._deadline_ticks() + 1):
            self.engine.increment_epoch()

    def _deadline_ticks(self) -> int:
        return max(1, round(self.limits.cpu_seconds / TICK_SECONDS))

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_module(self, ext: Extension) -> wasmtime.Module:
        """Compile (or fetch from the cache) exactly the module whose digest `ext` was loaded and vouched for
        with: a file swapped on disk since is refused, not run under the old identity."""
        # a bounded regular file, no link out of its directory: a FIFO swapped in would block the job forever
        source = read_regular(ext.module_path, self.limits.module.max_bytes, "the module",
                              ext.directory)
        digest = hashlib.sha256(source).hexdigest()
        if digest != ext.module_sha256:
            raise IdentityError(f"{ext.module_path} changed since {ext.id} was loaded (sha256 {digest}, loaded "
                                f"{ext.module_sha256}); if that build is meant to run, vouch for it (capengine "
                                f"ext install --replace {ext.directory}) and load it again (restart the daemon)")
        is_wat, name = ext.module_path.suffix == ".wat", str(ext.module_path)
        if self.cache is not None:
            return self.cache.load(source, is_wat, digest, name)
        return compile_module(self.engine, source, is_wat, name, self.limits.module)

    def run_job(self, ext: Extension, job: str, dispatcher: CallHandler, input_json: bytes = b"{}") -> JobResult:
        session = GuestSession(ext, dispatcher, self.limits.bridge, input=input_json,
                               deadline=Deadline.after(self.limits.cpu_seconds, lambda: self._interrupting))
        self._current.session = session
        try:
            status, code, error = self._run(ext, job, session)
        finally:
            self._current.session = None
        error = safe_text.escape(error)  # may quote the module's own import and export names
        if session.host_errors:
            error = (error + "; " if error else "") + "host errors: " + "; ".join(session.host_errors)
        if session.dropped_logs:
            session.logs.append((2, f"{session.dropped_logs} further log lines dropped (limit "
                                    f"{self.limits.bridge.max_log_lines} per job)"))
        if status != "completed":
            log.warning("job %s/%s %s: %s", ext.id, job, status, error)
        return JobResult(ext.id, job, status, code, error, tuple(session.logs))

    def _run(self, ext: Extension, job: str, session: GuestSession) -> tuple[JobStatus, int | None, str]:
        if job not in ext.jobs:
            return "failed", None, f"job {job!r} is not declared in the manifest (jobs: {', '.join(ext.jobs)})"
        lim = self.limits
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=lim.memory_bytes, table_elements=lim.table_elements,
                         instances=lim.instances, tables=lim.tables, memories=lim.memories)
        if lim.fuel is not None:
            store.set_fuel(lim.fuel)
        if self._interrupting:
            return "interrupted", None, "the host is shutting down"
        memory = None
        try:
            pre, wrong = self.prepare(ext)
            for name in ("plugin_init", f"execute_{job}"):
                if name in wrong:
                    return "failed", None, (f"the module exports {name} as {wrong[name]}; it must be a "
                                            "function () -> i32")
            # The job's clock starts now: compiling (seconds for a large module's first job) is the host's work.
            store.set_epoch_deadline(self._deadline_ticks())  # before instantiation: a start function runs in it
            session.deadline = Deadline.after(lim.cpu_seconds, lambda: self._interrupting)
            # After the deadline is set: an interrupt_all from now on pushes the epoch past it, and one made while
            # the module compiled (the flag is set before the epoch moves) is seen here.
            if self._interrupting:
                return "interrupted", None, "the host is shutting down"
            instance = pre.instantiate(store)
            exports = instance.exports(store)
            memory = exports.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                return "failed", None, "the module does not export its memory as 'memory'"
            session.attach(store, memory)
            init = exports.get("plugin_init")
            if isinstance(init, wasmtime.Func):
                rc = init(store)
                if rc != 0:
                    return "failed", rc, f"plugin_init returned {rc}"
            entry = exports.get(f"execute_{job}")
            if not isinstance(entry, wasmtime.Func):
                return "failed", None, f"the module does not export execute_{job}"
            rc = entry(store)
        except wasmtime.Trap as trap:
            if self._interrupting and trap.trap_code == wasmtime.TrapCode.INTERRUPT:
                return "interrupted", None, "interrupted by host shutdown"
            return "failed", None, _trap_reason(trap, lim)
        except wasmtime.WasmtimeError as exc:
            return "failed", None, _limit_reason(str(exc), lim)
        except OSError as exc:
            return "failed", None, f"cannot read the module: {exc}"
        except (IdentityError, ModuleError) as exc:
            return "failed", None, str(exc)
        if not isinstance(rc, int) or rc not in _STATUS:
            return "failed", rc if isinstance(rc, int) else None, f"execute_{job} returned {rc!r}, not 0, 1 or 2"
        status = _STATUS[rc]
        error = "" if status == "completed" else f"execute_{job} returned {rc} ({status})"
        if status == "failed" and memory is not None and memory.data_len(store) + WASM_PAGE > lim.memory_bytes:
            error += f"; RESOURCE_EXHAUSTED: linear memory is at the {lim.memory_bytes}-byte limit"
        return status, rc, error


MAX_LISTED = 10  # import problems named in one error; the rest are counted


def _short(name: str) -> str:
    return name if len(name) <= 80 else name[:80] + "..."


def _describe(ty: object) -> str:
    if isinstance(ty, wasmtime.FuncType):
        params, results = " ".join(map(str, ty.params)), " ".join(map(str, ty.results))
        return f"a function ({params}) -> {'(' + results + ')' if len(ty.results) != 1 else results}"
    kind = type(ty).__name__.removesuffix("Type").lower()
    return f"a {kind}"


_I32 = wasmtime.ValType.i32()


def _entry_problems(module: wasmtime.Module) -> dict[str, str]:
    """plugin_init and execute_* exports that are not functions () -> i32 (a float 0.0 from plugin_init must not
    pass for success, nor a call with missing arguments be attempted), with what they are."""
    problems = {}
    for export in module.exports:
        if export.name == "plugin_init" or export.name.startswith("execute_"):
            ty = export.type
            if not isinstance(ty, wasmtime.FuncType) or ty.params or ty.results != [_I32]:
                problems[export.name] = _describe(ty)
    return problems


def _trap_reason(trap: wasmtime.Trap, lim: Limits) -> str:
    code = trap.trap_code
    if code == wasmtime.TrapCode.INTERRUPT:
        return f"RESOURCE_EXHAUSTED: CPU time limit of {lim.cpu_seconds:g} s reached (epoch deadline)"
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return f"RESOURCE_EXHAUSTED: fuel budget of {lim.fuel} exhausted"
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return f"RESOURCE_EXHAUSTED: wasm stack overflow ({lim.max_wasm_stack} bytes)"
    # Described from the trap code alone: the message carries a backtrace with the module's own function
    # names, so a name holding a newline and "wasm trap: ..." could write the job's failure reason.
    if code is None:  # a trap raised by a host function (raw_functions), whose reason is in the host log
        return "trap: a host function failed; see the host log"
    return f"trap: wasm trap: {_TRAP_TEXT.get(code) or code.name.lower().replace('_', ' ')}"


_TRAP_TEXT = {
    wasmtime.TrapCode.UNREACHABLE: "wasm `unreachable` instruction executed",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out of bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "misaligned memory access",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "undefined element: out of bounds table access",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "uninitialized element",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call type mismatch",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer divide by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
}


def _limit_reason(message: str, lim: Limits) -> str:
    """Judged on the first line only: wasmtime's own words. The rest is a backtrace naming the module's
    functions, which a guest chooses (a function named "memory limit" must not make its failure look like one)."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if first.startswith("error while executing"):  # not a wasm trap (those are Traps): a host function's trap
        return "trap: a host function failed; see the host log"
    if "memory" in first and ("limit" in first or "maximum" in first or "exceed" in first):
        return f"RESOURCE_EXHAUSTED: {first} (memory limit {lim.memory_bytes} bytes)"
    if "table" in first and ("limit" in first or "exceed" in first):
        return f"RESOURCE_EXHAUSTED: {first} (limits: {lim.table_elements} elements per table, {lim.tables} tables)"
    return f"cannot instantiate: {first}"
