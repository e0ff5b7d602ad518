"""A real case-insensitive volume for tests: a read-mostly FUSE pass-through over a backing directory whose
name lookups fold case and Unicode normalisation (like APFS, exFAT or NTFS), while listings show each entry as
it is spelled on disk. Run as `python casefold_fuse.py BACKING MOUNTPOINT` (foreground; unmount with
`fusermount -u MOUNTPOINT`). Needs libfuse2 and the fusepy package; tests skip without them.
"""

from __future__ import annotations

import errno
import os
import sys
import unicodedata

from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


class CaseFolding(Operations):  # type: ignore[misc]
    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)

    def _real(self, path: str) -> str:
        """The backing path for `path`, each component matched by folded name."""
        real = self.backing
        for part in [p for p in path.split("/") if p]:
            candidate = os.path.join(real, part)
            if not os.path.lexists(candidate):
                try:
                    names = os.listdir(real)
                except OSError:
                    raise FuseOSError(errno.ENOENT) from None
                matches = [n for n in names if _fold(n) == _fold(part)]
                if not matches:
                    raise FuseOSError(errno.ENOENT)
                candidate = os.path.join(real, matches[0])
            real = candidate
        return real

    def getattr(self, path, fh=None):
        st = os.lstat(self._real(path))
        return {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime",
                                                  "st_mtime", "st_ctime", "st_ino")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._real(path))]

    def readlink(self, path):
        return os.readlink(self._real(path))

    def open(self, path, flags):
        return os.open(self._real(path), flags & ~os.O_CREAT)

    def create(self, path, mode, fi=None):
        parent, name = os.path.split(path)
        return os.open(os.path.join(self._real(parent), name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def release(self, path, fh):
        os.close(fh)

    def unlink(self, path):
        os.unlink(self._real(path))

    def mkdir(self, path, mode):
        parent, name = os.path.split(path)
        real_parent = self._real(parent)
        if any(_fold(n) == _fold(name) for n in os.listdir(real_parent)):
            raise FuseOSError(errno.EEXIST)
        os.mkdir(os.path.join(real_parent, name), mode)

    def statfs(self, path):
        st = os.statvfs(self.backing)
        return {key: getattr(st, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}


if __name__ == "__main__":
    FUSE(CaseFolding(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True, use_ino=True)
