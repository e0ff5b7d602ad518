"""Directory listings indexed by name equivalence, cached while the directory is unchanged.

On a case-insensitive library every path component is looked up among its siblings (safe_fs.spelled_path),
and a name that does not exist is looked up by its NFC form (safe_fs._lookup); listing a 1,000-entry
directory on every call costs about 1.5 ms. A listing is reused while the directory's
mtime and ctime are unchanged. It is only ever a hint: the caller confirms each answer by inode against what
the file system itself resolves, and asks for a fresh listing when they disagree, so a stale entry (a
directory changed twice within a coarse mtime tick, as on FAT) can cost a rescan but never a wrong answer.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import attrs

from capengine.host import fs_names

MAX_CACHED_DIRECTORIES = 256
MAX_CACHED_ENTRIES = 20_000  # bigger directories are listed afresh each time rather than held in memory


@attrs.frozen
class Listing:
    names: frozenset[bytes]
    by_nfc: dict[str, tuple[bytes, ...]]  # equivalence_key(name, False) -> names
    by_fold: dict[str, tuple[bytes, ...]]  # equivalence_key(name, True) -> names

    @classmethod
    def of(cls, names: list[bytes]) -> Listing:
        by_nfc: dict[str, list[bytes]] = {}
        by_fold: dict[str, list[bytes]] = {}
        for name in names:
            text = fs_names.to_text(name)
            by_nfc.setdefault(fs_names.equivalence_key(text, False), []).append(name)
            by_fold.setdefault(fs_names.equivalence_key(text, True), []).append(name)
        return cls(frozenset(names), {k: tuple(v) for k, v in by_nfc.items()},
                   {k: tuple(v) for k, v in by_fold.items()})

    def equivalent(self, text: str, case_insensitive: bool) -> tuple[bytes, ...]:
        index = self.by_fold if case_insensitive else self.by_nfc
        return index.get(fs_names.equivalence_key(text, case_insensitive), ())


_cache: OrderedDict[tuple[int, int], tuple[tuple[int, int], Listing]] = OrderedDict()
_lock = threading.Lock()


def listing(directory: int, read_names: Callable[[int], list[bytes]], fresh: bool = False) -> Listing:
    """The index of an open directory; `read_names(directory)` lists it when the cache cannot answer."""
    st = os.fstat(directory)
    where, version = (st.st_dev, st.st_ino), (st.st_mtime_ns, st.st_ctime_ns)
    if not fresh:
        with _lock:
            cached = _cache.get(where)
            if cached is not None and cached[0] == version:
                _cache.move_to_end(where)
                return cached[1]
    result = Listing.of(read_names(directory))
    if len(result.names) <= MAX_CACHED_ENTRIES:
        with _lock:
            _cache[where] = (version, result)
            _cache.move_to_end(where)
            while len(_cache) > MAX_CACHED_DIRECTORIES:
                _cache.popitem(last=False)
    return result
