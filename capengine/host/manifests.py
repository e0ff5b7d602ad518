"""Extension directories: `manifest.yaml` + the module. A broken manifest is an error naming file and line.

An Extension carries the sha256 of the module and manifest bytes it was loaded from, and a `namespace`: the key
of everything the host keeps for it (vault rows, sidecars, rate buckets). The manifest's `id` is only a claim,
so the namespace defaults to one derived from the module digest (development mode); it becomes the id only when
`capengine.host.installed` finds the same digests the operator installed under that id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs

from capengine.errors import CapengineError
from capengine.host import module_manifest
from capengine.host.module_limits import DEFAULT, MAX_MANIFEST_BYTES, ModuleError, read_regular
from capengine.policy import globs
from capengine.policy.schemas import validator
from capengine.policy.yaml_source import YamlSourceError, load_documents


class ExtensionError(CapengineError):
    pass


class IdentityError(ExtensionError):
    """A module is not the one the operator installed under its id (or none is installed, where one must be)."""


def development_namespace(module_sha256: str) -> str:
    """Cannot collide with an id: ids are reverse-DNS names without ':'."""
    return f"dev:{module_sha256}"


def _module_digest(ext: Extension) -> str:
    source = read_regular(ext.module_path, DEFAULT.max_bytes, "the module", ext.directory)
    return hashlib.sha256(source).hexdigest()


def _default_namespace(ext: Extension) -> str:
    return development_namespace(ext.module_sha256)


@attrs.frozen
class Extension:
    id: str
    name: str
    version: str
    module_path: Path
    jobs: tuple[str, ...]
    operations: tuple[str, ...]  # globs: what the extension declares it needs
    directory: Path
    module_sha256: str = attrs.field(default=attrs.Factory(_module_digest, takes_self=True))
    manifest_sha256: str = ""  # "" when built in code rather than loaded from a manifest
    namespace: str = attrs.field(default=attrs.Factory(_default_namespace, takes_self=True))
    _declared: dict[str, bool] = attrs.field(factory=dict, eq=False, repr=False, init=False)

    def declares(self, operation: str) -> bool:
        found = self._declared.get(operation)
        if found is None:
            found = any(globs.glob_match(p, operation) for p in self.operations)
            if len(self._declared) < 4096:  # bounded against made-up operation names
                self._declared[operation] = found
        return found


def load_extension(directory: str | Path) -> Extension:
    directory = Path(directory)
    manifest = directory / "manifest.yaml"
    try:  # never a FIFO (blocks), a link out of the directory or a huge file: module_limits.read_regular
        raw = read_regular(manifest, MAX_MANIFEST_BYTES, "the manifest", directory)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, ModuleError) as exc:
        raise ExtensionError(f"{manifest}: cannot read the manifest: {exc}") from None
    try:
        docs = list(load_documents(text))
    except YamlSourceError as exc:
        raise ExtensionError(f"{manifest}:{exc.line}:{exc.column}: {exc.message}; fix the YAML syntax") from None
    data = docs[0].data if len(docs) == 1 else None
    if not isinstance(data, dict):
        raise ExtensionError(f"{manifest}:1:1: the manifest must be a single YAML mapping")
    doc = docs[0]
    problems = [f"{manifest}:{line}:{col}: duplicate key '{key}'" for key, line, col in doc.duplicates]
    for err in validator("manifest.schema.json").iter_errors(data):
        line, col = doc.position(tuple(err.absolute_path))
        where = "/".join(map(str, err.absolute_path)) or "manifest"
        problems.append(f"{manifest}:{line}:{col}: {where}: {err.message}")
    if problems:
        raise ExtensionError("; ".join(problems))
    module = directory / data["module"]
    line, col = doc.position(("module",))
    try:  # a regular file beside the manifest, bounded; the runtime checks the size cap of its Limits again
        source = read_regular(module, DEFAULT.max_bytes, "the module", directory)
    except ModuleError as exc:
        raise ExtensionError(f"{manifest}:{line}:{col}: {exc}") from None
    except OSError as exc:
        raise ExtensionError(f"{manifest}:{line}:{col}: cannot read module file {data['module']} in {directory}: "
                             f"{exc.strerror} (build it first: make -C extensions)") from None
    try:  # a module built with the Rust SDK carries its manifest facts: the manifest must say the same
        drift = module_manifest.disagreements(module, data, source)
    except module_manifest.ModuleManifestError as exc:
        raise ExtensionError(f"{manifest}:1:1: {exc}") from None
    if drift:
        raise ExtensionError(f"{manifest}:1:1: the manifest disagrees with its module: {'; '.join(drift)}; "
                             f"regenerate it: python3 -m capengine.host.module_manifest write {directory}")
    return Extension(data["id"], data["name"], data["version"], module, tuple(data["jobs"]),
                     tuple(data["operations"]), directory, module_sha256=hashlib.sha256(source).hexdigest(),
                     manifest_sha256=hashlib.sha256(raw).hexdigest())


def load_extensions(directory: str | Path) -> tuple[list[Extension], list[str]]:
    """Every extension below `directory`; broken ones are reported and skipped, the others still load."""
    found: list[Extension] = []
    errors: list[str] = []
    for manifest in sorted(Path(directory).glob("*/manifest.yaml")):
        try:
            found.append(load_extension(manifest.parent))
        except ExtensionError as exc:
            errors.append(str(exc))
    return found, errors
