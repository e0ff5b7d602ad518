"""vdfs.*: files in a library, read through `safe_fs` so that nothing outside the library root is reached."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mimetypes
import os
import stat as stat_mod
import time

from capengine.host import safe_fs
from capengine.host.envelope import ErrorCode
from capengine.host.operations.registry import CallContext, Operation, OperationError, Registry, load_schema

MAX_READ = 16 * 1024 * 1024
MAX_ENTRIES = 10_000
SIDECAR_DIR = "/.capengine/sidecars"


def library_root(ctx: CallContext):
    """The library's root directory; operations only ever open paths beneath it (via safe_fs)."""
    if ctx.library is None:  # the bridge checks needs_library first; this guards direct callers
        raise OperationError(ErrorCode.LIBRARY_REQUIRED, "this operation needs a library")
    return ctx.library.root


@contextlib.contextmanager
def fs_errors():
    """safe_fs failures become the operation errors the guest sees."""
    try:
        yield
    except safe_fs.FsError as exc:
        raise OperationError(exc.code, exc.message) from None


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
    with fs_errors(), safe_fs.open_beneath(library_root(ctx), args["path"]) as fd:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{args['path']} is not a regular file")
        want = st.st_size - offset if length is None else length
        if want > MAX_READ:
            raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"read of {want} bytes is over the {MAX_READ}-byte cap; "
                                                       "read it in parts with offset/length")
        data = os.pread(fd, max(want, 0), offset)
    mime = mimetypes.guess_type(args["path"])[0] or "application/octet-stream"
    return {"data": base64.b64encode(data).decode(), "size": st.st_size, "offset": offset, "mime": mime}


def list_dir(ctx: CallContext, args: dict) -> dict:
    entries = []
    with fs_errors(), safe_fs.open_beneath(library_root(ctx), args["path"], directory=True) as fd:
        for name in sorted(os.listdir(fd)):
            if args["path"] == "/" and name == ".capengine":
                continue  # the sidecar store is reached only through the sidecar operations
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            entries.append({"name": name, **_describe(st)})
            if len(entries) > MAX_ENTRIES:
                raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"directory has more than {MAX_ENTRIES} entries")
    return {"path": args["path"], "entries": entries}


def stat(ctx: CallContext, args: dict) -> dict:
    with fs_errors(), safe_fs.open_parent(library_root(ctx), args["path"]) as (parent, name):
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            raise safe_fs.os_error(exc, args["path"]) from None
    return {"path": args["path"], **_describe(st)}


def _content_hash(ctx: CallContext, path: str) -> str:
    digest = hashlib.sha256()
    with fs_errors(), safe_fs.open_beneath(library_root(ctx), path) as fd:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{path} is not a regular file")
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(ctx: CallContext, args: dict) -> dict:
    """Temp file + fsync + rename + fsync of the directory: a crash leaves the old sidecar or the new one."""
    target = f"{SIDECAR_DIR}/{_content_hash(ctx, args['path'])}/{args['kind']}"
    data = args["data"].encode("utf-8")
    with fs_errors(), safe_fs.open_parent(library_root(ctx), target, create=True) as (parent, name):
        tmp = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
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


def _sweep_stale_temps(parent: int, name: str) -> None:
    """Temp files a killed writer left behind (it never reached the rename), once clearly abandoned."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in os.listdir(parent):
        if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if os.stat(entry, dir_fd=parent, follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry, dir_fd=parent)


def read_sidecar(ctx: CallContext, args: dict) -> dict:
    target = f"{SIDECAR_DIR}/{_content_hash(ctx, args['path'])}/{args['kind']}"
    with fs_errors(), safe_fs.open_beneath(library_root(ctx), target) as fd:
        data = os.read(fd, MAX_READ + 1)
    if len(data) > MAX_READ:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"sidecar is over the {MAX_READ}-byte cap")
    return {"path": args["path"], "kind": args["kind"], "data": data.decode("utf-8", "replace")}


def register(registry: Registry) -> None:
    for name, kind, handler, description in (
        ("vdfs.read_file", "query", read_file, "Read a file's bytes (base64), size and MIME type."),
        ("vdfs.list_dir", "query", list_dir, "List a directory: name, kind, size, mtime per entry."),
        ("vdfs.stat", "query", stat, "Kind, size and mtime of one entry (links are not followed)."),
        ("vdfs.write_sidecar", "action", write_sidecar, "Atomically store derived data for an entry."),
        ("vdfs.read_sidecar", "query", read_sidecar, "Read derived data stored for an entry."),
    ):
        registry.register(Operation(name, kind, description, load_schema(name), handler))
