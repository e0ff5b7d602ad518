"""Segment-aware globs, shared by operation names ("ai.*"), extension ids and library paths ("/photos/**").

`*` and `?` never cross a separator; `**` is a whole segment that spans segments. "ai.*" matches "ai.ocr" but
not "ai", "aix.ocr" or "ai.ocr.x"; "ai.**" matches "ai.ocr" and "ai.ocr.x" but not "ai"; "**" matches all.
"""

from __future__ import annotations

import re
from functools import lru_cache

from capengine.errors import CapengineError


class GlobError(CapengineError, ValueError):
    pass


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, sep: str, trailing_zero: bool = False) -> re.Pattern[str]:
    """`trailing_zero`: a final `**` also matches zero segments, so "/repo/.git/**" matches "/repo/.git"
    itself. Path globs use it (a directory is part of what a pattern for its contents protects: listing it
    reveals its entries); name globs keep "ai.**" from matching "ai"."""
    segments = pattern.split(sep)
    s = re.escape(sep)
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
        out.append("".join(f"{not_sep}*" if c == "*" else not_sep if c == "?" else re.escape(c) for c in seg))
    return re.compile("".join(out), re.S)


def glob_match(pattern: str, name: str, sep: str = ".") -> bool:
    return compile_glob(pattern, sep).fullmatch(name) is not None


def is_literal(pattern: str) -> bool:
    """A pattern without wildcards names exactly one thing (used to index rules by exact operation name)."""
    return "*" not in pattern and "?" not in pattern
