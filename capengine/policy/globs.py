"""Segment-aware globs, shared by operation names ("ai.*"), extension ids and library paths ("/photos/**").

`*` and `?` never cross a separator; `**` is a whole segment that spans segments. "ai.*" matches "ai.ocr" but
not "ai", "aix.ocr" or "ai.ocr.x"; "ai.**" matches "ai.ocr" and "ai.ocr.x" but not "ai"; "**" matches all.

Globs run on RE2, in time linear in the name: the name or path matched is often the caller's (an operation
name a guest sends, a request path of up to 4 KiB), and a backtracking regex made `*a*a*a*a*a*a*b` against
120 a's take minutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import re2

from capengine.errors import CapengineError


class GlobError(CapengineError, ValueError):
    pass


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_BOTH = re2._Anchor.ANCHOR_BOTH


class Glob:
    """A compiled glob: `fullmatch(name)` is True when the whole name matches, else None (as re's match).
    `python`: the same language as a Python regex (for the SMT analysis, which translates Python regexes;
    never used to match)."""

    __slots__ = ("pattern", "regex", "_python", "_match")

    def __init__(self, pattern: str, regex: str, python: str) -> None:
        self.pattern, self.regex, self._python = pattern, regex, python
        self._match = re2.compile(regex, _OPTIONS)._regexp.Match  # the wrapper's fullmatch() costs 4 us, this 0.7

    def fullmatch(self, name: str) -> bool | None:
        data = name.encode("utf-8", "surrogatepass")
        return True if self._match(_BOTH, data, 0, len(data))[0][0] != -1 else None

    @property
    def python(self) -> re.Pattern[str]:
        return re.compile(self._python, re.S)


def _re2_literal(char: str) -> str:
    """One character as RE2 matches it literally: letters and digits as themselves, the rest by code point."""
    return char if char.isalnum() else f"\\x{{{ord(char):X}}}"


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, sep: str, trailing_zero: bool = False) -> Glob:
    """`trailing_zero`: a final `**` also matches zero segments, so "/repo/.git/**" matches "/repo/.git"
    itself. Path globs use it (a directory is part of what a pattern for its contents protects: listing it
    reveals its entries); name globs keep "ai.**" from matching "ai"."""
    regex = _regex(pattern, sep, trailing_zero, _re2_literal)
    try:
        return Glob(pattern, "(?s)" + regex, _regex(pattern, sep, trailing_zero, re.escape))
    except Exception as exc:  # noqa: BLE001 - re2.error has no stable public base class: a glob RE2 refuses
        raise GlobError(f"glob {pattern!r} is too large to compile; split it up") from exc


def _regex(pattern: str, sep: str, trailing_zero: bool, literal: Callable[[str], str]) -> str:
    segments = pattern.split(sep)
    s = literal(sep)
    not_sep = f"[^{s}]"
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "**":
            if last == 0:
                out.append(".*")
            elif i == 0:
                out.append(f"(?:{not_sep}+{s})*")
            elif i == last:
                out.append(f"(?:{s}{not_sep}+)*" if trailing_zero else f"(?:{s}{not_sep}+)+")
            else:
                out.append(f"(?:{s}{not_sep}+)*")
            continue
        if "**" in seg:
            raise GlobError(f"'**' must be a whole segment in {pattern!r}")
        if i > 0 and not (i == 1 and segments[0] == "**"):
            out.append(s)
        out.append("".join(f"{not_sep}*" if c == "*" else not_sep if c == "?" else literal(c) for c in seg))
    return "".join(out)


def glob_match(pattern: str, name: str, sep: str = ".") -> bool:
    if "*" not in pattern and "?" not in pattern:  # a literal names itself: no regex (and no cache churn with
        return pattern == name                    # 10,000 distinct extension ids)
    return compile_glob(pattern, sep).fullmatch(name) is not None


def is_literal(pattern: str) -> bool:
    """A pattern without wildcards names exactly one thing (used to index rules by exact operation name)."""
    return "*" not in pattern and "?" not in pattern
