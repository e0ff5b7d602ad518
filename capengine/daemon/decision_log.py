"""The decision log: JSON Lines, one record per call, written off the hot path by a writer that cannot die.

A call only appends to an in-memory backlog; a feeder thread hands batches of plain tuples (one
`marshal.dumps` per batch) to a writer process (log_writer.py), which builds each record's JSON, writes it,
rotates by size (`decisions.jsonl` -> `.1` -> `.2` ...) and fsyncs, and `close()` drains everything (nothing
lost on a clean stop). Building the JSON in the daemon cost ~7 us of GIL time per record, which the job
threads' host calls queued behind; the feeder's share is ~1 us, spent in C, with the GIL released while the
writer works. A record leaves the backlog only when the writer replies that it is whole in the file: a
writer killed mid-batch is restarted and resumes after the last call id it finds in the file (reported in
`state().writer_restarts` and the service log).
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
  least every `fsync_interval` seconds, on rotation and on close (docs/daemon.md states the promise);
- the writer process ignores SIGINT/SIGTERM/SIGXFSZ (the daemon ends it; a file size limit is EFBIG, reported
  like a full disk) and exits, fsyncing, when the daemon's end of the pipe closes.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import logging
import marshal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import attrs

from capengine.daemon import log_writer
from capengine.daemon.log_writer import args_digest, encode_line, rfc3339  # noqa: F401 - public here too
from capengine.host.envelope import CallRecord, ErrorCode

log = logging.getLogger("capengine.daemon.decision_log")

DEFAULT_MASK = ("password", "token", "secret", "api_key", "apikey", "authorization")
LOG_UNAVAILABLE = "decision log unavailable"  # the message prefix of calls refused because of the log
BATCH = 1000
SYNC_WAIT = 10.0  # seconds a job's end or an allowed effect waits for its records to be written (not while failing)
LINGER = 0.05  # seconds the writer waits for records to accumulate before writing them as one batch
WAKE_DEPTH = 1024  # records queued at which the writer is woken at once
MAX_RETRY_DELAY = 5.0


def _fields(call: CallRecord) -> tuple:
    return (call.extension, call.operation, call.library, call.path, call.decided, call.allowed, call.rules,
            call.errors, call.args, call.code, call.message, call.revision, call.duration_us)


def to_record(when: float, call_id: str, call: CallRecord, mask: frozenset[str]) -> dict:
    return log_writer.record_dict(when, call_id, _fields(call), mask)


class WriterDied(OSError):
    """The writer process ended (killed, crashed) before it answered; it is started again."""


class _WriterProcess:
    """One writer process and its two pipes. Used only by the feeder thread (and by close() after it)."""

    def __init__(self, config: dict[str, Any]) -> None:
        # -I: no user site, no PYTHON* variables, no script directory on sys.path (the script imports only the
        # standard library, so it starts in milliseconds).
        self.proc = subprocess.Popen([sys.executable, "-I", log_writer.__file__, json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.hello = self.receive()

    def send(self, kind: bytes, payload: bytes) -> tuple:
        try:
            self.stdin.write(kind + struct.pack(">I", len(payload)) + payload)
            self.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self.died() from None
        return self.receive()

    def receive(self) -> tuple:
        header = self.stdout.read(4)
        payload = self.stdout.read(struct.unpack(">I", header)[0]) if len(header) == 4 else b""
        if not payload:
            raise self.died()
        return tuple(marshal.loads(payload))

    def died(self) -> WriterDied:
        code = self.proc.wait()
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return WriterDied(errno.EPIPE, f"the decision-log writer process {self.proc.pid} ended ({how})")

    def close(self) -> None:
        try:
            self.send(b"C", b"")
        except WriterDied:
            return
        for stream in (self.stdin, self.stdout):
            stream.close()
        self.proc.wait(5)


def encode_call(when: float, call_id: str, call: CallRecord, mask: frozenset[str]) -> bytes:
    """The record line of one call (a stub naming the call and the problem when it cannot be built). Used by
    the daemon's worker processes, which encode their records and send the lines (record_line)."""
    return log_writer.encode_item((when, call_id, *_fields(call)), mask)


def _line_call_id(line: bytes) -> str | None:
    """The call id inside a line a worker encoded (its _Entry has none): read only when a new writer resumes
    after a killed one, so that a batch ending in worker lines is not written twice."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    call_id = record.get("call_id") if isinstance(record, dict) else None
    return call_id if isinstance(call_id, str) else None


def refused_by_log(call: CallRecord) -> bool:
    """A call refused because the log was unavailable: counted into a summary record, not logged one by one."""
    return not call.decided and call.code == ErrorCode.RESOURCE_EXHAUSTED and call.message.startswith(LOG_UNAVAILABLE)


class _Entry(NamedTuple):
    """A queued record (a tuple: built on the calling thread, where an attrs instance costs twice as much)."""

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
    writer_restarts: int = 0  # writer processes that ended unasked (killed, crashed) and were replaced


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
        self._process: _WriterProcess | None = None
        self._resume_after: str | None = None  # a new writer's last call id in the file: skip up to it
        self._restarts = 0
        self._reopen = False
        self._closing = False
        self._closed = False
        self._throttled = False
        self._last_error: str | None = None
        self._failures = 0
        self._written = 0
        self._refused = 0
        self._fenced = 0  # by writer processes that have ended
        self._fenced_now = 0  # by the current one
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
    def flush(self, timeout: float = 2.0, unless_failing: bool = False) -> bool:
        """Wait until everything queued so far is written (or the timeout passes). True when written.
        `unless_failing`: answer False at once while the log is failing (its records are written when it
        recovers, or spilled at close): the daemon calls it so before a job's end is saved and replied, so a
        client that holds a job's result holds it after the job's records are in the file (a SIGKILL of the
        daemon from then on cannot lose them), and a job does not hang on a full disk."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()  # the writer may be lingering: write now
            target = self._written + len(self._pending)
            while self._written < target and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (unless_failing and self._last_error is not None):
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
                lines = log_writer.last_lines(path, count - len(found))
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
                        self._refused, self._fenced + self._fenced_now, alive, str(self.path), self._restarts)

    # control -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or, after it died, restart) the writer thread; the backlog is kept across restarts. The first
        start also starts the writer process and has it open the file, here and now: a log that cannot be
        written refuses calls from the first one on."""
        with self._cond:
            if self._closed or (self._writer is not None and self._writer.is_alive()):
                return
        if self._process is None:
            try:
                self._write([])
            except OSError as exc:
                self._fail(exc)
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
        if writer is None or not writer.is_alive():  # else it still talks to the process; it exits on EOF
            self._stop_process()
        spilled = 0
        for entry in left:
            sys.stderr.buffer.write(b"capengine decision log (unwritten): " + self._encode(entry))
            spilled += 1
        if spilled:
            sys.stderr.flush()
            log.error("%d decision record(s) could not be written to %s (%s); written to stderr instead",
                      spilled, self.path, self._last_error)
        return spilled

    # the writer ----------------------------------------------------------------------------------------
    def _encode(self, entry: _Entry) -> bytes:
        """One entry as its line, built here (close() spilling to stderr; a record marshal cannot carry)."""
        return log_writer.encode_item(self._item(entry), self.mask)

    def _item(self, entry: _Entry) -> bytes | tuple:
        if entry.line is not None:
            return entry.line
        if entry.summary is not None:
            return encode_line(entry.summary)
        assert entry.call is not None
        return (entry.when, entry.call_id, *_fields(entry.call))

    def _take_refusals(self) -> None:
        """Turn the counted refusals into summary records at the head of the backlog (caller holds the lock)."""
        now = time.time()
        for (extension, operation), count in sorted(self._refusals.items()):
            call_id = uuid.uuid4().hex
            self._pending.appendleft(_Entry(now, call_id, None, {
                "time": rfc3339(now), "call_id": call_id, "extension": extension, "operation": operation,
                "decision": "error", "code": str(ErrorCode.RESOURCE_EXHAUSTED), "refused_calls": count,
                "message": f"{count} call(s) refused while the decision log was unavailable"}))
        self._refusals.clear()

    def _run(self) -> None:
        delay = 0.1
        while True:
            with self._cond:
                # Idle until records come; with none, an empty batch still starts the writer (which opens the
                # file: a log that cannot be written is reported before the first call), replaces one that
                # died, and retries a failing write.
                while (not self._pending and not self._refusals and not self._closing and not self._reopen
                       and self._last_error is None and self._process is not None
                       and self._process.proc.poll() is None):
                    self._cond.wait(LINGER)
                if self._closed or (self._closing and not self._pending and not self._refusals):
                    return
                reopen, self._reopen = self._reopen, False
                if self._refusals and self._last_error is None:
                    self._take_refusals()
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                if reopen:
                    self._reopen_file()
                written = self._write(batch)
            except OSError as exc:
                written = getattr(exc, "records_written", 0)
                self._commit(written)
                self._fail(exc)
                with self._cond:
                    if self._closed:
                        return
                    self._cond.notify_all()  # flush() waiters: the log is failing, do not wait for it
                    self._cond.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if self._last_error is not None:
                log.warning("decision log %s writable again", self.path)
                self._last_error = None
            self._commit(written)
            delay = 0.1

    def _commit(self, count: int) -> None:
        with self._cond:
            for _ in range(min(count, len(self._pending))):  # close() may have spilled them meanwhile
                self._pending.popleft()
            self._written += count
            self._cond.notify_all()

    def _fail(self, exc: OSError) -> None:
        self._failures += 1
        if isinstance(exc, WriterDied):
            message = str(exc.strerror)
        else:
            message = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, '?')})"
        if self._last_error != message:
            log.error("cannot write the decision log %s: %s; new calls are refused until it can be written",
                      self.path, message)
        self._last_error = message

    def _writer_process(self) -> _WriterProcess:
        """The running writer process, started (again) if needed. A new one reports the last call id it finds
        in the file: what a killed predecessor wrote but could not acknowledge."""
        process = self._process
        if process is not None and process.proc.poll() is None:
            return process
        if process is not None:
            self._restarts += 1
            self._fenced += self._fenced_now
            self._fenced_now = 0
            log.error("decision log writer process %d ended (exit %s); starting another", process.proc.pid,
                      process.proc.returncode)
        config = {"path": str(self.path), "max_bytes": self.max_bytes, "keep": self.keep,
                  "fsync_interval": self.fsync_interval, "mask": sorted(self.mask)}
        self._process = process = _WriterProcess(config)
        self._resume_after = process.hello[4]
        return process

    def _write(self, batch: list[_Entry]) -> int:
        """Hand `batch` to the writer process; the number of its records now whole in the file. OSError (with
        `records_written`) when the writer reports a failed write or ended before answering."""
        process = self._writer_process()
        resume, self._resume_after = self._resume_after, None
        if resume is not None:  # the last writer wrote up to `resume` and died before saying so
            for i, entry in enumerate(batch):
                if (entry.call_id if entry.line is None else _line_call_id(entry.line)) == resume:
                    return i + 1
        items = [self._item(entry) for entry in batch]
        try:
            payload = marshal.dumps(items)
        except ValueError:  # a value marshal cannot carry (an embedder's object in args): encode those here
            payload = marshal.dumps([_marshallable(item) or self._encode(entry) for item, entry in zip(items, batch)])
        try:
            written, error, code, fenced, _ = process.send(b"W", payload)
        except WriterDied as exc:
            exc.records_written = 0  # type: ignore[attr-defined]
            raise
        self._fenced_now = fenced
        if error is not None:
            failure = OSError(code, error)
            failure.records_written = written  # type: ignore[attr-defined]
            raise failure
        return written

    def _reopen_file(self) -> None:
        process = self._process
        if process is not None and process.proc.poll() is None:
            process.send(b"O", b"")

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                process.close()
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("decision log writer process %d did not stop cleanly: %s", process.proc.pid, exc)
                process.proc.kill()
                process.proc.wait()


def _marshallable(item: bytes | tuple) -> bytes | tuple | None:
    try:
        marshal.dumps(item)
    except ValueError:
        return None
    return item


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


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
