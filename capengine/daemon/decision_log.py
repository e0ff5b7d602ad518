"""The decision log: JSON Lines, one record per call, written off the hot path by a writer that cannot die.

A call only appends to an in-memory backlog; a writer thread batches records to the file, rotates by size
(`decisions.jsonl` -> `.1` -> `.2` ...), and `close()` drains everything (nothing lost on a clean stop).
Records keep the canonical request fields `capengine replay` needs to re-decide a call — extension,
operation, path, library and the policy-visible args — but never secrets: operations hide them from args
already, and any arg whose name is in `mask` is replaced by "***" (its digest still covers the real value).

Why the writer is built the way it is (the audit trail must never be silently lost, and must never freeze
the daemon):
- every record is encodable: a lone surrogate a guest smuggled into an arg is written escaped, and a record
  that still cannot be built is written as a stub naming the call and the problem;
- a write that fails (ENOSPC, EROFS, EIO) is cut back to the last whole record and retried with back-off; the
  records stay in the backlog, nothing is dropped, and `admit()` tells the host to refuse new calls with
  RESOURCE_EXHAUSTED ("decision log unavailable") until the log can be written again. A call is never made
  without its record, and `record()` never blocks;
- the same refusal starts when the writer cannot keep up (backlog at `high_water`) and ends at half of it;
  calls refused for that reason are counted per extension and operation and written as summary records;
- a torn last line left by a crash or a full disk is fenced with a newline on open, so the next record never
  merges into it;
- durability: every batch is written with write(2) before the writer takes the next one, and fsync'd at
  least every `fsync_interval` seconds, on rotation and on close (docs/daemon.md states the promise).
"""

from __future__ import annotations

import collections
import datetime
import errno
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from capengine.host.envelope import CallRecord, ErrorCode

log = logging.getLogger("capengine.daemon.decision_log")

DEFAULT_MASK = ("password", "token", "secret", "api_key", "apikey", "authorization")
LOG_UNAVAILABLE = "decision log unavailable"  # the message prefix of calls refused because of the log
BATCH = 1000
LINGER = 0.05  # seconds the writer waits for records to accumulate before writing them as one batch
WAKE_DEPTH = 1024  # records queued at which the writer is woken at once
MAX_RETRY_DELAY = 5.0


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: records come many per second


def rfc3339(when: float) -> str:
    """UTC, microseconds, 'Z': sortable as text and parseable by every log tool."""
    global _second
    whole = int(when // 1)
    micros = round((when - whole) * 1_000_000)
    if micros >= 1_000_000 or when < 0:  # rounding carried into the next second: the slow, exact path
        return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="microseconds").replace(
            "+00:00", "Z")
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros:06d}Z"


# Built once: json.dumps with options builds an encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_ASCII_LINE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


def args_digest(args: Mapping[str, object]) -> str:
    if not args:
        return _EMPTY_DIGEST
    canonical = _CANONICAL.encode(args)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"{}").hexdigest()[:32]


def _masked(value: object, mask: frozenset[str]) -> object:
    if isinstance(value, dict):
        return {k: "***" if str(k).lower() in mask else _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


def to_record(when: float, call_id: str, call: CallRecord, mask: frozenset[str]) -> dict:
    return {
        "time": rfc3339(when), "call_id": call_id, "extension": call.extension,
        "operation": call.operation, "library": call.library, "path": call.path,
        "decision": ("allow" if call.allowed else "deny") if call.decided else "error", "code": call.code,
        "rules": list(call.rules), "errors": list(call.errors), "revision": call.revision,
        "duration_us": call.duration_us, "args_digest": args_digest(call.args),
        "args": _masked(call.args, mask),
    }


def encode_line(record: dict) -> bytes:
    """UTF-8 JSON, one line. Text a guest controls may hold lone surrogates (valid JSON, not UTF-8): such a
    record is written with \\u escapes instead, which is still exact JSON and always encodable."""
    text = _LINE.encode(record)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return _ASCII_LINE.encode(record).encode("ascii") + b"\n"


def _stub(when: float, call_id: str, call: CallRecord, problem: BaseException) -> bytes:
    """What is written when a record cannot be built at all: the call is still accounted for."""
    return encode_line({"time": rfc3339(when), "call_id": call_id, "extension": ascii(call.extension),
                        "operation": ascii(call.operation), "decision": "error", "code": ascii(call.code),
                        "record_error": f"{type(problem).__name__}: {problem}"[:500]})


def encode_call(when: float, call_id: str, call: CallRecord, mask: frozenset[str]) -> bytes:
    """The record line of one call; a stub naming the call and the problem when it cannot be built. Also used
    by the daemon's worker processes, which encode their records and send the lines (record_line)."""
    try:
        return encode_line(to_record(when, call_id, call, mask))
    except Exception as exc:  # noqa: BLE001 - one bad record never stops the writer
        log.exception("decision record for call %s could not be built; writing a stub", call_id)
        return _stub(when, call_id, call, exc)


def refused_by_log(call: CallRecord) -> bool:
    """A call refused because the log was unavailable: counted into a summary record, not logged one by one."""
    return not call.decided and call.code == ErrorCode.RESOURCE_EXHAUSTED and call.message.startswith(LOG_UNAVAILABLE)


@attrs.frozen
class _Entry:
    when: float
    call_id: str
    call: CallRecord | None  # None for a summary of refused calls, or a line encoded elsewhere
    summary: dict | None = None
    line: bytes | None = None  # encoded by a worker process (record_line)


@attrs.frozen
class LogState:
    """The writer as health reports it."""

    state: str  # "ok" | "failing" (writes fail, retrying) | "throttled" (backlog full) | "closed"
    backlog: int  # records waiting to be written
    written: int
    failures: int  # failed write attempts so far
    last_error: str | None
    refused_calls: int  # calls refused because the log was unavailable
    fenced_tails: int  # torn last lines fenced on open
    writer_alive: bool
    path: str


class DecisionLog:
    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 5,
                 mask: Iterable[str] = DEFAULT_MASK, high_water: int = 100_000, fsync_interval: float = 1.0,
                 start: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes, self.keep = max_bytes, keep
        self.mask = frozenset(m.lower() for m in mask)
        self.high_water, self.fsync_interval = high_water, fsync_interval
        self._cond = threading.Condition()
        self._pending: collections.deque[_Entry] = collections.deque()
        self._refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self._fd: int | None = None
        self._size = 0
        self._reopen = False
        self._closing = False
        self._closed = False
        self._throttled = False
        self._last_error: str | None = None
        self._failures = 0
        self._written = 0
        self._refused = 0
        self._fenced = 0
        self._last_sync = time.monotonic()
        self._writer: threading.Thread | None = None
        self._id_prefix = uuid.uuid4().hex[:24]
        self._ids = itertools.count()
        if start:
            self.start()

    # the hot path ------------------------------------------------------------------------------------
    def admit(self) -> str | None:
        """Why a new call must be refused now (RESOURCE_EXHAUSTED), or None. Refusing is the fail-closed
        answer to a log that cannot be written or cannot keep up: no call runs without its record."""
        if self._last_error is not None:
            return f"{LOG_UNAVAILABLE}: {self._last_error}; calls are refused until it can be written again"
        depth = len(self._pending)
        if depth >= self.high_water or (self._throttled and depth > self.high_water // 2):
            self._throttled = True
            return f"{LOG_UNAVAILABLE}: {depth} records waiting to be written; retry shortly"
        self._throttled = False
        return None

    def record(self, call: CallRecord) -> None:
        """Stamp the call and queue it; never blocks, never drops. Building and writing the JSON is the
        writer's. Memory stays bounded because `admit()` stops new calls at `high_water`."""
        if refused_by_log(call):
            with self._cond:
                self._refusals[(call.extension, call.operation)] += 1
                self._refused += 1
            return
        # No lock and no wake-up per call: a deque append is atomic, and the writer takes what accumulated
        # every LINGER seconds (or at once past WAKE_DEPTH), so the calling thread pays a few hundred
        # nanoseconds and the writer does not fight it for the GIL on every call. The id is a per-log random
        # prefix and a counter: unique like a uuid4, without a system call per record.
        self._pending.append(_Entry(time.time(), f"{self._id_prefix}{next(self._ids):08x}", call))
        if len(self._pending) == WAKE_DEPTH:
            with self._cond:
                self._cond.notify()

    def record_line(self, line: bytes) -> None:
        """Queue a record a worker process built and encoded (encode_call, with its own stamp and call id, under
        the same mask); the same promises as record(): never blocks, never drops, written in arrival order."""
        self._pending.append(_Entry(0.0, "", None, line=line))
        if len(self._pending) == WAKE_DEPTH:
            with self._cond:
                self._cond.notify()

    # reading ------------------------------------------------------------------------------------------
    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued so far is written (or the timeout passes). True when written."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()  # the writer may be lingering: write now
            target = self._written + len(self._pending)
            while self._written < target and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def tail(self, count: int) -> list[dict]:
        """The last `count` records as written to the files (current and rotated): what survives a restart."""
        if count <= 0:
            return []
        self.flush()
        found: list[dict] = []
        for path in [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.keep + 1)]:
            try:
                lines = _last_lines(path, count - len(found))
            except OSError:
                continue
            found = [r for r in (_parse(line) for line in lines) if r is not None] + found
            if len(found) >= count:
                break
        return found[-count:]

    def state(self) -> LogState:
        alive = self._writer is not None and self._writer.is_alive()
        if self._closed:
            name = "closed"
        elif self._last_error is not None:
            name = "failing"
        elif self._throttled:
            name = "throttled"
        else:
            name = "ok"
        return LogState(name, len(self._pending), self._written, self._failures, self._last_error,
                        self._refused, self._fenced, alive, str(self.path))

    # control -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or, after it died, restart) the writer thread; the backlog is kept across restarts."""
        with self._cond:
            if self._closed or (self._writer is not None and self._writer.is_alive()):
                return
            self._writer = threading.Thread(target=self._run, name="capengine-decision-log", daemon=True)
            self._writer.start()

    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def reopen(self) -> None:
        """Close and reopen the file before the next batch (logrotate's SIGUSR1 after moving it away)."""
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> int:
        """Drain the backlog to disk and stop the writer. Bounded: if the disk still fails after `timeout`
        seconds, the records left are written to stderr (the service log) rather than lost, and counted.
        Returns the number of records that could not be written to the file."""
        with self._cond:
            if self._closed:
                return 0
            self._closing = True
            self._cond.notify_all()
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            left = list(self._pending)
            self._pending.clear()
        if writer is not None:
            writer.join(1.0)
        spilled = 0
        for entry in left:
            sys.stderr.buffer.write(b"capengine decision log (unwritten): " + self._encode(entry))
            spilled += 1
        if spilled:
            sys.stderr.flush()
            log.error("%d decision record(s) could not be written to %s (%s); written to stderr instead",
                      spilled, self.path, self._last_error)
        self._close_fd(sync=True)
        return spilled

    # the writer ----------------------------------------------------------------------------------------
    def _encode(self, entry: _Entry) -> bytes:
        if entry.line is not None:
            return entry.line
        if entry.summary is not None:
            return encode_line(entry.summary)
        assert entry.call is not None
        return encode_call(entry.when, entry.call_id, entry.call, self.mask)

    def _take_refusals(self) -> None:
        """Turn the counted refusals into summary records at the head of the backlog (caller holds the lock)."""
        now = time.time()
        for (extension, operation), count in sorted(self._refusals.items()):
            self._pending.appendleft(_Entry(now, uuid.uuid4().hex, None, {
                "time": rfc3339(now), "call_id": uuid.uuid4().hex, "extension": extension, "operation": operation,
                "decision": "error", "code": str(ErrorCode.RESOURCE_EXHAUSTED), "refused_calls": count,
                "message": f"{count} call(s) refused while the decision log was unavailable"}))
        self._refusals.clear()

    def _run(self) -> None:
        delay = 0.1
        while True:
            with self._cond:
                while (not self._pending and not self._refusals and not self._closing and not self._reopen
                       and self._last_error is None and self._fd is not None):
                    self._cond.wait(LINGER)
                    self._maybe_sync()
                if self._closed or (self._closing and not self._pending and not self._refusals):
                    return
                if self._reopen:
                    self._reopen = False
                    self._close_fd(sync=True)
                if self._refusals and self._last_error is None:
                    self._take_refusals()
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            lines = [self._encode(entry) for entry in batch]
            try:
                written = self._write(lines)
            except OSError as exc:
                written = getattr(exc, "records_written", 0)
                self._commit(written)
                self._fail(exc)
                with self._cond:
                    if self._closed:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            self._commit(written)
            if self._last_error is not None:
                log.warning("decision log %s writable again", self.path)
                self._last_error = None
            delay = 0.1

    def _commit(self, count: int) -> None:
        with self._cond:
            for _ in range(min(count, len(self._pending))):  # close() may have spilled them meanwhile
                self._pending.popleft()
            self._written += count
            self._cond.notify_all()

    def _fail(self, exc: OSError) -> None:
        self._failures += 1
        message = f"{os.strerror(exc.errno) if exc.errno else exc} ({errno.errorcode.get(exc.errno or 0, '?')})"
        if self._last_error != message:
            log.error("cannot write the decision log %s: %s; new calls are refused until it can be written",
                      self.path, message)
        self._last_error = message
        self._close_fd(sync=False)

    def _write(self, lines: list[bytes]) -> int:
        """Write whole records; rotate before a record that would overflow the file. On an error the file is
        cut back to its last whole record and the error carries how many records made it."""
        done = 0
        try:
            fd = self._ensure_open()
            chunk: list[bytes] = []
            chunk_bytes = 0
            for line in lines:
                if self._size + chunk_bytes > 0 and self._size + chunk_bytes + len(line) > self.max_bytes:
                    self._write_all(fd, b"".join(chunk))
                    done += len(chunk)
                    chunk, chunk_bytes = [], 0
                    self._rotate()
                    fd = self._ensure_open()
                chunk.append(line)
                chunk_bytes += len(line)
            self._write_all(fd, b"".join(chunk))
            done += len(chunk)
            self._maybe_sync()
        except OSError as exc:
            exc.records_written = done  # type: ignore[attr-defined]
            raise
        return done

    def _write_all(self, fd: int, data: bytes) -> None:
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
                self._size += n
        except OSError:
            try:
                os.ftruncate(fd, start)  # never leave half a record for the next one to merge into
                self._size = start
            except OSError:
                self._size = -1  # unknown: the next open fences whatever is there
            raise

    def _ensure_open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)  # RDWR: fence
            try:
                self._size = self._fence(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _fence(self, fd: int) -> int:
        """A file whose last byte is not a newline ends in a torn record (a crash or a full disk mid-write):
        end it with a newline, so it stays one unreadable line (replay names it) and the next record starts
        clean."""
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
            self._fenced += 1
            log.warning("decision log %s ended in a torn record; fenced it with a newline", self.path)
            size += 1
        return size

    def _maybe_sync(self) -> None:
        if self._fd is not None and time.monotonic() - self._last_sync >= self.fsync_interval:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._fail(exc)
            self._last_sync = time.monotonic()

    def _close_fd(self, sync: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if sync:
                os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        self._close_fd(sync=True)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _last_lines(path: Path, count: int, block: int = 65536) -> list[bytes]:
    """The last `count` non-empty lines of a file, read from the end (the log may be large)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= count:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = [line for line in data.split(b"\n") if line.strip()]
    if end > 0:
        lines = lines[1:]  # the first may be cut
    return lines[-count:]


def read_records(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, record) for every line of a log file; None for a line that is not a JSON object (a torn
    line after a crash, or a torn multi-byte character), so that callers can say so rather than skip it."""
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    record: Any = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    record = None
                yield number, record if isinstance(record, dict) else None
