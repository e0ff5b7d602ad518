"""Open files beneath a library root, safe against every escape, including races, and against hostile files.

The canonical path (capengine.policy.paths) already has no `..`, NUL or control characters, and each component
must be the exact text form of one name (fs_names.to_bytes: no escape spells "..", "/" or NUL); what remains is
symlinks, including one swapped in between a check and a use. So nothing is checked and then opened by name:
each component is opened relative to its parent's descriptor with O_NOFOLLOW, so a symlink anywhere, at any
moment, makes the open fail instead of leaving the root. Only the descriptor of the current directory is held
on the way down: a path 2,000 directories deep costs one descriptor, not 2,000 (a daemon's limit is often 1,024,
shared by every thread and socket).

Hostile library contents are handled here too, because a path policy cannot see them:
- only regular files and directories are ever opened. A FIFO, socket or device is refused after an
  `fstatat` that cannot block; the open itself is O_NONBLOCK and re-checked with `fstat` (a FIFO swapped in
  between the two is opened without blocking and then refused), so no host call ever hangs in open();
- a regular file with more than one hard link is refused unless the library allows hard links: a link under
  /photos to /secrets/api-key.txt is the same file, and no path rule can tell;
- names are bytes on disk and text for guests (fs_names): a name a guest got from `list_dir` opens that entry
  again, including NFD and non-UTF-8 names;
- on case-insensitive volumes (or ext4 casefold directories) `spelled_path` gives the on-disk spelling of a
  path, so a policy judges "/photos/private/x" however the guest spelled it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat as stat_mod
import struct
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from capengine.errors import CapengineError
from capengine.host import dir_index, fs_names

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
MAX_SCAN = 100_000  # entries examined when looking a name up by equivalence; a bigger directory is refused
_FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h, _IOR('f', 1, long) on 64-bit
_FS_CASEFOLD_FL = 0x40000000


class FsError(CapengineError):
    """`code` is an envelope error code (NOT_FOUND, INVALID_ARGUMENT, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _components(canonical: str) -> list[str]:
    if not canonical.startswith("/"):
        raise FsError("INVALID_ARGUMENT", "path must be a canonical library path starting with '/'")
    parts = [p for p in canonical.split("/") if p]
    if any(p in (".", "..") or "\0" in p for p in parts):
        raise FsError("INVALID_ARGUMENT", "path is not canonical")
    if not fs_names.plain(canonical):
        for part in parts:
            try:
                fs_names.to_bytes(part)
            except fs_names.NotAName as exc:
                raise FsError("INVALID_ARGUMENT", f"{canonical} is not a path of the library: {exc}") from None
    return parts


def os_error(exc: OSError, path: str) -> FsError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FsError("NOT_FOUND", f"no such file or directory: {path}")
    if exc.errno == errno.ELOOP:
        return FsError("PERMISSION_DENIED", f"{path} goes through a symbolic link; links are not followed")
    if exc.errno == errno.ENAMETOOLONG:
        return FsError("INVALID_ARGUMENT", f"name too long in {path}")
    if exc.errno == errno.EISDIR:
        return FsError("INVALID_ARGUMENT", f"{path} is a directory")
    if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket, or a device node with no device behind it
        return FsError("INVALID_ARGUMENT", f"{path} is not a regular file (a socket or a device); only regular "
                                           "files are opened")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FsError("PERMISSION_DENIED", f"the host may not open {path}")
    if exc.errno == errno.EROFS:
        return FsError("PERMISSION_DENIED", f"cannot write {path}: the library's volume is read-only")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return FsError("RESOURCE_EXHAUSTED", f"cannot write {path}: {os.strerror(exc.errno)} on the library's "
                                             "volume")
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return FsError("RESOURCE_EXHAUSTED", f"cannot open {path} now: {os.strerror(exc.errno)}; try again later")
    return FsError("INTERNAL", f"cannot use {path}: {exc.strerror or exc}")


def _open_root(root: Path) -> int:
    """The root recorded in the catalogue, which is a real path (resolved at `library add`): a link or a file
    there now means the library was replaced, and nothing is opened through it. The guest is not told where
    the root is on the host."""
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise FsError("NOT_FOUND", f"the library's root directory cannot be opened ({os.strerror(exc.errno or 0)}): "
                                   "it was removed, or replaced by a link or a file; the operator must restore it "
                                   "or re-root the library (capengine library move)") from None


def _open_dir(parent: int, name: bytes, path: str) -> int:
    """A directory on the way. O_DIRECTORY | O_NOFOLLOW fails with ENOTDIR on a link: say it is one."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except NotADirectoryError:
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except OSError:
            raise FileNotFoundError(errno.ENOENT, "gone") from None  # removed meanwhile: NOT_FOUND
        if stat_mod.S_ISLNK(mode):
            raise FsError("PERMISSION_DENIED", f"{path} goes through a symbolic link; links are not "
                                               "followed") from None
        what = "a regular file" if stat_mod.S_ISREG(mode) else _kind_name(mode)
        raise FsError("NOT_FOUND", f"no such directory: {path} ({fs_names.to_text(name)!r} is {what}, not a "
                                   "directory)") from None


def _descend(fds: list[int], fd: int) -> None:
    """Hold `fd` instead of the descriptor it was opened from (see the module docstring)."""
    fds.append(fd)
    while len(fds) > 1:
        os.close(fds.pop(0))


def _close(fds: list[int]) -> None:
    for fd in reversed(fds):
        os.close(fd)


@contextlib.contextmanager
def _descriptors(canonical: str) -> Iterator[list[int]]:
    """Collects the descriptors opened on the way down; on a failed open, closes them and says why.
    Only opening is covered: an error in the caller's own work is not dressed up as a path error."""
    fds: list[int] = []
    try:
        yield fds
    except OSError as exc:
        _close(fds)
        raise os_error(exc, canonical) from None
    except BaseException:
        _close(fds)
        raise


def _entries(parent: int, path: str) -> list[bytes]:
    with os.scandir(parent) as it:
        names = []
        for entry in it:
            names.append(os.fsencode(entry.name))
            if len(names) > MAX_SCAN:
                raise FsError("RESOURCE_EXHAUSTED", f"a directory on the way to {path} has more than {MAX_SCAN} "
                                                    "entries to search for an equivalent name")
    return names


def _lookup(parent: int, text: str, path: str) -> bytes:
    """The on-disk name `text` stands for: itself if it exists, else the one entry whose name is the same
    after NFC normalisation (an NFD name sent back as the guest listed it). Raises FileNotFoundError."""
    name = fs_names.to_bytes(text)
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
        return name
    except FileNotFoundError:
        pass
    for fresh in (False, True):  # a cached index is a hint: an entry it names must still exist
        index, read_now = dir_index.listing(parent, lambda fd: _entries(fd, path), fresh)
        matches = index.equivalent(text, False)
        if len(matches) > 1:
            raise FsError("INVALID_ARGUMENT", f"{path} names {len(matches)} entries that differ only in Unicode "
                                              "normalisation; capengine opens none of them")
        if matches and _inode(parent, matches[0]) is not None:
            return matches[0]
        if read_now:
            break
    raise FileNotFoundError(errno.ENOENT, "not found")


def _check_file(st: os.stat_result, path: str, allow_hardlinks: bool) -> None:
    if stat_mod.S_ISLNK(st.st_mode):
        raise FsError("PERMISSION_DENIED", f"{path} is a symbolic link; links are not followed")
    if stat_mod.S_ISDIR(st.st_mode):
        raise FsError("INVALID_ARGUMENT", f"{path} is a directory")
    if not stat_mod.S_ISREG(st.st_mode):
        raise FsError("INVALID_ARGUMENT", f"{path} is not a regular file ({_kind_name(st.st_mode)}); "
                                          "only regular files are opened")
    if st.st_nlink > 1 and not allow_hardlinks:
        raise FsError("PERMISSION_DENIED", f"{path} has {st.st_nlink} hard links; the same file may be reachable "
                                           "under a path the policy denies (the library does not allow hard links)")


def _kind_name(mode: int) -> str:
    for test, name in ((stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISSOCK, "a socket"),
                       (stat_mod.S_ISCHR, "a character device"), (stat_mod.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_file(parent: int, name: bytes, path: str, allow_hardlinks: bool) -> int:
    """fstatat first (never blocks), then an O_NONBLOCK open, then fstat of what was really opened."""
    before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    _check_file(before, path, allow_hardlinks)
    fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    try:
        after = os.fstat(fd)
        _check_file(after, path, allow_hardlinks)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise FsError("INVALID_ARGUMENT", f"{path} was replaced while it was being opened; try again")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_beneath(root: Path, canonical: str, directory: bool = False,
                 allow_hardlinks: bool = False) -> Iterator[int]:
    """Yield a read-only descriptor for the regular file (or, with directory=True, the directory) at
    `canonical` under `root`; the caller must not close it."""
    parts = _components(canonical)
    if not parts and not directory:
        raise FsError("INVALID_ARGUMENT", "/ is the library root, a directory")
    last = len(parts) - 1
    with _descriptors(canonical) as fds:
        fds.append(_open_root(root))
        for i, text in enumerate(parts):
            name = _lookup(fds[-1], text, canonical)
            if i == last and not directory:
                _descend(fds, _open_file(fds[-1], name, canonical, allow_hardlinks))
            else:
                _descend(fds, _open_dir(fds[-1], name, canonical))
    try:
        yield fds[-1]
    finally:
        _close(fds)


@contextlib.contextmanager
def open_parent(root: Path, canonical: str, create: bool = False) -> Iterator[tuple[int, bytes]]:
    """Yield (descriptor of the parent directory, on-disk final name), creating missing directories if asked.
    The final name need not exist."""
    parts = _components(canonical)
    if not parts:
        raise FsError("INVALID_ARGUMENT", "the library root has no parent")
    with _descriptors(canonical) as fds:
        fds.append(_open_root(root))
        for text in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(fs_names.to_bytes(text), 0o700, dir_fd=fds[-1])
            _descend(fds, _open_dir(fds[-1], _lookup(fds[-1], text, canonical), canonical))
        try:
            final = _lookup(fds[-1], parts[-1], canonical)
        except FileNotFoundError:
            final = fs_names.to_bytes(parts[-1])
    try:
        yield fds[-1], final
    finally:
        _close(fds)


def list_names(directory: int, limit: int | None = None) -> list[bytes]:
    """The on-disk names in an open directory, sorted, as bytes (never decoded: see fs_names). With `limit`,
    a directory with more entries is refused after reading limit + 1 names, not all ten million of them."""
    names: list[bytes] = []
    with os.scandir(directory) as it:
        for entry in it:
            names.append(os.fsencode(entry.name))
            if limit is not None and len(names) > limit:
                raise FsError("RESOURCE_EXHAUSTED", f"directory has more than {limit} entries")
    return sorted(names)


def casefolded(directory: int) -> bool:
    """Whether an open directory folds case itself (ext4/f2fs `chattr +F`), whatever the volume does."""
    try:
        flags = fcntl.ioctl(directory, _FS_IOC_GETFLAGS, struct.pack("l", 0))
    except OSError:
        return False  # not supported on this file system: no per-directory folding
    return bool(struct.unpack("l", flags)[0] & _FS_CASEFOLD_FL)


def spelled_path(root: Path, canonical: str, case_insensitive: bool) -> str:
    """`canonical` with each existing component spelled as it is on disk (NFC), wherever the file system may
    fold names: a case-insensitive library, a casefold directory, another file system mounted inside. This is
    the path a policy must judge: on such a volume "/photos/Private/x" opens "/photos/private/x", and the deny
    on /photos/private/** must hold.

    A name the volume resolves but that no listed entry matches (HFS+ ignoring U+200C, say) is confirmed by
    inode; one that cannot be identified at all is refused rather than guessed. Components that do not exist
    keep the guest's spelling (nothing is there to open)."""
    parts = _components(canonical)
    if not parts:
        return canonical
    spelled: list[str] = []
    with _descriptors(canonical) as fds:
        fds.append(_open_root(root))
        root_device = os.fstat(fds[0]).st_dev
        folding = case_insensitive
        for i, text in enumerate(parts):
            # Below a mount point (a USB stick mounted inside the library, say) the probe made at `library add`
            # says nothing: such a directory, and everything under it, is treated as folding.
            folding = folding or casefolded(fds[-1]) or os.fstat(fds[-1]).st_dev != root_device
            if not folding:
                spelled.append(text)
                name = fs_names.to_bytes(text)
            else:
                found = _on_disk(fds[-1], text, canonical)
                if found is None:
                    spelled.extend(parts[i:])
                    break
                name = found
                spelled.append(unicodedata.normalize("NFC", fs_names.to_text(found)))
            if i == len(parts) - 1:
                break
            try:
                _descend(fds, os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError:  # not a directory, a link, gone: the open that follows reports it
                spelled.extend(parts[i + 1:])
                break
        _close(fds)
    return "/" + "/".join(spelled)


def _on_disk(parent: int, text: str, path: str) -> bytes | None:
    """The entry `text` names in a folding directory, or None when nothing is there. An answer from the
    (cached) index is confirmed by inode against what the volume itself resolves; when they disagree the
    directory is listed afresh, and as a last resort every entry's inode is compared."""
    wanted = fs_names.to_bytes(text)
    resolved = _inode(parent, wanted)  # what the volume opens for this spelling, if anything
    for fresh in (False, True):
        index, _ = dir_index.listing(parent, lambda fd: _entries(fd, path), fresh)
        candidates = (wanted,) if wanted in index.names else index.equivalent(text, True)
        if resolved is None:  # the volume opens nothing: a unique equivalent entry is the one meant
            if len(candidates) > 1:
                raise FsError("INVALID_ARGUMENT", f"{path} matches {len(candidates)} entries that differ only in "
                                                  "case; capengine opens none of them")
            if not candidates or _inode(parent, candidates[0]) is not None:
                return candidates[0] if candidates else None
            continue  # the index named an entry that is gone: list again
        same = [n for n in candidates if _inode(parent, n) == resolved]
        if len(same) == 1:
            return same[0]
    same = [n for n in _entries(parent, path) if _inode(parent, n) == resolved]
    if len(same) != 1:
        raise FsError("PERMISSION_DENIED", f"the volume resolves {path} to an entry capengine cannot identify "
                                           "unambiguously; refused")
    return same[0]


def _inode(parent: int, name: bytes) -> tuple[int, int] | None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino
