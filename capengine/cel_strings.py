"""CEL's strings extension (cel-go `ext.Strings`): charAt, indexOf, lastIndexOf, lowerAscii, upperAscii,
replace, split, substring, trim, join, reverse and strings.quote. Indices count code points, as in CEL.
Out-of-range indices are errors, never clamped: a policy must not silently read something else.
"""

from __future__ import annotations

from capengine.cel_values import CelError

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


def register(define, types) -> None:
    """Add the overloads to the function library (called by cel_library)."""
    INT, STRING, LIST = types["int"], types["string"], types["list_string"]
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
