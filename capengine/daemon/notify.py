"""systemd readiness (sd_notify): READY=1 once the socket accepts, STOPPING=1 when a stop begins.

A no-op without $NOTIFY_SOCKET, so the daemon runs the same under systemd (Type=notify) and anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import socket


def sd_notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)
        return True
    return False
