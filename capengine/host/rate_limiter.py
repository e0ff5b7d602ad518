"""Token buckets from the policies' `spec.limits`, per (extension, limit).

A limit in a policy applies to every extension its `extensions` globs match and every operation its own
`operations` globs match; each extension gets its own bucket per limit, keyed by its namespace (its id once
installed, a digest-derived name in development mode) so that a module merely claiming an id never drains or
shares the installed extension's buckets. A call takes `cost` tokens from every
bucket that applies, all or nothing, so two limits never half-charge a refused call. The clock is injected
so tests are exact without sleeping; one lock keeps the buckets exact under concurrent callers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import attrs

from capengine.policy import globs
from capengine.policy.model import Limit, Policy


@attrs.frozen
class ScopedLimit:
    policy: str
    index: int
    extensions: tuple[str, ...]
    limit: Limit

    @property
    def rate(self) -> float:
        return self.limit.count / self.limit.per_seconds

    def applies(self, extension: str, operation: str) -> bool:
        return (any(globs.glob_match(p, extension) for p in self.extensions)
                and any(globs.glob_match(p, operation) for p in self.limit.operations))


@attrs.define
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, policies: Iterable[Policy], clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = tuple(ScopedLimit(p.name, i, p.extensions, lim) for p in policies
                            for i, lim in enumerate(p.limits))
        self.clock = clock
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._applicable: dict[tuple[str, str], tuple[int, ...]] = {}
        self._lock = threading.Lock()
        # Which limits could apply to an extension: those naming it literally (by id: one probe) and those with
        # a pattern (tested one by one). Scanning every limit made an extension's first call after a load of
        # 10,000 one-extension policies cost ~4 ms; this is the engine's own split (rules by extension id).
        self._by_id: dict[str, list[int]] = {}
        self._patterned: list[int] = []
        for i, scoped in enumerate(self.limits):
            if all(globs.is_literal(p) for p in scoped.extensions):
                for name in dict.fromkeys(scoped.extensions):
                    self._by_id.setdefault(name, []).append(i)
            else:
                self._patterned.append(i)

    def inherit(self, old: RateLimiter) -> None:
        """Share the buckets (and the lock guarding them) of every limit `old` has unchanged, so that a reload
        which keeps a limit neither refills nor forgets its buckets, even for calls in flight across the swap."""
        def same(s: ScopedLimit) -> tuple:  # where the limit is written (its location) does not matter
            lim = s.limit
            return s.policy, s.extensions, lim.operations, lim.count, lim.per_seconds, lim.burst, lim.cost

        previous = {same(s): i for i, s in enumerate(old.limits)}
        mapping = {previous[same(s)]: i for i, s in enumerate(self.limits) if same(s) in previous}
        with old._lock:
            self._lock = old._lock
            for (extension, j), bucket in old._buckets.items():
                if j in mapping:
                    self._buckets[(extension, mapping[j])] = bucket

    def _which(self, extension: str, operation: str) -> tuple[int, ...]:
        key = (extension, operation)
        found = self._applicable.get(key)
        if found is None:
            candidates = sorted((*self._by_id.get(extension, ()), *self._patterned))  # in policy order
            found = tuple(i for i in candidates if self.limits[i].applies(extension, operation))
            if len(self._applicable) > 65536:
                self._applicable.clear()  # bounded against a stream of made-up operation names
            self._applicable[key] = found
        return found

    def acquire(self, extension: str, operation: str, namespace: str | None = None) -> tuple[float, str | None]:
        """Take the call's tokens and return (0.0, None), or take nothing and return the seconds until the call
        may pass and the limit that refused it ("<policy>/limits/<index>"). `extension` (the id) selects the
        limits; `namespace` (default: the id) selects the buckets."""
        which = self._which(extension, operation)
        owner = extension if namespace is None else namespace
        if not which:
            return 0.0, None
        with self._lock:
            now = self.clock()
            buckets = []
            wait, refused = 0.0, None
            for i in which:
                scoped = self.limits[i]
                bucket = self._buckets.get((owner, i))
                if bucket is None:
                    bucket = self._buckets[(owner, i)] = _Bucket(float(scoped.limit.burst), now)
                bucket.tokens = min(float(scoped.limit.burst), bucket.tokens + (now - bucket.updated) * scoped.rate)
                bucket.updated = now
                cost = scoped.limit.cost
                if bucket.tokens < cost:  # cost <= burst is a load-time check, so waiting always helps
                    needed = (cost - bucket.tokens) / scoped.rate
                    if needed > wait:
                        wait, refused = needed, f"{scoped.policy}/limits/{scoped.index}"
                buckets.append((bucket, cost))
            if refused is not None:
                return wait, refused
            for bucket, cost in buckets:
                bucket.tokens -= cost
            return 0.0, None
