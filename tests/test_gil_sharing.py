"""A reload shares the GIL with job threads: the switch interval is short while it checks, restored after."""

from __future__ import annotations

import sys
import threading

import pytest
from helpers import policy_yaml, write

from capengine.daemon.gil_sharing import SHARING_SWITCH_INTERVAL, sharing_the_gil
from capengine.daemon.reload import PolicyManager
from capengine.host.operations import default_registry

SHORT = pytest.approx(SHARING_SWITCH_INTERVAL, abs=2e-6)  # CPython keeps the interval in whole microseconds
HALF = pytest.approx(SHARING_SWITCH_INTERVAL / 2, abs=2e-6)
RULE = """
- id: read-docs
  effect: allow
  operations: [vdfs.read_file]
  condition: path.under("{d}")
"""


def test_interval_is_short_inside_and_restored_after_nesting_and_errors():
    before = sys.getswitchinterval()
    with sharing_the_gil():
        assert sys.getswitchinterval() == SHORT
        with sharing_the_gil():
            assert sys.getswitchinterval() == SHORT
        assert sys.getswitchinterval() == SHORT  # the outer load is still running
    assert sys.getswitchinterval() == pytest.approx(before, abs=2e-6)
    with pytest.raises(RuntimeError), sharing_the_gil():
        raise RuntimeError("a failed load")
    assert sys.getswitchinterval() == pytest.approx(before, abs=2e-6)


def test_a_shorter_interval_set_by_the_embedder_is_kept():
    before = sys.getswitchinterval()
    sys.setswitchinterval(SHARING_SWITCH_INTERVAL / 2)
    try:
        with sharing_the_gil():
            assert sys.getswitchinterval() == HALF
        assert sys.getswitchinterval() == HALF
    finally:
        sys.setswitchinterval(before)


def test_overlapping_loads_on_two_threads_restore_once_both_end():
    before = sys.getswitchinterval()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[float] = []

    def first() -> None:
        with sharing_the_gil():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with sharing_the_gil():
            second_in.set()
            first_out.wait(10)
            seen.append(sys.getswitchinterval())  # the first ended; this one still runs

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [SHORT]
    assert sys.getswitchinterval() == pytest.approx(before, abs=2e-6)


def test_the_reloader_checks_and_swaps_with_the_short_interval(tmp_path):
    before = sys.getswitchinterval()
    policy = write(tmp_path, "p.yaml", policy_yaml("p", RULE.format(d="/docs")))
    seen: list[float] = []
    manager = PolicyManager(tmp_path, default_registry().names(), lambda s: seen.append(sys.getswitchinterval()),
                            settle=0.0)
    stopped = threading.Event()
    reloader = threading.Thread(target=manager.run_reloader, args=(stopped,))
    reloader.start()
    try:
        policy.write_text(policy_yaml("p", RULE.format(d="/photos")))
        result = manager.reload()
    finally:
        stopped.set()
        reloader.join(10)
    assert result["reloaded"] and result["changed"], result
    assert seen == [SHORT]
    assert sys.getswitchinterval() == pytest.approx(before, abs=2e-6)
