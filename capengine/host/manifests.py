"""Extension directories: `manifest.yaml` + the module. A broken manifest is an error naming file and line."""

from __future__ import annotations

from pathlib import Path

import attrs

from capengine.errors import CapengineError
from capengine.host import module_manifest
from capengine.policy import globs
from capengine.policy.schemas import validator
from capengine.policy.yaml_source import YamlSourceError, load_documents


class ExtensionError(CapengineError):
    pass


@attrs.frozen
class Extension:
    id: str
    name: str
    version: str
    module_path: Path
    jobs: tuple[str, ...]
    operations: tuple[str, ...]  # globs: what the extension declares it needs
    directory: Path
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
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtensionError(f"{manifest}: cannot read the manifest: {exc}") from None
    try:
        docs = list(load_documents(text))
    except YamlSourceError as exc:
        raise ExtensionError(f"{manifest}:{exc.line}:{exc.column}: {exc.message}; fix the YAML syntax") from None
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        raise ExtensionError(f"{manifest}:1:1: the manifest must be a single YAML mapping")
    doc = docs[0]
    problems = [f"{manifest}:{line}:{col}: duplicate key '{key}'" for key, line, col in doc.duplicates]
    for err in validator("manifest.schema.json").iter_errors(doc.data):
        line, col = doc.position(tuple(err.absolute_path))
        where = "/".join(map(str, err.absolute_path)) or "manifest"
        problems.append(f"{manifest}:{line}:{col}: {where}: {err.message}")
    if problems:
        raise ExtensionError("; ".join(problems))
    data = doc.data
    module = directory / data["module"]
    if not module.is_file():
        line, col = doc.position(("module",))
        raise ExtensionError(f"{manifest}:{line}:{col}: module file {data['module']} not found in {directory} "
                             "(build it first: make -C extensions)")
    try:  # a module built with the Rust SDK carries its manifest facts: the manifest must say the same
        drift = module_manifest.disagreements(module, data)
    except module_manifest.ModuleManifestError as exc:
        raise ExtensionError(f"{manifest}:1:1: {exc}") from None
    if drift:
        raise ExtensionError(f"{manifest}:1:1: the manifest disagrees with its module: {'; '.join(drift)}; "
                             f"regenerate it: python3 -m capengine.host.module_manifest write {directory}")
    return Extension(data["id"], data["name"], data["version"], module, tuple(data["jobs"]),
                     tuple(data["operations"]), directory)


def load_extensions(directory: str | Path) -> tuple[list[Extension], list[str]]:
    """Every extension below `directory`; broken ones are reported and skipped, the others still load."""
    found, errors = [], []
    for manifest in sorted(Path(directory).glob("*/manifest.yaml")):
        try:
            found.append(load_extension(manifest.parent))
        except ExtensionError as exc:
            errors.append(str(exc))
    return found, errors
