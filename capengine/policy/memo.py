"""Results of whole-set passes (lint, overlap) remembered per policy, keyed by the identity of their inputs.

Why: a reload after one file of a thousand changed must not redo the cross-policy lints for the other 999.
The loader hands out the very same Policy objects for files whose content did not change, and a policy's
lint findings depend only on it, the policies it can meet (those sharing an extension id, and wildcard ones)
and the run's context (operation names, catalog). So a result is kept under the ids of those objects, with
the objects themselves held so that an id is never reused while its entry lives (so a hit means every input
is the very same object again: a live object's id is unique). Bounded (least recently used entries go first)
and thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

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
