"""Manifest facts embedded in a module, so that a manifest cannot drift from the code it describes.

The Rust SDK's `#[extension]` writes `{"id", "name", "version", "description"?, "jobs", "operations"}` into the
custom section `spacedrive.manifest`, and each `#[job]` writes `name\\n` into `spacedrive.jobs` (the linker
concatenates same-named sections). `manifest_text` renders manifest.yaml from them; `check_manifest` compares an
extension directory's manifest.yaml with its module. `make -C extensions` regenerates the Rust examples'
manifests on every build: `python3 -m capengine.host.module_manifest write DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from capengine.errors import CapengineError
from capengine.host.module_limits import DEFAULT, ModuleError, read_regular

MANIFEST_SECTION = "spacedrive.manifest"
JOBS_SECTION = "spacedrive.jobs"
FACTS = ("id", "name", "version", "description", "jobs", "operations")


class ModuleManifestError(CapengineError):
    pass


def _leb128(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise ModuleManifestError(f"{where}: truncated or oversized LEB128 at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def custom_sections(data: bytes, where: str = "module") -> dict[str, bytes]:
    """Custom sections by name (same-named ones concatenated in order, as a linker would)."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x01\0\0\0":
        raise ModuleManifestError(f"{where}: not a WebAssembly binary module (build it first)")
    found: dict[str, list[bytes]] = {}  # joined once at the end: a module of 800,000 one-byte sections of one
    pos = 8                               # name made repeated concatenation quadratic (seconds on load)
    while pos < len(data):
        section_id = data[pos]
        size, start = _leb128(data, pos + 1, where)
        end = start + size
        if end > len(data):
            raise ModuleManifestError(f"{where}: section at byte {pos} runs past the end of the file")
        if section_id == 0:
            name_len, name_start = _leb128(data, start, where)
            name = data[name_start:name_start + name_len].decode("utf-8", "replace")
            found.setdefault(name, []).append(data[name_start + name_len:end])
        pos = end
    return {name: b"".join(parts) for name, parts in found.items()}


def _read(module: Path) -> bytes:
    return read_regular(module, DEFAULT.max_bytes, "the module", module.parent)


def embedded_facts(module: Path, source: bytes | None = None) -> dict:
    """The manifest facts of an SDK-built module (`source`: its bytes when already read); an error when they are
    missing or inconsistent."""
    sections = custom_sections(_read(module) if source is None else source, str(module))
    if MANIFEST_SECTION not in sections:
        raise ModuleManifestError(f"{module}: no {MANIFEST_SECTION} section (not built with the Rust SDK's "
                                  "#[extension]?)")
    facts = _parse_facts(sections[MANIFEST_SECTION], module)
    exported = [line for line in sections.get(JOBS_SECTION, b"").decode("utf-8", "replace").split("\n") if line]
    listed = facts.get("jobs", [])
    if sorted(set(exported)) != sorted(listed):
        raise ModuleManifestError(
            f"{module}: #[extension(jobs = [...])] lists {sorted(listed)} but the module's #[job]s are "
            f"{sorted(set(exported))}; list every #[job] in #[extension] and nothing else")
    return facts


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("a duplicate key")
    return dict(pairs)


def _text(value: object) -> bool:
    """A str that has a UTF-8 form (json accepts a lone surrogate escape such as \\ud800; no file can hold it)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_facts(raw: bytes, module: Path) -> dict:
    """The section's facts, shaped as the SDK writes them: the module is the guest's, so is this section (deep
    nesting, wrong types, duplicate keys are an error naming the section, never a traceback)."""
    where = f"{module}: the {MANIFEST_SECTION} section"
    try:
        facts = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModuleManifestError(f"{where} is not a JSON object as #[extension] writes it: {str(exc)[:200]}") from None
    if not isinstance(facts, dict) or set(facts) - set(FACTS):
        raise ModuleManifestError(f"{where} has unexpected content (keys allowed: {', '.join(FACTS)})")
    for key, value in facts.items():
        ok = (isinstance(value, list) and all(map(_text, value))) if key in ("jobs", "operations") else _text(value)
        if not ok:
            kind = "a list of strings" if key in ("jobs", "operations") else "a string"
            raise ModuleManifestError(f"{where}: {key} must be {kind}")
    return facts


def manifest_text(facts: dict, module_name: str) -> str:
    data = {key: facts[key] for key in FACTS if key in facts}
    data["module"] = module_name
    ordered = {key: data[key] for key in ("id", "name", "version", "description", "module", "jobs", "operations")
               if key in data}
    header = ("# yaml-language-server: $schema=../../schemas/manifest.schema.json\n"
              f"# Generated from {module_name} (#[extension] / #[job]) by `make -C extensions`; do not edit.\n")
    return header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=120)


def disagreements(module: Path, manifest: object, source: bytes | None = None) -> list[str]:
    """How `manifest` (parsed manifest.yaml) differs from the facts embedded in `module` (`source`: its bytes,
    the very ones the host digests and runs); [] when they agree or when the module embeds none (C and WAT
    guests)."""
    try:
        source = _read(module) if source is None else source
        sections = custom_sections(source, str(module))
    except (OSError, ModuleManifestError, ModuleError):
        return []  # not a binary module (or unreadable): loading it reports the real problem
    if MANIFEST_SECTION not in sections:
        return []
    if not isinstance(manifest, dict):
        return ["the manifest is not a mapping"]
    facts = embedded_facts(module, source)
    return [f"{key} is {manifest.get(key)!r} but {module.name} says {facts.get(key)!r}"
            for key in FACTS if manifest.get(key) != facts.get(key)]


def _module_of(directory: Path) -> Path:
    modules = sorted(directory.glob("*.wasm"))
    if len(modules) != 1:
        raise ModuleManifestError(f"{directory}: expected exactly one .wasm module, found {len(modules)} "
                                  "(build it first: make -C extensions)")
    return modules[0]


def write_manifest(directory: Path) -> Path:
    module = _module_of(directory)
    target = directory / "manifest.yaml"
    text = manifest_text(embedded_facts(module), module.name)
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return target


def check_manifest(directory: Path) -> list[str]:
    """Every difference between manifest.yaml and its module's embedded facts (empty when they agree)."""
    module = _module_of(directory)
    embedded_facts(module)  # a module without facts is an error here
    manifest = directory / "manifest.yaml"
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return [f"{manifest}: cannot read: {exc}"]
    if not isinstance(data, dict):
        return [f"{manifest}: not a mapping"]
    problems = [f"{manifest}: {problem}" for problem in disagreements(module, data)]
    if data.get("module") != module.name:
        problems.append(f"{manifest}: module is {data.get('module')!r}, not {module.name!r}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("write", "check"):
        print("usage: python3 -m capengine.host.module_manifest write|check EXTENSION_DIR...", file=sys.stderr)
        return 2
    status = 0
    for directory in map(Path, argv[1:]):
        try:
            if argv[0] == "write":
                write_manifest(directory)
                continue
            for problem in check_manifest(directory):
                print(problem, file=sys.stderr)
                status = 1
        except (ModuleManifestError, ModuleError, OSError) as exc:
            print(exc, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
