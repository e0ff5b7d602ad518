"""The decision log's writer process: builds each record's JSON and writes, rotates and fsyncs the files.

WHY a process: building a record (args digest, masking, JSON) costs ~7 us of CPU, and on a thread of the
daemon every microsecond of it held the GIL that job threads need for each host call (a guest's call into the
host retakes the GIL, so the jobs queued behind the writer). Here that work has its own interpreter; the daemon
only hands over batches of plain tuples (one `marshal.dumps` per batch) and waits for the reply with the GIL
released.

The protocol never loses an acknowledged record: the daemon keeps every record until this process replies
with how many of a batch are whole in the file. If this process dies (kill -9, a crash), the daemon starts a
new one, which reports the last call id in the file, and the daemon resends from the record after it (so a
batch cut short by the kill is neither lost nor written twice; a torn last line is fenced on open). A write
that fails (ENOSPC, EFBIG under RLIMIT_FSIZE, EROFS, EIO) is cut back to the last whole record and reported
with the errno; the daemon refuses new calls until a retry succeeds.

This file runs as a script (`python -I log_writer.py CONFIG`) and imports only the standard library: it starts
in a few milliseconds, without the policy engine or wasmtime. The daemon's side is decision_log.py.

Wire format (pipes): request = kind (1 byte) + length (4 bytes, big-endian) + marshal payload; reply =
length + marshal payload. Kinds: W (a list of items: a pre-encoded line as bytes, or a record tuple
`(when, call_id, *FIELDS)`), O (reopen the file: logrotate moved it), C (fsync, close, exit). Replies:
`(written, error or None, errno, fenced, last_call_id)`; one such reply (written 0) greets the daemon.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import marshal
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The fields of a CallRecord, in the order a record tuple carries them after (when, call_id).
FIELDS = ("extension", "operation", "library", "path", "decided", "allowed", "rules", "errors", "args", "code",
          "message", "revision", "duration_us")

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


def _encoder(sort_keys: bool, ascii_only: bool) -> Any:
    """json's C encoder, built once (JSONEncoder.encode builds one per call, which costs more than a record):
    compact, no NaN check needed (records carry JSON values), `str()` for anything else an embedder put in args,
    no circular-reference check (records are trees)."""
    quote = json.encoder.encode_basestring_ascii if ascii_only else json.encoder.encode_basestring
    return json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, str, quote, None, ":", ",", sort_keys, False, True)


_CANONICAL = _encoder(sort_keys=True, ascii_only=False)
_LINE = _encoder(sort_keys=False, ascii_only=False)
_ASCII_LINE = _encoder(sort_keys=False, ascii_only=True)
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"{}").hexdigest()[:32]


def args_digest(args: Mapping[str, object]) -> str:
    if not args:
        return _EMPTY_DIGEST
    canonical = "".join(_CANONICAL(args, 0))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _masked(value: object, mask: frozenset[str]) -> object:
    if isinstance(value, dict):
        return {k: "***" if str(k).lower() in mask else _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


def record_dict(when: float, call_id: str, fields: Sequence[Any], mask: frozenset[str]) -> dict:
    """The logged form of one call (`fields` in FIELDS order): never secrets, masked args, their digest."""
    (extension, operation, library, path, decided, allowed, rules, errors, args, code, _message, revision,
     duration_us) = fields
    return {
        "time": rfc3339(when), "call_id": call_id, "extension": extension, "operation": operation,
        "library": library, "path": path, "decision": ("allow" if allowed else "deny") if decided else "error",
        "code": code, "rules": list(rules), "errors": list(errors), "revision": revision,
        "duration_us": duration_us, "args_digest": args_digest(args), "args": _masked(args, mask),
    }


def encode_line(record: dict) -> bytes:
    """UTF-8 JSON, one line. Text a guest controls may hold lone surrogates (valid JSON, not UTF-8): such a
    record is written with \\u escapes instead, which is still exact JSON and always encodable."""
    text = "".join(_LINE(record, 0))
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return "".join(_ASCII_LINE(record, 0)).encode("ascii") + b"\n"


def stub_line(when: float, call_id: str, extension: object, operation: object, code: object,
              problem: BaseException) -> bytes:
    """What is written when a record cannot be built at all: the call is still accounted for."""
    return encode_line({"time": rfc3339(when), "call_id": call_id, "extension": ascii(extension),
                        "operation": ascii(operation), "decision": "error", "code": ascii(code),
                        "record_error": f"{type(problem).__name__}: {problem}"[:500]})


def encode_item(item: bytes | tuple, mask: frozenset[str]) -> bytes:
    """One item of a batch as its line: a pre-encoded line as it is, a record tuple built and encoded (a
    record that cannot be built becomes a stub; one bad record never stops the writer)."""
    if isinstance(item, bytes):
        return item
    when, call_id, fields = item[0], item[1], item[2:]
    try:
        return encode_line(record_dict(when, call_id, fields, mask))
    except Exception as exc:  # noqa: BLE001
        print(f"capengine decision log: record for call {call_id} could not be built ({type(exc).__name__}: "
              f"{exc}); writing a stub", file=sys.stderr)
        return stub_line(when, call_id, fields[0], fields[1], fields[9], exc)


class LogFile:
    """The log file: whole records only, rotated by size, fenced on open, fsync'd at least every interval."""

    def __init__(self, path: Path, max_bytes: int, keep: int, fsync_interval: float) -> None:
        self.path, self.max_bytes, self.keep, self.fsync_interval = Path(path), max_bytes, keep, fsync_interval
        self.fd: int | None = None
        self.size = 0
        self.fenced = 0
        self.dirty = False
        self.last_sync = time.monotonic()

    def write(self, lines: list[bytes]) -> int:
        """Write whole records; rotate before a record that would overflow the file. On an error the file is
        cut back to its last whole record and the error carries how many records made it."""
        done = 0
        try:
            fd = self._ensure_open()
            chunk: list[bytes] = []
            chunk_bytes = 0
            for line in lines:
                if self.size + chunk_bytes > 0 and self.size + chunk_bytes + len(line) > self.max_bytes:
                    self._write_all(fd, b"".join(chunk))
                    done += len(chunk)
                    chunk, chunk_bytes = [], 0
                    self._rotate()
                    fd = self._ensure_open()
                chunk.append(line)
                chunk_bytes += len(line)
            self._write_all(fd, b"".join(chunk))
            done += len(chunk)
            self.dirty = True
            self.sync_if_due()
        except OSError as exc:
            exc.records_written = done  # type: ignore[attr-defined]
            raise
        return done

    def _write_all(self, fd: int, data: bytes) -> None:
        start = self.size
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
                self.size += n
        except OSError:
            try:
                os.ftruncate(fd, start)  # never leave half a record for the next one to merge into
                self.size = start
            except OSError:
                self.size = -1  # unknown: the next open fences whatever is there
            raise

    def _ensure_open(self) -> int:
        if self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)  # RDWR: fence
            try:
                self.size = self._fence(fd)
            except OSError:
                os.close(fd)
                raise
            self.fd = fd
        return self.fd

    def _fence(self, fd: int) -> int:
        """A file whose last byte is not a newline ends in a torn record (a crash or a full disk mid-write):
        end it with a newline, so it stays one unreadable line (replay names it) and the next record starts
        clean."""
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
            self.fenced += 1
            print(f"capengine decision log: {self.path} ended in a torn record; fenced it with a newline",
                  file=sys.stderr)
            size += 1
        return size

    def sync_if_due(self) -> None:
        """fsync when the interval has passed since the last one (an error is raised to the caller)."""
        if self.fd is not None and self.dirty and time.monotonic() - self.last_sync >= self.fsync_interval:
            self.last_sync = time.monotonic()
            os.fsync(self.fd)
            self.dirty = False

    def close(self, sync: bool) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if sync:
                os.fsync(fd)
                self.dirty = False
        except OSError:
            pass
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        self.close(sync=True)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def last_lines(path: Path, count: int, block: int = 65536) -> list[bytes]:
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


def last_call_id(path: Path) -> str | None:
    """The call id of the last whole record written (the current file, or the newest rotated one when the
    current is empty or missing): where a restarted writer resumes. A torn last line is skipped."""
    for candidate in (path, path.with_name(f"{path.name}.1")):
        try:
            lines = last_lines(candidate, 8)
        except OSError:
            continue
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("call_id"), str):
                return record["call_id"]
        if lines:
            return None
    return None


def _read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _reply(fd: int, value: tuple) -> None:
    payload = marshal.dumps(value)
    data = memoryview(struct.pack(">I", len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    # The daemon decides when this process ends (C, or the pipe closing when it exits): a terminal's ^C or a
    # SIGTERM to the process group must not cut the log short. A file size limit must be an error (EFBIG)
    # reported like a full disk, not the default SIGXFSZ death.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    log = LogFile(Path(config["path"]), config["max_bytes"], config["keep"], config["fsync_interval"])
    mask = frozenset(config["mask"])
    inp, out = 0, 1
    _reply(out, (0, None, 0, 0, last_call_id(log.path)))
    while True:
        timeout = max(0.0, log.fsync_interval - (time.monotonic() - log.last_sync)) if log.dirty else None
        if not select.select([inp], [], [], timeout)[0]:
            try:
                log.sync_if_due()
            except OSError as exc:
                print(f"capengine decision log: fsync of {log.path} failed: {exc}", file=sys.stderr)
            continue
        header = _read_exact(inp, 5)
        if header is None:  # the daemon is gone: keep what was written
            log.close(sync=True)
            return 0
        kind, length = header[:1], struct.unpack(">I", header[1:])[0]
        payload = _read_exact(inp, length)
        if payload is None:
            log.close(sync=True)
            return 0
        if kind == b"W":
            lines = [encode_item(item, mask) for item in marshal.loads(payload)]
            try:
                written, error, code = log.write(lines), None, 0
            except OSError as exc:
                written = getattr(exc, "records_written", 0)
                error, code = (os.strerror(exc.errno) if exc.errno else str(exc)), exc.errno or 0
                log.close(sync=False)
            _reply(out, (written, error, code, log.fenced, None))
        elif kind == b"O":
            log.close(sync=True)
            _reply(out, (0, None, 0, log.fenced, None))
        elif kind == b"C":
            log.close(sync=True)
            _reply(out, (0, None, 0, log.fenced, None))
            return 0
        else:
            print(f"capengine decision log: unknown request {kind!r}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

