"""Results remembered by the identity of their inputs, so a reload after one file of a thousand changed redoes
the work of that file only.

The loader hands out the very same Policy objects for files whose content did not change. IdentityMemo keeps
a value under the ids of the objects it was computed from (plus a hashable context), holding those objects
so that an id is never reused while its entry lives: a hit means every input is the very same object again
(a live object's id is unique). PerPolicy keeps one result per policy of a whole-set pass (lint, overlap)
from the previous run and recomputes only the policies whose neighbourhood changed. Both are bounded and
thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from capengine.policy.globs import is_literal
from capengine.policy.model import Policy

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], tuple[tuple[object, ...], T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, context: Hashable, inputs: Sequence[object], compute: Callable[[], T]) -> T:
        """`compute()`'s result for these very input objects in this context, computed once."""
        key = (context, tuple(map(id, inputs)))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:  # the entry holds its inputs alive: equal ids are the same objects
                self._entries.move_to_end(key)
                return hit[1]
        value = compute()
        with self._lock:
            self._entries[key] = (tuple(inputs), value)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        return value


class PerPolicy(Generic[T]):
    """One result per policy of a whole-set pass, reused from the previous run of the same context for every
    policy whose neighbourhood did not change. A policy's neighbourhood is every policy that can share an
    extension with it: those naming one of its literal extension ids, and every wildcard policy. So after one
    file changed, only policies sharing an extension id with its old or new version (and wildcard policies)
    are recomputed; a changed wildcard policy recomputes everything. "Changed" is by identity: the loader
    hands out the same Policy objects for unchanged files."""

    def __init__(self, contexts: int = 8) -> None:
        self.contexts = contexts
        self._previous: OrderedDict[Hashable, tuple[object, dict[int, tuple[Policy, T]]]] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, context: Hashable, owner: object, policies: Sequence[Policy],
            compute: Callable[[Policy], T]) -> list[T]:
        """`owner`: an object the results also depend on (the operation catalog): reused only for the same one."""
        with self._lock:
            entry = self._previous.get(context)
        previous = entry[1] if entry is not None and entry[0] is owner else None
        affected: Callable[[Policy], bool] = lambda policy: True  # noqa: E731
        if previous is not None:
            present = {id(p) for p in policies}
            changed = [p for p in policies if id(p) not in previous]
            changed += [p for p, _ in previous.values() if id(p) not in present]
            if all(_literal(p) for p in changed):
                touched = {e for p in changed for e in p.extensions}
                affected = lambda policy: not _literal(policy) or not touched.isdisjoint(policy.extensions)  # noqa: E731
        results: dict[int, tuple[Policy, T]] = {}
        out = []
        for policy in policies:
            kept = previous.get(id(policy)) if previous is not None else None
            value = kept[1] if kept is not None and not affected(policy) else compute(policy)
            results[id(policy)] = (policy, value)
            out.append(value)
        with self._lock:
            self._previous[context] = (owner, results)
            self._previous.move_to_end(context)
            while len(self._previous) > self.contexts:
                self._previous.popitem(last=False)
        return out


def _literal(policy: Policy) -> bool:
    return all(is_literal(p) for p in policy.extensions)
