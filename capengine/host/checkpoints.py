"""Job checkpoints on disk: one JSON file per (extension namespace, job run) under `<data dir>/checkpoints/`.

A checkpoint is what a resumed run starts from, so losing or tearing one loses work: each save writes a temp
file, fsyncs it, renames it over the old one and fsyncs the directory. A crash (or a full disk) leaves the old
checkpoint or the new one, never a mix; a failed save says so and keeps the old one. Size-capped: a guest
cannot fill the disk through checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path

import attrs

from capengine.errors import CapengineError
from capengine.host.data_dir import write_atomic

DEFAULT_MAX_BYTES = 512 * 1024
# The extension's namespace (manifests.Extension.namespace): its id (schemas/manifest.schema.json) when installed,
# else "dev:" + its module's sha256 (development mode). Neither can hold "/" or be ".." (a path component).
_NAMESPACE = re.compile(r"^(?:[a-z0-9][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+|dev:[0-9a-f]{64})$")
_RUN_ID = re.compile(r"^[0-9a-f]{8,64}$")
# Compact; UTF-8 text; a lone surrogate (which CPython's json accepts) fails the encode below instead of
# writing a file that cannot be read back as UTF-8.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class CheckpointError(CapengineError):
    """A checkpoint that cannot be saved; `exhausted` when it is over the cap or the disk is full."""

    def __init__(self, message: str, exhausted: bool = False) -> None:
        super().__init__(message)
        self.message, self.exhausted = message, exhausted


def new_run_id() -> str:
    return os.urandom(8).hex()


@attrs.frozen
class CheckpointStore:
    data_dir: Path = attrs.field(converter=Path)
    max_bytes: int = DEFAULT_MAX_BYTES

    def _path(self, extension: str, run_id: str) -> Path:
        # Both parts become path components: refuse anything that is not an id (no "..", no "/").
        if not _NAMESPACE.fullmatch(extension) or not _RUN_ID.fullmatch(run_id):
            raise CheckpointError(f"bad checkpoint key {extension!r}/{run_id!r}")
        return self.data_dir / "checkpoints" / extension / f"{run_id}.json"

    def save(self, extension: str, run_id: str, state: object) -> int:
        """Persist `state` atomically and durably; returns its size in bytes."""
        try:
            data = _ENCODER.encode(state).encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the state is not encodable as UTF-8 JSON: {exc}") from None
        if len(data) > self.max_bytes:
            raise CheckpointError(f"checkpoint of {len(data)} bytes is over the {self.max_bytes}-byte cap; "
                                  "checkpoint a smaller state (a cursor, not the data)", exhausted=True)
        path = self._path(extension, run_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_atomic(path, data)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            raise CheckpointError(f"cannot save the checkpoint ({os.strerror(exc.errno or 0)}); the previous "
                                  "checkpoint is kept", exhausted=full) from None
        return len(data)

    def load(self, extension: str, run_id: str) -> tuple[bool, object]:
        """(True, state) for a saved checkpoint, (False, None) when there is none."""
        path = self._path(extension, run_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False, None
        try:
            return True, json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # Saves are atomic, so this is damage from outside: say so rather than restart from scratch silently.
            raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); delete it to restart the job") from None

    def delete(self, extension: str, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(extension, run_id).unlink()

    def delete_run(self, run_id: str) -> None:
        """The run's checkpoint in whichever namespace holds it (a finished job's record being removed knows its
        extension id, not the namespace its run saved under)."""
        if not _RUN_ID.fullmatch(run_id):
            raise CheckpointError(f"bad checkpoint key {run_id!r}")
        try:
            with os.scandir(self.data_dir / "checkpoints") as namespaces:
                for namespace in namespaces:
                    if _NAMESPACE.fullmatch(namespace.name) and namespace.is_dir(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(namespace.path, f"{run_id}.json"))
        except FileNotFoundError:
            pass
