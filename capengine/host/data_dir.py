"""The data directory: private to its owner, and key files that appear whole or not at all.

WHY: the data dir holds the vault (ciphertext and the key that opens it), the module cache (native code the
host runs after checking an HMAC under `cache.key`) and the library catalogue. A local user who can read it can
decrypt secrets; one who can write it can make the host run their code. So it is created 0700 and checked at
every start (files 0600), and a key file is written to a unique temp file, fsynced, and hard-linked into place:
a full disk or a crash leaves no short key behind, and two first users racing agree on one key.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from capengine.errors import CapengineError

log = logging.getLogger("capengine.host.data_dir")

# Created empty and 0600 before SQLite opens them (SQLite creates a missing file 0644 under the usual umask; its
# journal and WAL files copy the database file's mode).
SQLITE_FILES = ("vault.sqlite3", "libraries.sqlite3")
# What capengine keeps in a data dir (checked at start; anything else there is the user's and left alone).
OWN_ENTRIES = ("vault.*", "libraries.sqlite3*", "installed.*", "trusted-keys.*", "decisions.jsonl*", "*.key",
               "module-cache")
KEY_READ_ATTEMPTS = 20  # a short key is retried this many times, 50 ms apart, before it is called corrupt
KEY_RETRY_SECONDS = 0.05


T = TypeVar("T")


class DataDirError(CapengineError):
    """The data directory cannot be used as it is; the message names it and says what to do."""


class KeyFileError(DataDirError):
    """A key file cannot be read or created. `corrupt` tells a damaged key (the operator must act) from one that
    could not be written (disk full, read-only: nothing was left behind, a later start creates it)."""

    def __init__(self, message: str, corrupt: bool) -> None:
        super().__init__(message)
        self.corrupt = corrupt


def prepare(data_dir: str | Path) -> Path:
    """Create the data dir 0700 if missing; check it and what it holds, tightening modes left wider by an
    older capengine or a careless copy. Refuses a path that is not a directory or that another user owns."""
    path = Path(data_dir)
    what = "point --data-dir (or $CAPENGINE_DATA_DIR) at a directory of your own; it is created if missing"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except (FileExistsError, NotADirectoryError):
        raise DataDirError(f"data directory {path} is not a directory; {what}") from None
    except OSError as exc:
        raise DataDirError(f"cannot create the data directory {path}: {exc.strerror}; {what}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"data directory {path} is not a directory; {what}")
    _check_private(path.resolve(), st, 0o700)  # the directory the user named, also through a symlink
    with os.scandir(path) as entries:
        for entry in entries:
            if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in OWN_ENTRIES):
                _check_entry(Path(entry.path), depth=1)
    for name in SQLITE_FILES:
        _create_private(path / name)
    return path


def _check_entry(path: Path, depth: int) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return  # removed meanwhile
    if stat.S_ISDIR(st.st_mode):
        _check_private(path, st, 0o700)
        if depth > 0:
            with os.scandir(path) as entries:
                for entry in entries:
                    _check_entry(Path(entry.path), depth - 1)
    elif stat.S_ISREG(st.st_mode):
        _check_private(path, st, 0o600)


def _check_private(path: Path, st: os.stat_result, mode: int) -> None:
    if st.st_uid != os.getuid():
        raise DataDirError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): another user could "
                           "read the vault or plant cache entries; use a data directory of your own (--data-dir)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            _chmod_no_follow(path, mode)
        except OSError as exc:
            raise DataDirError(f"{path} is readable or writable by other users (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}) and cannot be made {mode:04o}: {exc.strerror}; "
                               f"run: chmod {mode:o} {path}") from None
        log.warning("%s was mode %04o (other users could reach it); made it %04o", path, stat.S_IMODE(st.st_mode),
                    mode)


def _chmod_no_follow(path: Path, mode: int) -> None:
    """chmod through a descriptor opened without following a symlink (portable, unlike lchmod)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _create_private(path: Path) -> None:
    # O_NONBLOCK: a FIFO planted under this name must be refused, not wait forever for a reader.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        if path.is_file():
            return  # e.g. a read-only data dir that already holds it
        if os.path.lexists(path):
            raise DataDirError(f"{path} is not a regular file; move it aside (capengine creates it)") from None
        raise DataDirError(f"cannot create {path}: {exc.strerror}; check free space and permissions of "
                           f"{path.parent}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device opened without blocking
            raise DataDirError(f"{path} is not a regular file; move it aside (capengine creates it)")
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, fsync: bool) -> Path:
    """A unique 0600 temp file beside `path` holding `data` (unique per call: threads and processes never
    share one); removed again when writing fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory; the rename still holds
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CachedFile(Generic[T]):
    """What `read()` made of a data-dir file, read again only when the file changes (inode, size, mtime):
    the host consults the installed registry and the trusted keys on every job, and still sees an
    `ext install` made meanwhile by another process. A missing file is `empty`."""

    def __init__(self, path: Path, read: Callable[[], T], empty: T) -> None:
        self.path, self._read, self._empty = path, read, empty
        self._cache: tuple[tuple[int, int, int], T] | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._empty
        except OSError as exc:
            raise DataDirError(f"cannot read {self.path}: {exc.strerror}") from None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._cache is None or self._cache[0] != signature:
                self._cache = (signature, self._read())
            return self._cache[1]


def read_document(path: Path, fmt: int, section: str, what: str, fix: str) -> dict[str, Any] | None:
    """The `section` mapping of a versioned JSON document the data dir holds (`{"format": fmt, section:
    {...}}`), None when the file does not exist; DataDirError naming the file and `fix` when it cannot be
    read or is not such a document."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DataDirError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get(section), dict):
        raise DataDirError(f"{path} is not a capengine {what} of format {fmt}; {fix}")
    section_data: dict[str, Any] = data[section]
    return section_data


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace `path` with `data` (0600): readers see the old content or the new, never a mix or a short file."""
    tmp = _write_temp(path, data, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (then False). Linking a complete, fsynced temp file into
    place makes creation atomic: no reader ever sees the file empty or short, and exactly one racer wins."""
    tmp = _write_temp(path, data, fsync=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def load_or_create_key(path: Path, size: int, fix: str) -> bytes:
    """The `size`-byte key in `path`, created from os.urandom when missing. A short file can only come from an
    older capengine still writing it (or damage): it is read again for a second before being called corrupt,
    with `fix` in the message."""
    length = 0
    for attempt in range(KEY_READ_ATTEMPTS):
        try:
            # O_NONBLOCK: a FIFO in the key's place is refused below, not waited on
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            key = os.urandom(size)
            try:
                if create_exclusive(path, key):
                    return key
            except OSError as exc:
                raise KeyFileError(f"cannot create the key file {path}: {exc.strerror}; nothing was written. "
                                   "Free some space (or make the directory writable) and start again",
                                   corrupt=False) from None
            continue  # another process created it first: use theirs
        except OSError as exc:
            raise KeyFileError(f"cannot read the key file {path}: {exc.strerror}; {fix}", corrupt=True) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory or a device where the key should be
                raise KeyFileError(f"the key file {path} is not a regular file; {fix}", corrupt=True)
            data = os.read(fd, size + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read the key file {path}: {exc.strerror}; {fix}", corrupt=True) from None
        finally:
            os.close(fd)
        if len(data) == size:
            return data
        length = len(data)
        if length > size:
            break  # longer than any key we write: damaged, waiting will not help
        if attempt + 1 < KEY_READ_ATTEMPTS:
            time.sleep(KEY_RETRY_SECONDS)
    found = f"more than {size}" if length > size else str(length)
    raise KeyFileError(f"the key file {path} is corrupt ({found} bytes, expected {size}); {fix}", corrupt=True)
