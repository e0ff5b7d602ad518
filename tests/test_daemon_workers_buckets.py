"""Attacks on the worker processes' shared rate-limit table (shared_buckets): a tampered table, a table that
is not one, a lock holder that is stopped, and more (limit, namespace) pairs than the table holds. Each must
fail closed (refuse, say why) and never let a call through over its limit."""

from __future__ import annotations

import math
import os
import signal
import threading

import pytest
from helpers import policy_yaml
from test_shared_buckets import hold_lock
from wasm_helpers import policy_set

from capengine.daemon import shared_buckets
from capengine.daemon.shared_buckets import SLOT, Entry, SharedBuckets, TableError
from capengine.host.rate_limiter import RateLimiter


def entries(burst: int = 50) -> list[Entry]:
    text = policy_yaml("p", "- {id: ping, effect: allow, operations: [test.ping]}\n") + \
        f"  limits:\n    - {{operations: [test.*], rate: 10/second, burst: {burst}}}\n"
    return [Entry.of(s) for s in RateLimiter(policy_set(text).policies).limits]


def allowed(buckets: SharedBuckets, es: list[Entry], owner: str, now: float, tries: int = 100) -> int:
    return sum(buckets.acquire(es, owner, now)[1] is None for _ in range(tries))


def slot_offset(buckets: SharedBuckets, es: list[Entry], owner: str) -> int:
    found = buckets._slot(es[0].key, buckets._owner(owner))
    assert found is not None and found[1]
    return found[0]


@pytest.mark.parametrize(("tokens", "updated"), [
    (math.nan, 1000.0), (math.inf, 1000.0), (1e9, 1000.0), (-1.0, 1000.0), (51.0, 1000.0),
    (0.0, -math.inf), (0.0, -1e300), (0.0, math.nan), (0.0, 1e18)])
def test_a_tampered_bucket_is_read_as_empty_never_as_full(tokens, updated):
    """The bucket is exhausted, then its slot is overwritten with a value no bucket can hold: the next call
    must be refused (before: NaN, inf, huge tokens or a stamp at -inf refilled it to the burst)."""
    buckets = SharedBuckets.create(slots=64)
    es = entries()
    assert allowed(buckets, es, "ns", 1000.0) == 50
    offset = slot_offset(buckets, es, "ns")
    key, who, _, _ = SLOT.unpack_from(buckets._map, offset)
    SLOT.pack_into(buckets._map, offset, key, who, tokens, updated)
    assert allowed(buckets, es, "ns", 1000.0) == 0
    assert allowed(buckets, es, "ns", 1001.0) == 10  # it refills at its rate from empty, as after a refusal
    buckets.close()


def test_the_table_cannot_be_shrunk_under_the_workers_and_a_foreign_file_is_refused():
    """A truncated memfd would SIGBUS every worker on its next call: the table is sealed against it. A file
    that is not a table (no magic) is refused when a worker maps it, not used."""
    buckets = SharedBuckets.create(slots=64)
    with pytest.raises(PermissionError):
        os.ftruncate(buckets.fd, 0)
    with pytest.raises(PermissionError):
        os.ftruncate(buckets.fd, 1 << 30)
    assert allowed(buckets, entries(), "ns", 1000.0) == 50
    buckets.close()
    foreign = os.memfd_create("not-a-table")
    try:
        os.ftruncate(foreign, 64 * SLOT.size)
        with pytest.raises(TableError, match="magic"):
            SharedBuckets(foreign)
        with pytest.raises(TableError, match="too small"):
            os.ftruncate(foreign, 8)
            SharedBuckets(foreign)
    finally:
        os.close(foreign)


def test_a_stopped_lock_holder_gets_calls_refused_not_hung():
    """SIGSTOP a process inside the table's lock: the lock stays held (only death frees a lockf lock), so a
    call must be refused after the lock timeout, naming why, instead of hanging every worker's calls."""
    buckets = SharedBuckets.create(slots=64)
    buckets.lock_timeout = 0.5
    es = entries()
    holder = hold_lock(buckets)
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        got: list[tuple[float, str | None]] = []
        taker = threading.Thread(target=lambda: got.append(buckets.acquire(es, "ns", 1000.0)), daemon=True)
        taker.start()
        taker.join(10)
        assert got, "the call hung on a stopped lock holder"
        [(wait, limit)] = got
        assert wait > 0 and limit is not None and "has not let go" in limit
        with pytest.raises(TableError):
            buckets.compact([])
    finally:
        holder.kill()
        holder.wait()
    assert allowed(buckets, es, "ns", 1000.0) == 50  # the holder died: exact again
    buckets.close()


def test_more_limit_keys_than_the_table_holds_fail_closed_never_over_a_limit():
    """2,000 distinct (limit, namespace) pairs on a 256-slot table, each pair's burst 3, at one instant (no
    refill): a pair either has a bucket and gets exactly its 3 calls, or is refused with the table named;
    never a fourth call. Dropping half the limits (a reload's compact) frees slots without refilling those kept."""
    buckets = SharedBuckets.create(slots=256)
    limits = [Entry(key=(2 * i + 1) | 1, burst=3.0, rate=1.0, cost=1.0, name=f"p{i}/limits/0") for i in range(2000)]
    passed = {}
    for entry in limits:
        passed[entry.key] = allowed(buckets, [entry], "ns", 1000.0, tries=5)
    assert set(passed.values()) <= {0, 3}
    holders = [k for k, n in passed.items() if n == 3]
    assert 0 < len(holders) <= 256
    wait, why = buckets.acquire([limits[-1]], "other", 1000.0)
    assert wait > 0 and why is not None and "table is full" in why and "see the daemon's log" in why
    for entry in limits:  # a second pass: the buckets kept are empty, the others still refused
        assert allowed(buckets, [entry], "ns", 1000.0, tries=2) == 0
    keep = holders[: len(holders) // 2]
    assert buckets.compact(keep) == len(keep)
    for entry in limits:
        got = allowed(buckets, [entry], "ns", 1000.0, tries=5)
        assert got == (0 if entry.key in keep else got) and got in (0, 3)
    assert sum(allowed(buckets, [e], "ns", 1000.0, tries=5) for e in limits) == 0  # all empty or refused now
    buckets.close()


def test_a_refusal_by_a_full_table_looks_at_a_bounded_number_of_slots(monkeypatch):
    """A full default-size table (65,536 slots): a call for a pair it does not hold is refused after at most
    MAX_PROBES slots read, not a scan of the whole table under the lock every worker needs."""
    buckets = SharedBuckets.create()
    payload = b"".join(SLOT.pack(2 * i + 3, 7, 1.0, 0.0) for i in range(buckets.slots))
    buckets._map[SLOT.size:] = payload
    reads = 0

    class Counting:
        size = SLOT.size

        @staticmethod
        def unpack_from(buffer, offset=0):
            nonlocal reads
            reads += 1
            return SLOT.unpack_from(buffer, offset)

        pack_into = staticmethod(SLOT.pack_into)

    monkeypatch.setattr(shared_buckets, "SLOT", Counting)
    wait, why = buckets.acquire(entries(), "ns", 1000.0)
    assert why is not None and "table is full" in why
    assert reads <= shared_buckets.MAX_PROBES + 1
    buckets.close()
