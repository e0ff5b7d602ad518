"""The control client (`capengine ctl`): one JSON-RPC call, with connect retries and a readiness wait."""

from __future__ import annotations

import errno
import json
import socket
import time
from pathlib import Path

from capengine.errors import CapengineError

_RETRYABLE = (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT)


class NoDaemon(CapengineError):
    """Nothing is listening at the socket path (or it went away mid-call)."""


def connect(socket_path: Path, wait: float = 0.0, timeout: float = 60.0) -> socket.socket:
    """Connect, retrying a full backlog (EAGAIN) for a few seconds and a missing/refusing socket for `wait`
    seconds (the daemon still starting)."""
    deadline = time.monotonic() + wait
    busy_deadline = time.monotonic() + max(wait, 5.0)
    delay = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
            return sock
        except OSError as exc:
            sock.close()
            now = time.monotonic()
            retry = (exc.errno == errno.EAGAIN and now < busy_deadline) or (exc.errno in _RETRYABLE and now < deadline)
            if not retry:
                if exc.errno in _RETRYABLE:
                    raise NoDaemon(f"no daemon listening at {socket_path} ({exc.strerror})") from None
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def call(socket_path: Path, method: str, params: dict | None = None, timeout: float = 60,
         wait: float = 0.0) -> dict:
    """One call; returns the reply object ({"result": ...} or {"error": ...})."""
    with connect(Path(socket_path), wait, timeout) as sock:
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode()
                     + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NoDaemon(f"the daemon at {socket_path} closed the connection without replying")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise NoDaemon(f"the daemon at {socket_path} sent {data[:80]!r}, not a JSON-RPC reply")
    return reply
