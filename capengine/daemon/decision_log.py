"""The decision log: JSON Lines, one record per call, written off the hot path.

A call only appends to an in-memory queue; a writer thread batches records to the file, rotates by size
(`decisions.jsonl` -> `.1` -> `.2` ...), and `close()` drains everything (nothing lost on a clean stop).
Records keep the canonical request fields `capengine replay` needs to re-decide a call — extension,
operation, path, library and the policy-visible args — but never secrets: operations hide them from args
already, and any arg whose name is in `mask` is replaced by "***" (its digest still covers the real value).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from capengine.host.envelope import CallRecord

DEFAULT_MASK = ("password", "token", "secret", "api_key", "apikey", "authorization")
_STOP = object()


def args_digest(args: dict) -> str:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _masked(value: object, mask: frozenset[str]) -> object:
    if isinstance(value, dict):
        return {k: "***" if k.lower() in mask else _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


def to_record(when: float, call_id: str, call: CallRecord, mask: frozenset[str]) -> dict:
    return {
        "time": when, "call_id": call_id, "extension": call.extension,
        "operation": call.operation, "library": call.library, "path": call.path,
        "decision": ("allow" if call.allowed else "deny") if call.decided else "error", "code": call.code,
        "rules": list(call.rules), "errors": list(call.errors), "revision": call.revision,
        "duration_us": call.duration_us, "args_digest": args_digest(call.args),
        "args": _masked(call.args, mask),
    }


class DecisionLog:
    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 5,
                 mask: Iterable[str] = DEFAULT_MASK, tail_size: int = 1000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        self.mask = frozenset(m.lower() for m in mask)
        self._recent: collections.deque[tuple] = collections.deque(maxlen=tail_size)
        # Bounded: if the disk falls behind, calls wait for it (back-pressure) rather than memory growing
        # without limit or records being dropped.
        self._queue: queue.Queue = queue.Queue(maxsize=100_000)
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="capengine-decision-log", daemon=True)
        self._writer.start()

    def record(self, call: CallRecord) -> None:
        """The hot-path part: stamp the call and queue it. Building and writing the JSON is the writer's."""
        entry = (time.time(), uuid.uuid4().hex, call)
        self._recent.append(entry)
        self._queue.put(entry)

    def tail(self, count: int) -> list[dict]:
        entries = list(self._recent)[-count:] if count else []
        return [to_record(*entry, self.mask) for entry in entries]

    def _open(self):
        """Append mode, created 0600: the log names files and extensions, it is not for everyone to read."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def _write_loop(self) -> None:
        out = self._open()
        try:
            while True:
                batch = [self._queue.get()]
                while not self._queue.empty() and len(batch) < 1000:
                    batch.append(self._queue.get())
                stop = any(x is _STOP for x in batch)
                for rec in batch:
                    if rec is _STOP:
                        continue
                    line = json.dumps(to_record(*rec, self.mask), ensure_ascii=False, separators=(",", ":")) + "\n"
                    if out.tell() > 0 and out.tell() + len(line.encode()) > self.max_bytes:
                        out.close()
                        self._rotate()
                        out = self._open()
                    out.write(line)
                out.flush()
                if stop:
                    return
        finally:
            out.close()

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        """Drain the queue to disk and stop the writer."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._writer.join()


def read_records(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, record) for every line of a log file; None for a line that is not a JSON object (a torn
    last line after a crash), so that callers can say so rather than skip it silently."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                yield number, record if isinstance(record, dict) else None
