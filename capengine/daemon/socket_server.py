"""The control socket: one selector thread owns every connection; handlers run in two bounded thread pools.

Why this shape: thread-per-connection let 5,000 idle clients make 5,000 threads, a 1 GB line without a
newline grow memory without bound, a slow client hold a thread forever, and a full fd table spin the accept
loop. Here:
- the listen backlog is the system maximum (bursts of clients queue in the kernel instead of failing);
- at most `max_connections` are open; the next one gets a -32001 reply with retry_after_ms and is closed;
- a request line is at most `max_line` bytes (longer: -32600, then the connection closes);
- a connection that does not complete a request within `idle_timeout` seconds is closed;
- at EMFILE/ENFILE the listener is paused briefly (no busy loop), connections already open keep working;
- requests on one connection are answered in order, one at a time; replies are written by the selector
  thread without blocking; a client that went away is just closed (no BrokenPipe tracebacks);
- `shutdown()` stops accepting, lets every request already received finish, and delivers its reply before
  closing (bounded by a drain timeout).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from capengine.daemon.rpc import INVALID_REQUEST, OVERLOADED, encode, error

log = logging.getLogger("capengine.daemon.socket_server")

LineHandler = Callable[[bytes], "bytes | None"]


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "busy", "eof", "close_after_write", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False
        self.eof = False
        self.close_after_write = False
        self.deadline = deadline


class ControlServer:
    def __init__(self, path: Path, handle: LineHandler, *, is_job: Callable[[bytes], bool] = lambda line: False,
                 max_connections: int = 512, max_line: int = 1024 * 1024, idle_timeout: float = 60.0,
                 control_workers: int = 4, job_workers: int = 64) -> None:
        self.path, self.handle, self.is_job = path, handle, is_job
        self.max_connections, self.max_line, self.idle_timeout = max_connections, max_line, idle_timeout
        self._control = ThreadPoolExecutor(control_workers, thread_name_prefix="capengine-ctl")
        self._jobs = ThreadPoolExecutor(job_workers, thread_name_prefix="capengine-job")
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._done: queue.SimpleQueue[tuple[_Conn, bytes | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._paused_until = 0.0
        self._draining = False
        self._stop_accepting = False
        self._finished = threading.Event()
        self.refused_connections = 0

    # setup ------------------------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the socket file 0600 (only the owner can control the daemon) and listen."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    @property
    def connections(self) -> int:
        return len(self._conns)

    # the loop --------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """The selector loop; returns when a shutdown has drained. Restartable after an unexpected error."""
        while not self._finished.is_set():
            now = time.monotonic()
            if self._stop_accepting and self._listener is not None:
                listener, self._listener = self._listener, None
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(listener)
                listener.close()
            if self._listener is not None and self._paused_until and now >= self._paused_until:  # after EMFILE
                self._paused_until = 0.0
                self._selector.register(self._listener, selectors.EVENT_READ, "listen")
            for key, events in self._selector.select(timeout=0.5):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wakeups()
                else:
                    conn = key.data
                    if events & selectors.EVENT_READ:
                        self._read(conn)
                    if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                        self._flush(conn)
            self._drain_wakeups()
            self._expire(time.monotonic())
            if self._draining and not any(c.busy or c.outbuf for c in self._conns.values()):
                for conn in list(self._conns.values()):
                    self._close(conn)
                self._finished.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept control connections: %s; pausing the listener for 1 s", exc)
                    self._selector.unregister(self._listener)
                    self._paused_until = time.monotonic() + 1.0
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                raise
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections:
                self.refused_connections += 1
                with contextlib.suppress(OSError):
                    sock.send(encode(error(None, OVERLOADED, f"too many control connections "
                                                             f"({self.max_connections}); retry later",
                                           {"retry_after_ms": 200})))
                sock.close()
                continue
            conn = _Conn(sock, time.monotonic() + self.idle_timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            conn.eof = True
            self._set_events(conn)
            if not conn.busy and not conn.outbuf and b"\n" not in conn.inbuf:
                self._close(conn)
            else:
                self._next(conn)
            return
        conn.inbuf += data
        if b"\n" not in conn.inbuf and len(conn.inbuf) > self.max_line:
            conn.inbuf.clear()
            conn.eof = True
            self._reply(conn, encode(error(None, INVALID_REQUEST, f"request line longer than {self.max_line} "
                                                                  "bytes; the connection is closed")))
            conn.close_after_write = True
            return
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        """Start the next complete request line of a connection, if it is idle."""
        while not conn.busy and b"\n" in conn.inbuf:
            line, _, rest = bytes(conn.inbuf).partition(b"\n")
            conn.inbuf = bytearray(rest)
            if len(line) > self.max_line:
                self._reply(conn, encode(error(None, INVALID_REQUEST, f"request line longer than {self.max_line} "
                                                                      "bytes")))
                continue
            if not line.strip():
                continue
            conn.busy = True
            pool = self._jobs if self.is_job(line) else self._control
            pool.submit(self._work, conn, line)
        if not conn.busy and conn.eof and not conn.outbuf:
            self._close(conn)

    def _work(self, conn: _Conn, line: bytes) -> None:
        try:
            reply = self.handle(line)
        except Exception:  # noqa: BLE001 - the handler answers errors itself; this is the last resort
            log.exception("control request failed")
            reply = None
        self._done.put((conn, reply))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                conn, reply = self._done.get_nowait()
            except queue.Empty:
                return
            conn.busy = False
            conn.deadline = time.monotonic() + self.idle_timeout
            if conn.sock.fileno() < 0:
                continue  # the client went away while its request ran
            if reply:
                self._reply(conn, reply)
            self._next(conn)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        conn.outbuf += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # EPIPE, ECONNRESET: the client left; nothing to report
            conn.outbuf.clear()
            self._close(conn)
            return
        if not conn.outbuf and (conn.close_after_write or (conn.eof and not conn.busy and b"\n" not in conn.inbuf)):
            self._close(conn)
            return
        self._set_events(conn)

    def _set_events(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        events = (0 if conn.eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.outbuf else 0)
        try:
            if events:
                self._selector.modify(conn.sock, events, conn)
            else:
                self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            if events:
                self._selector.register(conn.sock, events, conn)

    def _expire(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if conn.busy or conn.outbuf:
                continue
            if now > conn.deadline or (self._draining and b"\n" not in conn.inbuf):
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._conns.pop(fd, None)
        conn.sock.close()

    # stopping ------------------------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Close the listener and remove the socket file: new clients learn at once that no daemon is there."""
        self._stop_accepting = True
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Deliver the replies of every request already received, then close everything (bounded)."""
        self._draining = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if not self._finished.wait(timeout):
            log.warning("control connections still busy after %g s; closing them", timeout)
            self._finished.set()
        self._control.shutdown(wait=False, cancel_futures=True)
        self._jobs.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
