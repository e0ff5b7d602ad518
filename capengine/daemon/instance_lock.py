"""One daemon per data directory and per socket: an exclusive flock held for the daemon's whole life.

Why: a second daemon on the same data directory (started with another --socket, or by a second unit) would run a
second decision-log writer appending to (and repairing the tail of) the first one's log, keep a second job
table, and its --resume-interrupted would run again the jobs the first is still running. Two daemons starting
at once on one socket would both find it stale, and the later unlink would orphan the earlier daemon (running,
unreachable). The kernel drops a flock when its holder dies, however it dies (kill -9 included), so a crashed
daemon never leaves a stale lock and a restart needs no clean-up. The data directory's lock is on the directory
itself (DATA_DIR/daemon.pid only names the holder, for the message); the socket's is `SOCKET.lock`, never
removed: removing a lock file while another process has it open would let two hold "it".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from capengine.daemon.config import DaemonError


class InstanceLock:
    def __init__(self, path: Path, what: str, directory: bool = False) -> None:
        """Take the lock on `path` (a lock file, created if need be; or, with `directory`, the directory itself,
        which works on a read-only file system too, where the daemon must still start and fail closed), or raise
        DaemonError naming `what` and the pid that holds it."""
        self._pid_file = path / "daemon.pid" if directory else path
        flags = os.O_RDONLY | os.O_DIRECTORY if directory else os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DaemonError(f"cannot lock {what} ({path}): {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DaemonError(f"another daemon (pid {self._holder()}) is using {what}; stop it first, or give this "
                              "one its own --data-dir and --socket") from None
        self._fd: int | None = fd
        with contextlib.suppress(OSError):  # only for the message: a full or read-only disk must not refuse
            pid = os.open(self._pid_file, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(pid, 0)
                os.pwrite(pid, f"{os.getpid()}\n".encode(), 0)
            finally:
                os.close(pid)

    def _holder(self) -> str:
        try:
            with open(self._pid_file, "rb") as f:
                return f.read(32).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
