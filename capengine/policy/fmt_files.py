"""The files `capengine fmt` reads and rewrites: only regular files, read without blocking, replaced atomically.

A policy directory is user input like the files in it: a FIFO named `x.yaml` would block a plain `open()`
forever, a symlink loop raises from deep inside pathlib, a half-written file on a full disk would lose the
policy. So every path is checked for what it is before it is read, and a rewrite goes to a temporary file in the
same directory that replaces the original only once it is completely written and flushed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import attrs

from capengine.errors import CapengineError
from capengine.policy.loader import MAX_FILE_BYTES


class FileProblem(CapengineError):
    """A path fmt cannot read or write; `message` says why and what to do, `line` where when known."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message, self.line = message, line


@attrs.frozen
class Found:
    path: Path
    problem: str | None = None  # why it cannot be formatted (reported, never skipped silently)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _classify(path: Path) -> str | None:
    """None for a regular file (through symlinks), else why fmt leaves it alone."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop; fix or remove the link"
        if path.is_symlink():
            return "a dangling symlink; fix or remove the link"
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"{_kind(mode)}, not a regular file; fmt reads only regular files"


def discover(paths: list[str]) -> list[Found]:
    """The YAML files under `paths` in a stable order, each with the reason it cannot be formatted, if any.
    A directory's `*.yaml`/`*.yml` entries that are not regular files are reported, not skipped."""
    out: list[Found] = []
    for raw in paths:
        p = Path(raw)
        if not os.path.lexists(p):
            out.append(Found(p, "no such file or directory"))
        elif p.is_dir():
            try:
                entries = sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml"))
            except OSError as exc:
                out.append(Found(p, f"cannot list the directory: {exc.strerror or exc}"))
                continue
            out.extend(Found(q, _classify(q)) for q in entries if not q.is_dir())
        else:
            out.append(Found(p, _classify(p)))
    return out


def read(path: Path) -> str:
    """The text of a regular file, without blocking on a FIFO swapped in after discovery."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"{_kind(info.st_mode)}, not a regular file; fmt reads only regular files")
        if info.st_size > MAX_FILE_BYTES:
            raise FileProblem(f"larger than {MAX_FILE_BYTES} bytes; not a policy file")
        data = f.read(MAX_FILE_BYTES + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"not UTF-8 (byte {exc.start}); save the file as UTF-8",
                          data[:exc.start].count(b"\n") + 1) from None


def replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a symlink stays a symlink (its target is rewritten), the mode is kept,
    and a failure at any point (a full disk, a size limit) leaves the original file as it was."""
    try:
        target = path.resolve(strict=True)
        mode = target.stat().st_mode & 0o7777
    except (OSError, RuntimeError) as exc:
        raise FileProblem(f"not rewritten: {exc}") from None
    tmp = target.with_name(f".{target.name}.fmt-{os.getpid()}")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        created = True
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        if created:
            tmp.unlink(missing_ok=True)
        raise FileProblem(f"not rewritten, the file is unchanged: {exc.strerror or exc}") from None
