"""Rate-limit buckets in shared memory (the daemon's worker processes): exact across processes, the reload
rules of the in-process limiter (unchanged limits keep their buckets, changed ones start full), compaction,
and a full table refusing calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import policy_yaml
from wasm_helpers import policy_set

from capengine.daemon.shared_buckets import Entry, SharedBuckets, limit_keys
from capengine.host.rate_limiter import RateLimiter

PING = "- {id: ping, effect: allow, operations: [test.ping]}\n"


def limited(rate: str = "10/second", burst: int = 50) -> str:
    return policy_yaml("p", PING) + f"  limits:\n    - {{operations: [test.*], rate: {rate}, burst: {burst}}}\n"


def entries(text: str) -> list[Entry]:
    return [Entry.of(s) for s in RateLimiter(policy_set(text).policies).limits]


def test_exact_across_processes_taking_tokens_at_once():
    """6 processes x 100 attempts at the same instant against a burst of 50: exactly 50 pass."""
    buckets = SharedBuckets.create()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from wasm_helpers import policy_set
        from capengine.daemon.shared_buckets import Entry, SharedBuckets
        from capengine.host.rate_limiter import RateLimiter
        entries = [Entry.of(s) for s in RateLimiter(policy_set({limited()!r}).policies).limits]
        buckets = SharedBuckets(int(sys.argv[1]))
        sys.stdin.read()  # all start together
        print(sum(buckets.acquire(entries, "com.example.a", 1000.0)[1] is None for _ in range(100)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(buckets.fd)], pass_fds=(buckets.fd,),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = [p.communicate("", timeout=120)[0] for p in procs]
    assert sum(int(o) for o in outputs) == 50
    wait, limit = buckets.acquire(entries(limited()), "com.example.a", 1000.0)
    assert limit == "p/limits/0" and wait == pytest.approx(0.1)
    assert buckets.acquire(entries(limited()), "com.example.a", 1001.0) == (0.0, None)  # refilled at 10/s
    assert buckets.acquire(entries(limited()), "com.example.b", 1000.0) == (0.0, None)  # per namespace


def test_reload_keeps_unchanged_limits_and_starts_changed_ones_full_and_compacts():
    buckets = SharedBuckets.create()
    old, same, changed = entries(limited()), entries(limited()), entries(limited(burst=60))
    assert [e.key for e in old] == [e.key for e in same] != [e.key for e in changed]
    for _ in range(50):
        assert buckets.acquire(old, "ns", 1000.0) == (0.0, None)
    assert buckets.acquire(same, "ns", 1000.0)[1] == "p/limits/0"  # a reload that keeps it: still empty
    assert buckets.acquire(changed, "ns", 1000.0) == (0.0, None)  # a changed limit starts full
    keep = limit_keys(policy_set(limited(burst=60)).policies)
    assert buckets.compact(keep) == 1  # the old limit's bucket is dropped, the new one's kept
    assert buckets.acquire(old, "ns", 1000.0) == (0.0, None)  # full again: its bucket was dropped


def test_a_full_table_refuses_and_says_so():
    buckets = SharedBuckets.create(slots=4)
    es = entries(limited())
    for owner in ("a", "b", "c", "d"):
        assert buckets.acquire(es, owner, 1000.0) == (0.0, None)
    wait, limit = buckets.acquire(es, "e", 1000.0)
    assert wait > 0 and "table is full" in limit
    assert buckets.acquire(es, "a", 1000.0) == (0.0, None)  # known buckets still work


def hold_lock(buckets: SharedBuckets) -> subprocess.Popen:
    """Another process inside the table's lock (it says so before returning), as a worker mid-update is."""
    script = textwrap.dedent("""
        import sys, time
        from capengine.daemon.shared_buckets import SharedBuckets
        buckets = SharedBuckets(int(sys.argv[1]))
        buckets._locked().__enter__()
        print("held", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script, str(buckets.fd)], pass_fds=(buckets.fd,),
                              stdout=subprocess.PIPE, text=True)
    if holder.stdout is None or holder.stdout.readline() != "held\n":
        holder.kill()
        holder.wait()
        raise AssertionError("the lock holder did not start")
    return holder


def test_a_worker_killed_while_holding_the_lock_blocks_no_other():
    """kill -9 of a process inside the table's lock (mid-update): the kernel drops its lockf lock, so the next
    process takes tokens at once and the count stays exact (a half-written call charged nothing)."""
    import signal
    import threading

    buckets = SharedBuckets.create()
    es = entries(limited())
    holder = hold_lock(buckets)
    try:
        got: list[tuple[float, str | None]] = []
        taker = threading.Thread(target=lambda: got.append(buckets.acquire(es, "ns", 1000.0)), daemon=True)
        taker.start()
        taker.join(0.5)
        assert not got  # excluded while the other process holds the lock
        os.kill(holder.pid, signal.SIGKILL)
        taker.join(30)
        assert got == [(0.0, None)]
    finally:
        holder.kill()
        holder.wait()
    taken = 1 + sum(buckets.acquire(es, "ns", 1000.0)[1] is None for _ in range(100))
    assert taken == 50
