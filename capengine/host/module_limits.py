"""What a guest module may cost the host before any of its code runs: reading its file and compiling it.

WHY: the epoch deadline and the store limits bound a guest only once it runs. Compilation is unbounded work
done for the guest by the host (Cranelift cannot be interrupted), and it is cheap to make huge: a function
declares 50,000 locals in four bytes, and a 65 KB module of 5,000 such functions took 15 s of both cores to
compile; a 600 KB module of 100,000 empty functions 6.6 s. So a module is checked before it is compiled: file
size, defined functions, declared locals, one function's code bytes (superlinear: a 5.4 MB function of
600,000 `if`s took 48 s, the same code in 60 functions 3 s) and (parameters + locals) x code bytes (a 1.2 MB
function of 1,000 locals and 100,000 `if`s took 24 s), each against a `ModuleLimits` cap, refused with the cap
named. Within the defaults the worst shapes measured here compile in under 20 s (real Rust code: ~0.8 MB/s;
the examples are 150 KB). These are measured bounds for the shapes tried, not a proof: no static check can
price every input of an optimising compiler.

Files are read only when they are regular files (a FIFO would block the reader forever, /dev/zero would never
end), through a symbolic link only when it stays inside the extension directory, and only up to a cap, so no
extension file can stall or exhaust the host while it is loaded.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import attrs

from capengine.errors import CapengineError

MIB = 1024 * 1024
MAX_MANIFEST_BYTES = 1 * MIB
# A compiled module is a few times its wasm (about 2x for the examples); anything beyond is not an entry.
MAX_CACHE_ENTRY_BYTES = 256 * MIB


class ModuleError(CapengineError):
    """An extension's module (or another file of it) cannot be used; the message names the file and the fix."""


def _positive(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"ModuleLimits.{attribute.name} must be an integer >= 1, not {value!r}")


@attrs.frozen
class ModuleLimits:
    """Caps on a module, checked before compilation (docs/abi.md, Limits)."""

    max_bytes: int = attrs.field(default=16 * MIB, validator=_positive)  # the .wasm (or .wat) file
    max_functions: int = attrs.field(default=50_000, validator=_positive)  # defined functions
    max_locals: int = attrs.field(default=1_000_000, validator=_positive)  # declared locals, all functions
    # Sum over functions of (parameters + locals) x body bytes: Cranelift's cost grows with their product (every
    # live local meets every join point), so a 1.2 MB function of 1,000 locals and 100,000 `if`s took 24 s to
    # compile and one of 10,000 locals over 5 minutes. The Rust examples are at 3,000,000.
    max_local_code_product: int = attrs.field(default=500_000_000, validator=_positive)
    # One function's code: the compiler's cost is superlinear in it (one 5.4 MB function of 100 locals and
    # 600,000 `if`s took 48 s, the same code in 60 functions 3 s). The examples' largest is 15 KB.
    max_function_bytes: int = attrs.field(default=1 * MIB, validator=_positive)

    def describe(self) -> str:
        """For the module cache's key: an entry compiled under other caps is never loaded under these."""
        return (f"max_bytes={self.max_bytes};max_functions={self.max_functions};max_locals={self.max_locals};"
                f"max_local_code_product={self.max_local_code_product};max_function_bytes={self.max_function_bytes}")


DEFAULT = ModuleLimits()


def _open(path: Path) -> int:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def read_regular(path: Path, cap: int, what: str, within: Path | None = None) -> bytes:
    """The bytes of `path`, a regular file of at most `cap` bytes. A symbolic link is followed only when
    `within` is given and the link resolves inside it (an extension directory deployed as a Kubernetes
    ConfigMap links each file to `..data/<name>`); a link leading out of it, or any link when `within` is None,
    is refused. ModuleError (naming the file) for anything else; OSError (e.g. FileNotFoundError) when it
    cannot be opened."""
    try:
        fd = _open(path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        target = Path(os.path.realpath(path))
        if within is None or not target.is_relative_to(os.path.realpath(within)):
            where = "" if within is None else f" leading out of {within} (to {target})"
            raise ModuleError(f"{path}: {what} is a symbolic link{where}; put the file itself there") from None
        fd = _open(target)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModuleError(f"{path}: {what} is not a regular file (a FIFO, device, socket or directory is "
                              "never read); put the file itself there")
        if st.st_size > cap:
            raise ModuleError(f"{path}: {what} has {st.st_size} bytes, over the {cap}-byte cap")
        chunks, total = [], 0
        while True:  # read to the end, never past cap + 1: the file may grow while it is read
            chunk = os.read(fd, min(cap + 1 - total, 4 * MIB))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise ModuleError(f"{path}: {what} has more than {cap} bytes (it grew while it was read)")
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Reader:
    """A cursor over a module binary; every read is bounds-checked (ModuleError, never IndexError)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0

    def fail(self, what: str) -> ModuleError:
        return ModuleError(f"{self.name} is not a valid WebAssembly binary: {what} at byte {self.pos}; fix or "
                           "rebuild it")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end")
        self.pos += 1
        return self.data[self.pos - 1]

    def u32(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise self.fail("an integer longer than 5 bytes")


_REF_WITH_HEAP_TYPE = (0x63, 0x64)  # (ref null ht) / (ref ht): a heap type (s33) follows


def check(binary: bytes, limits: ModuleLimits, name: str) -> None:
    """ModuleError naming `name` and the cap when the module is over `limits`. Reads only the section framing,
    the function count and the locals declarations; wasmtime validates everything else."""
    if len(binary) > limits.max_bytes:
        raise ModuleError(f"{name} has {len(binary)} bytes, over the {limits.max_bytes}-byte module cap")
    r = _Reader(binary, name)
    if binary[:8] != b"\0asm\x01\0\0\0":
        raise r.fail("no WebAssembly module header")
    r.pos = 8
    type_params: list[int] = []  # parameter count of each type
    function_params: list[int] = []  # of each defined function
    while r.pos < len(binary):
        section_id = r.byte()
        size = r.u32()
        end = r.pos + size
        if end > len(binary):
            raise r.fail(f"section {section_id} runs past the end of the module")
        if section_id == 1:
            type_params = [_func_type_params(r) for _ in range(r.u32())]
        elif section_id in (3, 10):
            count = r.u32()
            if count > limits.max_functions:
                raise ModuleError(f"{name} defines {count} functions, over the cap of {limits.max_functions} "
                                  "(compiling each costs the host time); split or shrink the module")
            if section_id == 3:
                function_params = [_params_of(r, type_params) for _ in range(count)]
            else:
                _check_locals(r, count, function_params, limits)
        r.pos = end


def _valtype(r: _Reader) -> None:
    if r.byte() in _REF_WITH_HEAP_TYPE:
        r.u32()


def _func_type_params(r: _Reader) -> int:
    if r.byte() != 0x60:  # GC's rec/sub forms: validation refuses them first (GC is off)
        raise r.fail("a type that is not a plain function type")
    params = r.u32()
    for _ in range(params):
        _valtype(r)
    for _ in range(r.u32()):
        _valtype(r)
    return params


def _params_of(r: _Reader, type_params: list[int]) -> int:
    index = r.u32()
    if index >= len(type_params):
        raise r.fail(f"function type {index} does not exist")
    return type_params[index]


def _check_locals(r: _Reader, count: int, function_params: list[int], limits: ModuleLimits) -> None:
    total = product = total_groups = 0
    for index in range(count):
        body_size = r.u32()
        if body_size > limits.max_function_bytes:
            raise ModuleError(f"{r.name}: function {index} has {body_size} bytes of code, over the "
                              f"{limits.max_function_bytes}-byte cap for one function (compiling a function costs "
                              "more than its size); split it")
        body_end = r.pos + body_size
        declared = 0
        groups = r.u32()
        total_groups += groups
        if total_groups > limits.max_locals:  # groups of 0 locals are valid: bound this loop, not just the sum
            raise ModuleError(f"{r.name} has more than {limits.max_locals} local declarations (function {index} "
                              f"reaches {total_groups}); declare fewer")
        for _ in range(groups):
            declared += r.u32()
            _valtype(r)
        total += declared
        if total > limits.max_locals:
            raise ModuleError(f"{r.name} declares more than {limits.max_locals} locals (function {index} reaches "
                              f"{total}); each costs compile time, so the module is refused; declare fewer")
        params = function_params[index] if index < len(function_params) else 0
        product += (params + declared) * body_size
        if product > limits.max_local_code_product:
            raise ModuleError(f"{r.name}: function {index} ({params + declared} parameters and locals, {body_size} "
                              f"bytes of code) takes the module's (parameters + locals) x code bytes over the cap "
                              f"of {limits.max_local_code_product}: compiling it would cost the host minutes; "
                              "split large functions or use fewer locals in them")
        if body_end > len(r.data):
            raise r.fail(f"function body {index} runs past the end of the module")
        r.pos = body_end
