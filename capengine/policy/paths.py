"""Canonical library-relative paths: the only form of `path` a policy condition or an operation ever sees.

Canonicalisation happens once, before policy evaluation, and the operation then uses the same canonical
string, so what the policy judged is exactly what gets opened. No percent-decoding is done anywhere:
"/photos/%2e%2e" is a file literally named "%2e%2e".
"""

from __future__ import annotations

import unicodedata

from capengine.errors import CapengineError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class PathError(CapengineError, ValueError):
    pass


def canonical_path(raw: str) -> str:
    """Return "/a/b" for a library-relative path, or "" for none; raise PathError for anything unsafe."""
    if raw == "":
        return ""
    if not isinstance(raw, str):
        raise PathError("path must be a string")
    for ch in raw:
        if ch == "\\":
            raise PathError("path contains a backslash; use '/' as the separator")
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            raise PathError(f"path contains a control character U+{ord(ch):04X}")
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
