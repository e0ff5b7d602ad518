"""vdfs.*: files in a library, read through `safe_fs` so that nothing outside the library root is reached.

Sidecars are derived data ("ocr-text") stored per extension and per content: extension B can never replace
what A stored, even for a byte-identical file (see docs/operations.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import mimetypes
import os
import re
import stat as stat_mod
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from capengine.host import fs_names, safe_fs
from capengine.host.deadline import DeadlineExceeded
from capengine.host.envelope import ErrorCode
from capengine.host.operations.registry import (
    CallContext,
    Handler,
    Operation,
    OperationError,
    Registry,
    load_schema,
)

MAX_READ = 16 * 1024 * 1024
MAX_ENTRIES = 10_000
SIDECAR_DIR = "/.capengine/sidecars"
MAX_HASHED = 1024 * 1024 * 1024  # sidecars for bigger entries are refused: hashing 1 GiB already takes ~1 s
HASH_CHUNK = 1 << 20
HASH_CACHE_ENTRIES = 4096


def library_root(ctx: CallContext) -> Path:
    """The library's root directory; operations only ever open paths beneath it (via safe_fs)."""
    if ctx.library is None:  # the bridge checks needs_library first; this guards direct callers
        raise OperationError(ErrorCode.LIBRARY_REQUIRED, "this operation needs a library")
    return ctx.library.root


def _hardlinks(ctx: CallContext) -> bool:
    return ctx.library is not None and ctx.library.allow_hardlinks


@contextlib.contextmanager
def fs_errors(path: str):
    """safe_fs failures, an exhausted deadline and a failing file system (a full disk, a read-only volume, a
    directory where a file should be, an unsearchable directory) become the operation errors the guest sees,
    never INTERNAL: the library's contents and its volume are not host bugs."""
    try:
        yield
    except safe_fs.FsError as exc:
        raise OperationError(ErrorCode(exc.code), exc.message) from None
    except OSError as exc:
        error = safe_fs.os_error(exc, path)
        raise OperationError(ErrorCode(error.code), error.message) from None
    except DeadlineExceeded as exc:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, str(exc)) from None


@contextlib.contextmanager
def open_file(ctx: CallContext, path: str):
    """A regular file of the call's library (never a FIFO or device; hard links per the library's setting)."""
    with fs_errors(path), safe_fs.open_beneath(library_root(ctx), path, allow_hardlinks=_hardlinks(ctx)) as fd:
        yield fd


def _kind(mode: int) -> str:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


def _describe(st: os.stat_result) -> dict:
    return {"kind": _kind(st.st_mode), "size": st.st_size, "mtime": int(st.st_mtime)}


def read_file(ctx: CallContext, args: dict) -> dict:
    offset, length = args.get("offset", 0), args.get("length")
    with open_file(ctx, args["path"]) as fd:
        st = os.fstat(fd)
        want = max(st.st_size - offset, 0) if length is None else length
        if want > MAX_READ:
            raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"read of {want} bytes is over the {MAX_READ}-byte "
                                                               "cap; read it in parts with offset/length")
        data = os.pread(fd, want, offset) if offset < st.st_size else b""
    mime = mimetypes.guess_type(args["path"])[0] or "application/octet-stream"
    return {"data": base64.b64encode(data).decode(), "size": st.st_size, "offset": offset, "mime": mime}


def list_dir(ctx: CallContext, args: dict) -> dict:
    """Every entry, whatever its name: a name that is not UTF-8 (or has control characters) is given in the
    text form of fs_names, which vdfs.read_file accepts back."""
    entries: list[dict] = []
    with fs_errors(args["path"]), safe_fs.open_beneath(library_root(ctx), args["path"], directory=True) as fd:
        hidden = 1 if args["path"] == "/" else 0  # /.capengine is read but not listed
        for name in safe_fs.list_names(fd, MAX_ENTRIES + hidden):
            if args["path"] == "/" and name == b".capengine":
                continue  # the sidecar store is reached only through the sidecar operations
            if len(entries) % 256 == 0:
                ctx.deadline.check("vdfs.list_dir")
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            entries.append({"name": fs_names.to_text(name), **_describe(st)})
            if len(entries) > MAX_ENTRIES:
                raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"directory has more than {MAX_ENTRIES} entries")
    return {"path": args["path"], "entries": entries}


def stat(ctx: CallContext, args: dict) -> dict:
    if args["path"] == "/":  # the root has no parent to lstat it in; it is a directory or nothing opens
        with fs_errors("/"), safe_fs.open_beneath(library_root(ctx), "/", directory=True) as fd:
            return {"path": "/", **_describe(os.fstat(fd))}
    with fs_errors(args["path"]), safe_fs.open_parent(library_root(ctx), args["path"]) as (parent, name):
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    return {"path": args["path"], **_describe(st)}


class _HashCache:
    """Content hashes by (device, inode, size, mtime, ctime): an unchanged file is not hashed again. ctime
    cannot be set from user space, so any write to the file misses the cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, ...]:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def get(self, key: tuple[int, ...]) -> str | None:
        with self._lock:
            digest = self._entries.get(key)
            if digest is not None:
                self._entries.move_to_end(key)
            return digest

    def put(self, key: tuple[int, ...], digest: str) -> None:
        with self._lock:
            self._entries[key] = digest
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


HASHES = _HashCache(HASH_CACHE_ENTRIES)


def _content_hash(ctx: CallContext, path: str) -> str:
    """sha256 of the entry, capped at MAX_HASHED bytes, cached, and stopped by the call's deadline."""
    with open_file(ctx, path) as fd:
        st = os.fstat(fd)
        if st.st_size > MAX_HASHED:
            raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"{path} is {st.st_size} bytes; sidecars are kept "
                                                               f"for entries up to {MAX_HASHED} bytes")
        key = HASHES.key(st)
        cached = HASHES.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        done = 0
        with fs_errors(path):
            while done <= MAX_HASHED and (chunk := os.read(fd, HASH_CHUNK)):
                digest.update(chunk)
                done += len(chunk)
                ctx.deadline.check(f"hashing {path}")
        if HASHES.key(os.fstat(fd)) != key:  # written while hashed: no stable content to attach data to
            raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{path} changed while it was being read; try again")
    HASHES.put(key, digest.hexdigest())
    return digest.hexdigest()


_PLAIN_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")


def namespace(extension: str) -> str:
    """The sidecar directory of one extension: its id when that is a plain directory name, else a digest of
    the id ("=" never occurs in a plain id, so the two forms cannot collide)."""
    if _PLAIN_ID.fullmatch(extension):
        return extension
    return "=" + hashlib.sha256(extension.encode("utf-8", "surrogateescape")).hexdigest()


def _sidecar(ctx: CallContext, path: str, kind: str, writer: str) -> str:
    return f"{SIDECAR_DIR}/{namespace(writer)}/{_content_hash(ctx, path)}/{kind}"


def write_sidecar(ctx: CallContext, args: dict) -> dict:
    """Temp file + fsync + rename + fsync of the directory: a crash leaves the old sidecar or the new one.
    Always into the caller's own namespace."""
    target = _sidecar(ctx, args["path"], args["kind"], ctx.extension)
    data = args["data"].encode("utf-8")
    with fs_errors(target), safe_fs.open_parent(library_root(ctx), target, create=True) as (parent, name):
        tmp = b".%s.%d.%s.tmp" % (name, os.getpid(), os.urandom(6).hex().encode())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb", closefd=True) as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        os.fsync(parent)
        _sweep_stale_temps(parent, name)
    return {"path": args["path"], "kind": args["kind"], "size": len(data)}


STALE_TEMP_SECONDS = 600
MAX_SWEPT = 1000  # entries of a sidecar directory looked at for abandoned temp files, per write


def _sweep_stale_temps(parent: int, name: bytes) -> None:
    """Temp files a killed writer left behind (it never reached the rename), once clearly abandoned. Runs after
    the sidecar is in place, so it never fails the write, and it looks at a bounded number of entries: whoever
    writes the library can put a million files in a sidecar directory."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for entry in itertools.islice(it, MAX_SWEPT):
            raw = os.fsencode(entry.name)
            if raw.startswith(b".%s." % name) and raw.endswith(b".tmp"):
                with contextlib.suppress(OSError):
                    if os.stat(raw, dir_fd=parent, follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(raw, dir_fd=parent)


def read_sidecar(ctx: CallContext, args: dict) -> dict:
    """The caller's own sidecar, or with `writer` the one another extension stored (a policy decides whether
    the caller may: it sees args.writer)."""
    writer = args.get("writer", ctx.extension)
    target = _sidecar(ctx, args["path"], args["kind"], writer)
    with fs_errors(target), safe_fs.open_beneath(library_root(ctx), target) as fd:
        data = os.read(fd, MAX_READ + 1)
    if len(data) > MAX_READ:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"sidecar is over the {MAX_READ}-byte cap")
    return {"path": args["path"], "kind": args["kind"], "writer": writer, "data": data.decode("utf-8", "replace")}


def register(registry: Registry) -> None:
    operations: tuple[tuple[str, Literal["query", "action"], Handler, str], ...] = (
        ("vdfs.read_file", "query", read_file, "Read a file's bytes (base64), size and MIME type."),
        ("vdfs.list_dir", "query", list_dir, "List a directory: name, kind, size, mtime per entry."),
        ("vdfs.stat", "query", stat, "Kind, size and mtime of one entry (links are not followed)."),
        ("vdfs.write_sidecar", "action", write_sidecar, "Atomically store derived data for an entry (own namespace)."),
        ("vdfs.read_sidecar", "query", read_sidecar, "Read derived data stored for an entry (own, or `writer`'s)."),
    )
    for name, kind, handler, description in operations:
        registry.register(Operation(name, kind, description, load_schema(name), handler))
