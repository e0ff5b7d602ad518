"""Guest-controlled text made safe for logs and terminals.

A guest chooses its log lines, the method names it calls, and parts of the messages echoed back (schema
errors quote input). Printed raw, "\\n" forges a log line, ESC [ ... rewrites the operator's terminal, CR
overwrites a line, U+202E reverses it, and a lone surrogate cannot even be encoded. `escape` writes every
such character as a visible escape (\\n, \\x1b, \\u202e, \\udc80), so the result is one printable line that
cannot move the cursor or start another line. A backslash is left as it is: guests often log JSON, whose
"\\n" should stay readable, and a literal "\\x1b" a guest writes is only text that looks like an escape.
"""

from __future__ import annotations

import unicodedata

_ESCAPED = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))  # controls, bidi/invisible format, surrogates, separators
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Where format characters live outside the BMP (Unicode 15): Kaithi, Egyptian format controls, shorthand,
# musical symbols, tags.
_ASTRAL_FORMAT = ((0x11000, 0x14000), (0x1BC00, 0x1BD00), (0x1D100, 0x1D200), (0xE0000, 0xE0100))


def _escape_form(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _table() -> dict[int, str]:
    """One str.translate table (C speed: a 4 KiB log line of NULs is escaped in microseconds)."""
    codes = [*range(0x10000), *(c for lo, hi in _ASTRAL_FORMAT for c in range(lo, hi))]
    table = {c: _escape_form(c) for c in codes if unicodedata.category(chr(c)) in _ESCAPED and c != 0x200D}
    table.update({ord(k): v for k, v in _NAMED.items()})  # ZWJ (U+200D) above is kept: it only joins emoji
    return table


_TABLE = _table()


def escape(text: str) -> str:
    """`text` with control, format (bidi, zero-width), surrogate and line-separator characters escaped."""
    return text.translate(_TABLE)
