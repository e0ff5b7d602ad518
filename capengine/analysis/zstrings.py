"""Safe conversion between Python strings and Z3 string terms.

`z3.StringVal` interprets `\\u{..}` escapes in its input and `as_string()` escapes its output, so neither is
a faithful round trip: a policy literal containing a backslash would silently become another string. Every
character is therefore written as an explicit escape, and model values are read back one code point at a time.
"""

from __future__ import annotations

import z3

from capengine.errors import CapengineError

MAX_CHAR = 0x2FFFF  # Z3's largest code point (its "unicode" encoding); larger ones cannot be represented


class NotAnalysable(CapengineError):
    """A construct outside the analysable fragment; the message says which and why."""


def check_chars(text: str, what: str) -> None:
    for ch in text:
        if ord(ch) > MAX_CHAR:
            raise NotAnalysable(f"{what} contains U+{ord(ch):X}, beyond the solver's character range")


def zstr(text: str) -> z3.SeqRef:
    check_chars(text, "string literal")
    return z3.StringVal("".join(ch if ch.isascii() and ch.isalnum() else f"\\u{{{ord(ch):x}}}" for ch in text))


def zchar(code: int) -> z3.SeqRef:
    return zstr(chr(code))


def model_string(model: z3.ModelRef, term: z3.SeqRef) -> str:
    """The concrete value of a string term in a model, exactly (code point by code point)."""
    value = model.eval(term, model_completion=True)
    length = z3.simplify(z3.Length(value)).as_long()
    out = []
    for i in range(length):
        code = z3.simplify(z3.StrToCode(z3.SubString(value, i, 1))).as_long()
        out.append(chr(code))
    return "".join(out)
