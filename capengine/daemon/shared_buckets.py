"""Rate-limit token buckets in shared memory, for the daemon's worker processes: exact across workers at the
cost of one lock per call, with no round trip to the daemon.

Why not ask the daemon: a round trip to a daemon thread added 43-265 us per limited call on a busy machine
(waiting to be scheduled), against 5.5 us for an in-process bucket. Here every worker maps the same memfd (the
daemon creates it and passes it at start) and takes tokens under `lockf` on it, plus a thread lock (POSIX
record locks do not exclude threads of one process).

A bucket is a slot keyed by the limit's identity (its policy, extensions, operations, rate, burst and cost, not
where it is written: the same identity RateLimiter.inherit uses) and the namespace it charges. So a reload that
keeps a limit keeps its buckets, and a new or changed limit starts full, as in-process. At each reload commit
the daemon drops the slots of limits neither the new nor the previous revision has (compact; they become
tombstones, so no kept bucket moves and none can be lost and start full).

Fail closed, whatever happens to the table: a pair is looked for in at most MAX_PROBES slots, and a call that
finds them all taken is refused (the table is full for it) at the cost of those reads, never a scan of the
table under the lock; a lock that a stopped process holds refuses calls after LOCK_TIMEOUT instead of hanging
every worker; the memfd is sealed against resizing (a shrink would SIGBUS every worker); a file without MAGIC
is refused; a bucket holding a value no bucket can hold reads as empty, never as full.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence

import attrs

from capengine.errors import CapengineError
from capengine.host.rate_limiter import RateLimiter, ScopedLimit
from capengine.policy.model import Policy

SLOT = struct.Struct("=QQdd")  # limit key (0: empty, TOMBSTONE: dropped), owner key, tokens, updated (monotonic)
HEADER = struct.Struct("=QQ16x")  # MAGIC, the committed reload epoch (worker_process); one SLOT in size
MAGIC = 0x31_5354_4b43_5541_43  # "CAUCKTS1": a file that is not a table fails the start, not a call
TOMBSTONE = 2  # a dropped bucket: lookups go past it, inserts reuse it (keys are odd: never 2)
DEFAULT_SLOTS = 65536  # 2 MiB: (limit, namespace) pairs
MAX_PROBES = 64  # slots looked at per lookup: a full (or crowded) table costs at most this, never a whole scan
LOCK_TIMEOUT = 5.0  # seconds a call waits for the table's lock before it is refused (a stopped holder)
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL  # mapped pages can never vanish (SIGBUS)
log = logging.getLogger("capengine.daemon.shared_buckets")


class TableError(CapengineError):
    """The table cannot answer (its lock is held by a stalled process, or it is not a table): the call is
    refused, never let through."""


def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()) | 1


def limit_key(scoped: ScopedLimit) -> int:
    lim = scoped.limit
    return _key(repr((scoped.policy, scoped.extensions, lim.operations, lim.count, lim.per_seconds, lim.burst,
                      lim.cost)))


def limit_keys(policies: Iterable[Policy]) -> frozenset[int]:
    """The keys of every limit a set declares (what a reload commit keeps)."""
    return frozenset(limit_key(s) for s in RateLimiter(policies).limits)


@attrs.frozen
class Entry:
    """One limit as a call charges it."""

    key: int
    burst: float
    rate: float
    cost: float
    name: str  # "<policy>/limits/<index>": what a refusal names

    @classmethod
    def of(cls, scoped: ScopedLimit) -> Entry:
        lim = scoped.limit
        return cls(limit_key(scoped), float(lim.burst), scoped.rate, float(lim.cost),
                   f"{scoped.policy}/limits/{scoped.index}")


class SharedBuckets:
    """The table: a header (MAGIC, the committed reload epoch), then SLOT records, open addressing with at most
    MAX_PROBES probes. Every value read from it is checked before it is trusted (see _tokens)."""

    lock_timeout = LOCK_TIMEOUT

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < 2 * SLOT.size:
            raise TableError(f"the rate-limit table (fd {fd}) is {size} bytes: too small to be a table")
        self.fd = fd
        self.slots = size // SLOT.size - 1
        self._probes = min(MAX_PROBES, self.slots)
        self._map = mmap.mmap(fd, (self.slots + 1) * SLOT.size)
        if HEADER.unpack_from(self._map, 0)[0] != MAGIC:
            self._map.close()
            raise TableError(f"the rate-limit table (fd {fd}) does not start with the table's magic number")
        # The epoch word, read on every call of a worker: a ctypes view is one aligned 8-byte load (about 50 ns)
        # where struct.unpack_from builds a tuple (about 300 ns).
        self._epoch = ctypes.c_uint64.from_buffer(self._map, 8)
        self._lock = threading.Lock()
        self._owners: dict[str, int] = {}
        self._complained = 0.0

    @classmethod
    def create(cls, slots: int = DEFAULT_SLOTS) -> SharedBuckets:
        """A new table in a sealed memfd: nobody (a worker's bug included) can shrink it under the mappings."""
        fd = os.memfd_create("capengine-rate-limits", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, (slots + 1) * SLOT.size)  # zero-filled: every slot empty
        os.pwrite(fd, HEADER.pack(MAGIC, 0), 0)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return cls(fd)

    # the reload epoch (worker_process: a commit is this one write, seen by every worker's next call) ----------
    def epoch(self) -> int:
        word = self._epoch
        while True:  # an 8-byte load is not promised atomic by Python: read until two reads agree
            first = word.value
            if word.value == first:
                return first

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    # buckets ------------------------------------------------------------------------------------------------
    def _owner(self, owner: str) -> int:
        key = self._owners.get(owner)
        if key is None:
            if len(self._owners) > 65536:
                self._owners.clear()
            key = self._owners[owner] = _key(owner)
        return key

    def _slot(self, limit: int, owner: int) -> tuple[int, bool] | None:
        """(offset, found) of the pair's slot, or of the free slot it would take; None when the MAX_PROBES
        slots where it may live are all taken (the table is full for it)."""
        start = (limit * 31 + owner) % self.slots
        free = None
        for probe in range(self._probes):
            offset = (1 + (start + probe) % self.slots) * SLOT.size
            key, who, _, _ = SLOT.unpack_from(self._map, offset)
            if key == limit and who == owner:
                return offset, True
            if key == 0:  # the end of the chain: the pair is not further on
                return (offset if free is None else free), False
            if key == TOMBSTONE and free is None:
                free = offset
        return None if free is None else (free, False)

    def _locked(self) -> _Held:
        return _Held(self)

    def _complain(self, message: str) -> None:
        """Once a minute at most: a refusal's message says "see the daemon's log", so the log must say it."""
        now = time.monotonic()
        if now - self._complained >= 60.0 or not self._complained:
            self._complained = now
            log.error("%s", message)

    def _impossible(self, entry: Entry, tokens: float, updated: float) -> float:
        self._complain(f"the shared rate-limit table holds an impossible bucket for {entry.name} (tokens "
                       f"{tokens!r}, updated {updated!r}); it is treated as empty")
        return 0.0

    def acquire(self, entries: Sequence[Entry], owner: str, now: float) -> tuple[float, str | None]:
        """RateLimiter.acquire's answer for the limits `entries` applying to a call charged to `owner`: all
        the tokens taken and (0.0, None), or none and (seconds to wait, the limit that refused). A table that
        is full for the call, or whose lock cannot be had, refuses it.

        A bucket holding a value no bucket can hold (tokens not in [0, burst], a stamp not in [0, now + 1]: NaN
        and infinities included; a corrupted or tampered table) is read as empty, never as full: fail closed.
        One function on purpose: this is every limited call's cost (about 5 us, most of it the two lockf)."""
        who = self._owner(owner)
        taken: list[tuple[int, float, float]] = []
        wait, refused = 0.0, None
        try:
            with self._locked():
                for entry in entries:
                    found = self._slot(entry.key, who)
                    if found is None:
                        message = (f"the shared rate-limit table is full ({self.slots} slots, {MAX_PROBES} probed "
                                   f"for {entry.name}); see the daemon's log")
                        self._complain(f"{message}: a call was refused; the limits of the policy set times the "
                                       "namespaces they charge exceed the table")
                        return 1.0, f"{entry.name} ({message})"
                    offset, exists = found
                    if exists:
                        _, _, tokens, updated = SLOT.unpack_from(self._map, offset)
                        if 0.0 <= tokens <= entry.burst and 0.0 <= updated <= now + 1.0:
                            tokens = min(entry.burst, tokens + (now - updated) * entry.rate)
                        else:
                            tokens = self._impossible(entry, tokens, updated)
                    else:
                        tokens = entry.burst
                    if tokens < entry.cost:  # cost <= burst is a load-time check, so waiting always helps
                        needed = (entry.cost - tokens) / entry.rate
                        if needed > wait:
                            wait, refused = needed, entry.name
                    taken.append((offset, tokens, entry.cost))
                    SLOT.pack_into(self._map, offset, entry.key, who, tokens, now)  # claims the slot for the next
                if refused is not None:
                    return wait, refused
                for offset, tokens, cost in taken:
                    SLOT.pack_into(self._map, offset, SLOT.unpack_from(self._map, offset)[0], who, tokens - cost,
                                   now)
                return 0.0, None
        except TableError as exc:
            self._complain(str(exc))
            return 1.0, f"{entries[0].name} (refused: {exc})"

    def compact(self, keep: Iterable[int]) -> int:
        """Drop the buckets of every limit not in `keep` (a reload commit: the new and previous revisions'
        limits); returns how many buckets remain. Dropped slots become tombstones: nothing kept moves, so no
        kept bucket can fail to fit again (a lost bucket would start full: over the limit)."""
        wanted = set(keep)
        kept = 0
        with self._locked():
            for index in range(self.slots):
                offset = (1 + index) * SLOT.size
                key = SLOT.unpack_from(self._map, offset)[0]
                if key in wanted:
                    kept += 1
                elif key not in (0, TOMBSTONE):
                    SLOT.pack_into(self._map, offset, TOMBSTONE, 0, 0.0, 0.0)
        return kept

    def close(self) -> None:
        with self._lock:
            if not self._map.closed:
                del self._epoch  # the view pins the mapping
                self._map.close()
                os.close(self.fd)


class _Held:
    """Both locks: the thread lock (threads of this process) and lockf (other processes), each waited for at
    most `lock_timeout`: a holder that is stopped (SIGSTOP, a debugger) must not hang every worker's calls.
    A holder that dies loses its lockf lock in the kernel."""

    def __init__(self, buckets: SharedBuckets) -> None:
        self.buckets = buckets

    def __enter__(self) -> None:
        buckets = self.buckets
        timeout = buckets.lock_timeout
        if not buckets._lock.acquire(blocking=False) and not buckets._lock.acquire(timeout=timeout):
            raise TableError(f"its lock was not free within {timeout:g} s in this process")
        try:
            fcntl.lockf(buckets.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the common case: free at once
        except OSError as exc:
            try:
                self._wait(exc, timeout)
            except BaseException:
                buckets._lock.release()
                raise

    def _wait(self, exc: OSError, timeout: float) -> None:
        """Another process holds lockf: poll for it (lockf itself cannot wait with a bound)."""
        deadline = time.monotonic() + timeout
        pause = 0.00005
        while True:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise TableError(f"cannot lock it: {exc}") from None
            if time.monotonic() >= deadline:
                raise TableError(f"its lock is held by another process that has not let go for {timeout:g} s "
                                 "(stopped or stuck)")
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
            try:
                fcntl.lockf(self.buckets.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as again:
                exc = again

    def __exit__(self, *_: object) -> None:
        try:
            fcntl.lockf(self.buckets.fd, fcntl.LOCK_UN)
        finally:
            self.buckets._lock.release()
