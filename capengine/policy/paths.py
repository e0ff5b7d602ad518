"""Canonical library-relative paths: the only form of `path` a policy condition or an operation ever sees.

Canonicalisation happens once, before policy evaluation, and the operation then uses the same canonical
string, so what the policy judged is exactly what gets opened. No percent-decoding is done anywhere:
"/photos/%2e%2e" is a file literally named "%2e%2e".
"""

from __future__ import annotations

import re
import unicodedata

from capengine.errors import CapengineError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class PathError(CapengineError, ValueError):
    pass


# An already-canonical ASCII path: "/"-separated segments of 1-255 printable characters (no backslash), none
# of them "." or "..". Such a path is its own canonical form, so the per-character scan below is skipped for
# it: it ran once in the dispatcher and once more in every Request on every host call (~1.5 us of ~17).
_CANONICAL_ASCII = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[\x20-\x2e\x30-\x5b\x5d-\x7e]{1,255})+")

# The first character a path may not hold: a backslash, a control character (Unicode's Cc: U+0000-001F,
# U+007F-009F), a lone surrogate (Cs) or a line/paragraph separator.
_REFUSED_CHARACTER = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def canonical_path(raw: str) -> str:
    """Return "/a/b" for a library-relative path, or "" for none; raise PathError for anything unsafe."""
    if raw == "":
        return ""
    if type(raw) is str and raw.isascii() and len(raw) <= MAX_PATH_BYTES and _CANONICAL_ASCII.fullmatch(raw):
        return raw
    return _canonicalised(raw)


def _canonicalised(raw: str) -> str:
    if not isinstance(raw, str):
        raise PathError("path must be a string")
    bad = _REFUSED_CHARACTER.search(raw)
    if bad is not None:
        if bad.group() == "\\":
            raise PathError("path contains a backslash; use '/' as the separator")
        raise PathError(f"path contains a control character U+{ord(bad.group()):04X}")
    text = unicodedata.normalize("NFC", raw)
    parts: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise PathError("path climbs above the library root ('..')")
            parts.pop()
            continue
        if len(seg.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(f"path component longer than {MAX_NAME_BYTES} bytes")
        parts.append(seg)
    result = "/" + "/".join(parts)
    if len(result.encode("utf-8")) > MAX_PATH_BYTES:
        raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
    return result


def is_under(path: str, directory: str) -> bool:
    """Segment-aware containment: "/photos/x" and "/photos" are under "/photos"; "/photos2/x" is not."""
    if path == "":
        return False
    base = canonical_path(directory)
    if base in ("", "/"):
        return path.startswith("/")
    return path == base or path.startswith(base + "/")
