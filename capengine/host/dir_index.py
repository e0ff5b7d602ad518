"""Directory listings indexed by name equivalence, cached while the directory is unchanged.

On a case-insensitive library every path component is looked up among its siblings (safe_fs.spelled_path);
listing a 1,000-entry directory on every call costs about 1.5 ms. A listing is reused while the directory's
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
    by_key: dict[str, tuple[bytes, ...]]  # equivalence_key(name, case_insensitive=True) -> names

    @classmethod
    def of(cls, names: list[bytes]) -> Listing:
        by_key: dict[str, list[bytes]] = {}
        for name in names:
            by_key.setdefault(fs_names.equivalence_key(fs_names.to_text(name), True), []).append(name)
        return cls(frozenset(names), {k: tuple(v) for k, v in by_key.items()})

    def equivalent(self, text: str) -> tuple[bytes, ...]:
        return self.by_key.get(fs_names.equivalence_key(text, True), ())


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
