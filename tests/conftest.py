"""Fixtures shared by the daemon test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from capengine.daemon.config import DaemonConfig
from capengine.daemon.server import Daemon


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
