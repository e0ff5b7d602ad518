"""Open files beneath a library root, safe against every escape, including races.

The canonical path (capengine.policy.paths) already has no `..`, NUL or control characters; what remains is
symlinks, including one swapped in between a check and a use. So nothing is checked and then opened by name:
each component is opened relative to its parent's descriptor with O_NOFOLLOW, so a symlink anywhere, at any
moment, makes the open fail instead of leaving the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from capengine.errors import CapengineError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    return FsError("INTERNAL", f"cannot open {path}: {os.strerror(exc.errno or 0)}")


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


@contextlib.contextmanager
def open_beneath(root: Path, canonical: str, flags: int = os.O_RDONLY, mode: int = 0o600,
                 directory: bool = False) -> Iterator[int]:
    """Yield a descriptor for `canonical` under `root`; the caller must not close it."""
    parts = _components(canonical)
    last = len(parts) - 1
    with _descriptors(canonical) as fds:
        fds.append(os.open(root, _DIR_FLAGS))
        for i, name in enumerate(parts):
            if i == last and not directory:
                fds.append(os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fds[-1]))
            else:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
    try:
        yield fds[-1]
    finally:
        _close(fds)


@contextlib.contextmanager
def open_parent(root: Path, canonical: str, create: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (descriptor of the parent directory, final name), creating missing directories if asked."""
    parts = _components(canonical)
    if not parts:
        raise FsError("INVALID_ARGUMENT", "the library root has no parent")
    with _descriptors(canonical) as fds:
        fds.append(os.open(root, _DIR_FLAGS))
        for name in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fds[-1])
            fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
    try:
        yield fds[-1], parts[-1]
    finally:
        _close(fds)
