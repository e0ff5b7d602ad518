"""Fixtures shared by the test modules: a host with small limits, a daemon started in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from wasm_helpers import make_host

from capengine.daemon.config import DaemonConfig
from capengine.daemon.server import Daemon
from capengine.host.extension_host import Host


@pytest.fixture
def host(tmp_path) -> Iterator[Host]:
    """A host with a 2 s CPU limit and 4 MiB of guest memory (modules that define their own `host` override it)."""
    h = make_host(tmp_path, cpu_seconds=2.0, memory_bytes=4 * 1024 * 1024)
    yield h
    h.close()


@pytest.fixture
def started() -> Iterator[Callable[[DaemonConfig], Daemon]]:
    """Start in-process daemons; every one started is stopped when the test ends, whatever it did."""
    daemons: list[Daemon] = []

    def start(config: DaemonConfig) -> Daemon:
        daemon = Daemon(config)
        daemons.append(daemon)
        daemon.start()
        return daemon
    yield start
    for daemon in daemons:
        daemon.stop()
