"""The extensions the operator installed: id -> module sha256 + manifest sha256, in DATA_DIR/installed.json.

WHY: a manifest's `id` is a claim made by whoever wrote the manifest, and policy grants, vault rows, sidecars
and rate buckets all hang off ids. An id counts only for the exact module and manifest the operator vouched for
with `capengine ext install`. A module whose id is installed with other digests is refused (naming both
digests) unless a key the operator trusts for that id signed it (`capengine.host.signatures`); any other module
runs only where development mode is allowed (`capengine run`), in a namespace keyed by its module digest, so it
never reaches an installed extension's data and two modules claiming one id never share any. The daemon
requires installation (or a trusted signature) and refuses duplicate ids outright.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs

from capengine.host import data_dir as private
from capengine.host.manifests import Extension, IdentityError, development_namespace, load_extensions
from capengine.host.signatures import TrustedKeys

REGISTRY_FILE = "installed.json"
LOCK_FILE = "installed.lock"
FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, not {value!r}")


def _text(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be a string, not {value!r}")


@attrs.frozen
class Installed:
    """What the operator vouched for under one id (read back from a file: every field is validated)."""

    id: str = attrs.field(validator=_text)
    version: str = attrs.field(validator=_text)
    module_sha256: str = attrs.field(validator=_sha256)
    manifest_sha256: str = attrs.field(validator=_sha256)
    directory: str = attrs.field(validator=_text)  # where it was installed from; informative, identity is digests
    installed_at: str = attrs.field(validator=_text)  # RFC 3339, UTC


class InstalledRegistry:
    """The registry file of one data dir. Reads are cached by the file's identity (inode, size, mtime), so the
    host can check every job against it cheaply and still see an `ext install`/`ext remove` made meanwhile."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / REGISTRY_FILE
        self._file: private.CachedFile[dict[str, Installed]] = private.CachedFile(self.path, self._read, {})
        self.trusted = TrustedKeys(self.data_dir)

    def entries(self) -> dict[str, Installed]:
        return self._file.get()

    def _read(self) -> dict[str, Installed]:
        fix = (f"restore it from a backup, or delete it and install the extensions again "
               f"(capengine ext install DIR --data-dir {self.data_dir})")
        entries = private.read_document(self.path, FORMAT, "extensions", "registry", fix)
        if entries is None:
            return {}
        found = {}
        for ext_id, entry in entries.items():
            try:
                if not isinstance(entry, dict) or entry.get("id") != ext_id:
                    raise ValueError("the entry's id does not match its key")
                found[ext_id] = Installed(**entry)
            except (TypeError, ValueError) as exc:
                raise private.DataDirError(f"{self.path}: entry {ext_id!r} is invalid ({exc}); {fix}") from None
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Installed]]:
        """Read-modify-write under an exclusive lock, so two `ext install`s never lose one another's entry."""
        private.prepare(self.data_dir)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = dict(self._read())
            yield entries
            document = {"format": FORMAT, "extensions": {k: attrs.asdict(v) for k, v in sorted(entries.items())}}
            private.write_atomic(self.path, json.dumps(document, indent=2).encode() + b"\n")
        finally:
            os.close(fd)

    def install(self, ext: Extension, replace: bool = False) -> tuple[Installed, bool]:
        """Vouch for `ext` under its id; returns the entry and whether anything changed. An id already installed
        with other digests is replaced only when asked (`replace`)."""
        with self._locked() as entries:
            old = entries.get(ext.id)
            if old is not None and (old.module_sha256, old.manifest_sha256) == (ext.module_sha256,
                                                                                ext.manifest_sha256):
                return old, False
            if old is not None and not replace:
                raise IdentityError(f"{ext.id} is already installed (module sha256 {old.module_sha256}, from "
                                    f"{old.directory}); {ext.directory} has module sha256 {ext.module_sha256}. "
                                    f"To vouch for the new one instead: capengine ext install --replace "
                                    f"{ext.directory}")
            if not _SHA256.match(ext.manifest_sha256):
                raise IdentityError(f"{ext.id} was not loaded from a manifest; install its directory")
            entry = Installed(ext.id, ext.version, ext.module_sha256, ext.manifest_sha256,
                              str(ext.directory.resolve()), datetime.now(UTC).isoformat(timespec="seconds"))
            entries[ext.id] = entry
            return entry, True

    def remove(self, ext_id: str) -> Installed | None:
        with self._locked() as entries:
            return entries.pop(ext_id, None)

    def bind(self, ext: Extension, require_installed: bool) -> Extension:
        """`ext` with the namespace it is entitled to: its id when its digests are the installed ones or a key
        the operator trusts for the id signed them; else a development namespace keyed by its module digest
        (only when `require_installed` is false)."""
        entry = self.entries().get(ext.id)
        if entry is not None and (entry.module_sha256, entry.manifest_sha256) == (ext.module_sha256,
                                                                                  ext.manifest_sha256):
            return attrs.evolve(ext, namespace=ext.id)
        if self.trusted.signer(ext) is not None:
            return attrs.evolve(ext, namespace=ext.id)
        if entry is None:
            if require_installed:
                raise IdentityError(f"{ext.directory}: extension {ext.id} is not installed, so its id is only a "
                                    f"claim; if you vouch for it: capengine ext install {ext.directory} (or "
                                    "trust the key that signed it: capengine ext trust)")
            return attrs.evolve(ext, namespace=development_namespace(ext.module_sha256))
        problems = [f"its {what} has sha256 {got}, the installed one {want}"
                    for what, got, want in (("module", ext.module_sha256, entry.module_sha256),
                                            ("manifest", ext.manifest_sha256, entry.manifest_sha256)) if got != want]
        raise IdentityError(f"{ext.directory}: refusing {ext.id}: it is not what was installed under that id "
                            f"(from {entry.directory}): {'; '.join(problems)}. If you vouch for this one: "
                            f"capengine ext install --replace {ext.directory}")


def load_installed(extensions_dir: Path, data_dir: Path) -> tuple[dict[str, Extension], list[str]]:
    """What the daemon serves: every extension under `extensions_dir` whose digests match its installed id.
    Anything else goes to `broken` with the reason: unreadable manifests, ids not installed, digests that differ,
    and every directory of an id claimed more than once (none of them wins)."""
    private.prepare(data_dir)
    found, broken = load_extensions(extensions_dir)
    claims: dict[str, list[Extension]] = {}
    for ext in found:
        claims.setdefault(ext.id, []).append(ext)
    registry = InstalledRegistry(data_dir)
    loaded = {}
    for ext_id, exts in claims.items():
        if len(exts) > 1:
            where = ", ".join(str(e.directory) for e in exts)
            broken.extend(f"{e.directory}: extension id {ext_id} is claimed by {len(exts)} directories ({where}); "
                          "none of them is loaded: remove all but one" for e in exts)
            continue
        try:
            loaded[ext_id] = registry.bind(exts[0], require_installed=True)
        except IdentityError as exc:
            broken.append(str(exc))
    return loaded, broken
