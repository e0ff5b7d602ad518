"""File names as guests see them: every name on disk has exactly one text form, and that text opens it again.

A name on a POSIX file system is bytes. Guests and policies see JSON text, and canonical paths
(capengine.policy.paths) refuse control characters, backslashes and lone surrogates. So a name is shown as
its UTF-8 text, except that each byte the text could not carry is written as one character of the reserved
block U+EF00..U+EFFF, the character U+EF00 + byte:

- bytes that are not valid UTF-8 (a Latin-1 name, a truncated sequence);
- control characters (C0, DEL, C1, U+2028/U+2029) and the backslash;
- the UTF-8 bytes of a real U+EF00..U+EFFF character in the name, so the escape is never ambiguous.

`to_bytes(to_text(b)) == b` for every name b, and the text form always passes canonical_path. Example: the
Latin-1 name b"caf\\xe9.txt" is listed as "caf\\uefe9.txt"; a guest passes that string back to read it.

The converse is enforced too: `to_bytes` accepts only a text that IS the text form of its bytes, and only bytes
that can be one name. An escape is a byte only where the name needs it; otherwise "\\uef2e\\uef2e" would be
the name ".." (the library's parent), "a\\uef2fb" the two components "a/b" (crossing a symbolic link on the
way, since O_NOFOLLOW guards only the last), "\\uef00" a NUL, and "s\\uef65cret" a second spelling of
"secret" that a policy denying /secret* does not recognise. One name, one text; one text, one name.

Names differing only in Unicode normalisation (NFC "é" vs NFD "e" + U+0301) are the same name to a policy:
paths are NFC-normalised before the policy sees them, and `equivalence_key` says which names on disk a
canonical component stands for.
"""

from __future__ import annotations

import re
import unicodedata

ESCAPE_BASE = 0xEF00
_ESCAPE_END = ESCAPE_BASE + 0x100
_UNSAFE = frozenset("\\\u2028\u2029")
# One regex scan instead of a call per character: both run for every path component of every host call.
_NEEDS_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\uef00-\uefff]")
# Text that is its own text form: no escape, nothing that needs one, no surrogate (and, for a name, no "/").
_PLAIN_TEXT = re.compile("[^\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\uef00-\uefff\ud800-\udfff]*")
_PLAIN_NAME = re.compile("[^\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\uef00-\uefff\ud800-\udfff/]+")


def _needs_escape(ch: str) -> bool:
    code = ord(ch)
    return (ESCAPE_BASE <= code < _ESCAPE_END or ch in _UNSAFE or code < 0x20 or 0x7F <= code <= 0x9F)


def to_text(name: bytes) -> str:
    """The text form of an on-disk name (see the module docstring)."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return _escape_invalid(name)
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    if not _needs_escape(ch):
        return ch
    return "".join(chr(ESCAPE_BASE + b) for b in ch.encode("utf-8"))


def _escape_invalid(name: bytes) -> str:
    out: list[str] = []
    rest = name
    while rest:
        try:
            out.append("".join(_escape_char(ch) for ch in rest.decode("utf-8")))
            break
        except UnicodeDecodeError as exc:
            out.append("".join(_escape_char(ch) for ch in rest[:exc.start].decode("utf-8")))
            out.extend(chr(ESCAPE_BASE + b) for b in rest[exc.start:exc.end])
            rest = rest[exc.end:]
    return "".join(out)


def plain(text: str) -> bool:
    """Whether `text` holds no escape and nothing that needs one: then each of its "/"-separated parts other
    than "." and ".." is the text form of itself (one regex scan of a whole path, the common case)."""
    return _PLAIN_TEXT.fullmatch(text) is not None


class NotAName(ValueError):
    """A text that is not the text form of any one file name (see the module docstring)."""


def to_bytes(text: str) -> bytes:
    """The on-disk name a text form stands for: U+EFxx is the byte xx, everything else is UTF-8. Raises
    NotAName unless `text` is exactly `to_text` of the result and the result can be one name."""
    if _PLAIN_NAME.fullmatch(text) is not None and text not in (".", ".."):
        return text.encode("utf-8")
    try:
        if not any(ESCAPE_BASE <= ord(ch) < _ESCAPE_END for ch in text):
            name = text.encode("utf-8")
        else:
            out = bytearray()
            for ch in text:
                code = ord(ch)
                out += bytes((code - ESCAPE_BASE,)) if ESCAPE_BASE <= code < _ESCAPE_END else ch.encode("utf-8")
            name = bytes(out)
    except UnicodeEncodeError:  # a lone surrogate
        raise NotAName(f"{text!a} holds a lone surrogate") from None
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise NotAName(f"{text!a} stands for {name!r}, which cannot be one name in a directory")
    if to_text(name) != text:
        raise NotAName(f"{text!a} spells bytes with U+EF00+byte escapes that need none; a name's text form "
                       f"escapes only bytes that are not UTF-8 text, controls and backslashes (here: "
                       f"{to_text(name)!a})")
    return name


# Code points HFS+ and APFS ignore or fold when comparing names (zero-width joiners, variation selectors...).
# Only used to find candidate names; a match is always confirmed by inode (safe_fs.spelled_path).
def _ignorable(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or 0xFE00 <= ord(ch) <= 0xFE0F


def equivalence_key(text: str, case_insensitive: bool) -> str:
    """Names with equal keys are one name to a policy (NFC), and on a case-insensitive volume also names that
    differ in case or in ignorable characters."""
    key = unicodedata.normalize("NFC", text)
    if case_insensitive:
        key = unicodedata.normalize("NFC", "".join(ch for ch in key.casefold() if not _ignorable(ch)))
    return key
