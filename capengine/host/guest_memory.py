"""Guest linear memory at the ABI boundary: every pointer and length a guest passes is hostile until checked.

wasmtime hands i32 arguments over signed, and `Memory.read` follows Python slice rules (a negative offset
wraps, an over-long read is silently cut), so every access goes through a `View` here: mask to u32, check
`ptr + len <= size` in Python integers (no overflow), copy once, and parse only the copy. (A View also
fetches the buffer address once per call; wasmtime-py's `read`/`write` fetch it on every access, through
bindings that release and retake the GIL.)
"""

from __future__ import annotations

import ctypes
import json
import math
import re

from capengine.errors import CapengineError
from capengine.host import raw_functions

FAULT_RANGE = -1  # a pointer/length outside linear memory
FAULT_TOO_LARGE = -2  # a request over the size cap


# ctypes.memmove is bound as a CFUNCTYPE, which releases the GIL around a copy of a few bytes: with other
# threads in the process (the epoch ticker, the decision log) the host call may then wait for the GIL to come
# back. The same C function bound as PYFUNCTYPE keeps it (ctypes.string_at already does).
_memmove = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)(
    ctypes._memmove_addr)  # type: ignore[attr-defined]


class AbiFault(CapengineError):
    """A malformed call that the guest gets back as a negative return code, not as an envelope."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadError(CapengineError, ValueError):
    """A payload that is in range but not an acceptable JSON object (INVALID_ARGUMENT)."""


def u32(value: int) -> int:
    return value & 0xFFFFFFFF


class View:
    """Linear memory as one host call sees it: base address and size fetched once.

    Within a host call no guest code runs and the host never grows memory, so the buffer cannot move or
    shrink until the call returns; a View must not outlive the call that made it. Every access is checked
    against the size in Python integers (no wrap-around) before any byte is touched."""

    __slots__ = ("base", "size")

    def __init__(self, context: int, memory: int) -> None:
        """`context`: the store's wasmtime_context_t, `memory`: the wasmtime_memory_t handle, as addresses
        (raw_functions.context_address/memory_address); two C calls that keep the GIL."""
        self.size = raw_functions.memory_data_size(context, memory)
        self.base = raw_functions.memory_data(context, memory) or 0 if self.size else 0

    def check(self, ptr: int, length: int) -> None:
        """AbiFault unless [ptr, ptr + length) (both unsigned) lies inside linear memory."""
        ptr, length = u32(ptr), u32(length)
        if ptr + length > self.size:
            raise AbiFault(FAULT_RANGE, f"range [{ptr}, {ptr + length}) is outside linear memory")

    def read(self, ptr: int, length: int, cap: int) -> bytes:
        """Copy `length` bytes at `ptr` out of guest memory, or raise AbiFault."""
        ptr, length = u32(ptr), u32(length)
        if length > cap:
            raise AbiFault(FAULT_TOO_LARGE, f"{length} bytes is over the {cap}-byte cap")
        if ptr + length > self.size:
            raise AbiFault(FAULT_RANGE, f"range [{ptr}, {ptr + length}) is outside linear memory")
        return ctypes.string_at(self.base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        ptr = u32(ptr)
        if ptr + len(data) > self.size:
            raise AbiFault(FAULT_RANGE, f"range [{ptr}, {ptr + len(data)}) is outside linear memory")
        if data:
            _memmove(self.base + ptr, data, len(data))


def decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} is not valid UTF-8 (byte {exc.start})") from None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise PayloadError(f"payload has a duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise PayloadError(f"payload: {name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which no JSON reply can carry back
        raise PayloadError(f"payload: number {text[:40]} is out of range")
    return value


# Built once: json.loads with hooks builds a new decoder per call, which costs more than the parse.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                            parse_float=_finite_float)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]
_SPACE = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]


def _decode(text: str) -> object:
    """JSONDecoder.decode without its two Python-level wrappers (same checks, same errors): the C scanner
    called directly, then only whitespace may follow."""
    try:
        value, end = _SCAN(text, _SPACE(text, 0).end())
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    end = _SPACE(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value
# A lone surrogate can only come from a \uD800-\uDFFF escape (the text is strict UTF-8); checked only then.
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_payload(raw: bytes, max_depth: int) -> dict:
    """A JSON object from guest bytes: strict UTF-8, no duplicate keys, no NaN/Infinity or out-of-range
    numbers, integers of at most 4,300 digits, no lone surrogates (text that has no UTF-8 form would break
    every log and reply it reaches), bounded depth."""
    text = decode_text(raw, "payload")
    if text.count("{") + text.count("[") > max_depth:  # cannot nest deeper than it has brackets
        _check_depth(text, max_depth)
    try:
        value = _decode(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise PayloadError("payload nests too deeply") from None
    except PayloadError:  # the hooks above say what is wrong themselves
        raise
    except ValueError as exc:  # int() past sys.get_int_max_str_digits
        raise PayloadError(f"payload has an unacceptable number: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise PayloadError("payload must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise PayloadError("payload has a string with a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
    return value


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_STRUCTURAL = re.compile(r'[\[\]{}"\\]')


def _check_depth(text: str, max_depth: int) -> None:
    """Reject deep nesting before the recursive parser sees it (brackets inside strings are skipped)."""
    depth = 0
    in_string = False
    escaped_at = -1  # index of the character a backslash escapes
    for match in _STRUCTURAL.finditer(text):
        ch = match.group()
        if match.start() == escaped_at:
            continue
        if in_string:
            if ch == "\\":
                escaped_at = match.start() + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise PayloadError(f"payload nests deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1
