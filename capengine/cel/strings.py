"""CEL's strings extension (cel-go `ext.Strings`): charAt, indexOf, lastIndexOf, lowerAscii, upperAscii,
replace, split, substring, trim, join, reverse and strings.quote. Indices count code points, as in CEL.
Out-of-range indices are errors, never clamped: a policy must not silently read something else.
"""

from __future__ import annotations

import math
import re

from capengine.cel import timestamps
from capengine.cel.environment import Define
from capengine.cel.types import DYN, INT, STRING, list_of
from capengine.cel.values import MAP_TYPES, CelError, CelType, Value, format_double, type_name

# Go's unicode.IsSpace, which cel-go's trim uses (Python's str.strip also strips \x1c-\x1f).
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
         "\u2028\u2029\u202f\u205f\u3000"
_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
                  "\\": "\\\\", '"': '\\"'}


def _index(s: str, i: int, upper: int, what: str) -> int:
    if not 0 <= i <= upper:
        raise CelError(f"{what} index {i} out of range [0, {upper}]")
    return i


def char_at(s: str, i: int) -> str:
    _index(s, i, len(s), "charAt")
    return s[i:i + 1]


def index_of(s: str, sub: str, start: int = 0) -> int:
    return s.find(sub, _index(s, start, len(s), "indexOf"))


def last_index_of(s: str, sub: str, end: int | None = None) -> int:
    if end is None:
        return s.rfind(sub)
    if not 0 <= end < max(len(s), 1):
        raise CelError(f"lastIndexOf index {end} out of range [0, {len(s)})")
    return s.rfind(sub, 0, end + len(sub))


def _ascii(s: str, upper: bool) -> str:
    return "".join(chr(ord(c) ^ 32) if ("a" <= c <= "z" if upper else "A" <= c <= "Z") else c for c in s)


def split(s: str, sep: str, n: int = -1) -> list[str]:
    if n == 0:
        return []
    if sep == "":
        parts = list(s)
        return parts if n < 0 or n >= len(parts) else parts[:n - 1] + ["".join(parts[n - 1:])]
    return s.split(sep, -1 if n < 0 else n - 1)


def substring(s: str, start: int, end: int | None = None) -> str:
    end = len(s) if end is None else end
    if not 0 <= start <= end <= len(s):
        raise CelError(f"substring({start}, {end}) out of range for a string of length {len(s)}")
    return s[start:end]


def join(items, sep: str = "") -> str:
    if any(type(x) is not str for x in items):
        raise CelError("join() needs a list of strings")
    return sep.join(items)


def quote(s: str) -> str:
    out = []
    for c in s:
        if c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif c.isprintable() or c == " ":
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


LIST = list_of(STRING)


def register(define: Define) -> None:
    """Add the overloads to the function library (the standard environment includes them)."""
    define("charAt", (STRING, INT), STRING, char_at, receiver=True)
    define("indexOf", (STRING, STRING), INT, index_of, receiver=True)
    define("indexOf", (STRING, STRING, INT), INT, index_of, receiver=True)
    define("lastIndexOf", (STRING, STRING), INT, last_index_of, receiver=True)
    define("lastIndexOf", (STRING, STRING, INT), INT, last_index_of, receiver=True)
    define("lowerAscii", (STRING,), STRING, lambda s: _ascii(s, upper=False), receiver=True)
    define("upperAscii", (STRING,), STRING, lambda s: _ascii(s, upper=True), receiver=True)
    define("replace", (STRING, STRING, STRING), STRING, lambda s, a, b: s.replace(a, b), receiver=True)
    define("replace", (STRING, STRING, STRING, INT), STRING, lambda s, a, b, n: s.replace(a, b, n if n >= 0 else -1),
           receiver=True)
    define("split", (STRING, STRING), LIST, split, receiver=True)
    define("split", (STRING, STRING, INT), LIST, split, receiver=True)
    define("substring", (STRING, INT), STRING, substring, receiver=True)
    define("substring", (STRING, INT, INT), STRING, substring, receiver=True)
    define("trim", (STRING,), STRING, lambda s: s.strip(_SPACE), receiver=True)
    define("join", (LIST,), STRING, join, receiver=True)
    define("join", (LIST, STRING), STRING, join, receiver=True)
    define("reverse", (STRING,), STRING, lambda s: s[::-1], receiver=True)
    define("strings.quote", (STRING,), STRING, quote)
    define("format", (STRING, list_of(DYN)), STRING, format_string, receiver=True)


_FORMAT = re.compile(r"%(?:(%)|(?:\.(\d+))?([a-zA-Z]))")


def _plain(value: Value) -> str:
    """%s: how cel-go prints a value: strings raw, lists and maps (keys sorted) recursively."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _special(value) or format_double(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, MAP_TYPES):
        items = sorted(((_plain(k), _plain(v)) for k, v in value.items()), key=lambda kv: kv[0])
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, timestamps.Timestamp):
        return timestamps.format_timestamp(value)
    if isinstance(value, timestamps.Duration):
        return timestamps.format_duration(value)
    if isinstance(value, (CelType, int)):
        return str(value if isinstance(value, CelType) else int(value))
    raise CelError(f"format: %s cannot print a value of type {type_name(value)}")


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return None


def _number(value: Value, verb: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise CelError(f"format: %{verb} needs a number, not {type_name(value)}")


def _integer(value: Value, verb: str) -> int:
    if isinstance(value, bool):
        if verb == "b":
            return int(value)
    elif isinstance(value, int):
        return int(value)
    raise CelError(f"format: %{verb} needs an integer, not {type_name(value)}")


def _fixed(x: float, precision: int) -> str:
    """%f rounds half to even on the exact binary value, as Go does; Python's format does the same."""
    return _special(x) or f"{x:.{precision}f}"


def _verb(verb: str, precision: str | None, value: Value) -> str:
    p = 6 if precision is None else int(precision)
    if verb == "s":
        return _plain(value)
    if verb == "d":
        special = _special(value) if isinstance(value, float) else None
        if special:
            return special
        return str(_integer(value, verb))
    if verb == "f":
        return _fixed(_number(value, verb), p)
    if verb == "e":
        x = _number(value, verb)
        return _special(x) or f"{x:.{p}e}"
    if verb in ("x", "X"):
        if type(value) is str:
            text = value.encode("utf-8").hex()
        elif type(value) is bytes:
            text = value.hex()
        else:
            n = _integer(value, verb)
            text = format(n, "x") if n >= 0 else "-" + format(-n, "x")
        return text.upper() if verb == "X" else text
    if verb == "o":
        return format(_integer(value, verb), "o")
    if verb == "b":
        return format(_integer(value, verb), "b")
    raise CelError(f"format: unknown verb %{verb}")


def format_string(template: str, args: list[Value] | tuple[Value, ...]) -> str:
    """`"%s is %d".format([a, b])`: the verbs of cel-go's strings extension (%s %d %f %e %x %X %o %b, %%)."""
    out: list[str] = []
    pos, used = 0, 0
    for m in _FORMAT.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        if m.group(1):
            out.append("%")
            continue
        if used >= len(args):
            raise CelError(f"format: not enough arguments for {template!r}")
        out.append(_verb(m.group(3), m.group(2), args[used]))
        used += 1
    out.append(template[pos:])
    return "".join(out)
