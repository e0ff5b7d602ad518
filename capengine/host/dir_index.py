"""Directory listings indexed by name equivalence, cached while the directory is unchanged.

On a case-insensitive library every path component is looked up among its siblings (safe_fs.spelled_path),
and a name that does not exist is looked up by its NFC form (safe_fs._lookup); listing a 1,000-entry
directory on every call costs about 1.5 ms. A listing is reused while the directory's
mtime and ctime are unchanged. It is only ever a hint: the caller confirms each answer by inode against what
the file system itself resolves, and asks for a fresh listing when they disagree, so a stale entry (a
directory changed twice within a coarse mtime tick, as on FAT) can cost a rescan but never a wrong answer.
The cache is bounded in directories, in entries per directory and in entries overall: the library's writer
chooses how many directories and names there are.
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
# Entries held across all cached directories. Without it, 256 planted directories of 20,000 names of 255 bytes
# (each held as bytes and two text keys) would hold gigabytes; at ~1.7 KB an entry this is ~340 MB at worst.
MAX_CACHED_TOTAL = 200_000


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
_cached_total = 0  # entries in _cache, under _lock
_lock = threading.Lock()


def listing(directory: int, read_names: Callable[[int], list[bytes]], fresh: bool = False) -> tuple[Listing, bool]:
    """The index of an open directory, and whether it was read just now (a caller that doubts a cached answer
    lists again; one read just now is as fresh as it gets). `read_names(directory)` lists it when the cache
    cannot answer."""
    global _cached_total
    st = os.fstat(directory)
    where, version = (st.st_dev, st.st_ino), (st.st_mtime_ns, st.st_ctime_ns)
    if not fresh:
        with _lock:
            cached = _cache.get(where)
            if cached is not None and cached[0] == version:
                _cache.move_to_end(where)
                return cached[1], False
    result = Listing.of(read_names(directory))
    if len(result.names) <= min(MAX_CACHED_ENTRIES, MAX_CACHED_TOTAL):
        with _lock:
            old = _cache.pop(where, None)
            _cached_total += len(result.names) - (len(old[1].names) if old is not None else 0)
            _cache[where] = (version, result)
            while len(_cache) > MAX_CACHED_DIRECTORIES or _cached_total > MAX_CACHED_TOTAL:
                _, (_, evicted) = _cache.popitem(last=False)
                _cached_total -= len(evicted.names)
    return result, True
