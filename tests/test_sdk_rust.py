"""The Rust guest SDK (extensions/sdk/rust): built offline with Debian's toolchain, its modules import only the ABI,
its request types agree with capengine/schemas/operations/ in both directions, manifests are generated from the
modules, denials reach Rust as `Error::PermissionDenied` with the rule, and photo-ocr-rs decides like the C one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

from capengine.host.dispatcher import Dispatcher
from capengine.host.extension_host import Host
from capengine.host.manifests import Extension, ExtensionError, load_extension
from capengine.host.module_manifest import (
    JOBS_SECTION,
    MANIFEST_SECTION,
    ModuleManifestError,
    check_manifest,
    custom_sections,
    embedded_facts,
    write_manifest,
)
from capengine.host.operations import Registry, default_registry
from capengine.host.runtime import Runtime
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "extensions"
SDK = EXT / "sdk" / "rust"
ABI = {"spacedrive_call", "spacedrive_call_into", "spacedrive_result", "spacedrive_input", "spacedrive_log"}
RUST_EXTENSIONS = ("photo-ocr-rs", "test-extension")


@pytest.fixture(scope="session")
def built() -> None:
    """`make -C extensions` (incremental): the Rust modules are built by the same command as the C one."""
    proc = subprocess.run(["make", "-s", "-C", str(EXT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def bundled_policies() -> PolicySet:
    load = load_paths([ROOT / "policies"])
    assert not load.has_errors
    return PolicySet.from_load(load)


def library_copy(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    shutil.copytree(EXT / "sample-library", root, ignore=shutil.ignore_patterns("sidecars"))
    return root


# ---- the modules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RUST_EXTENSIONS)
def test_modules_import_only_the_abi_and_export_their_jobs(built, name):
    ext = load_extension(EXT / name)
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(ext.module_path))
    imports = {(i.module, i.name) for i in module.imports}
    assert imports <= {("spacedrive", n) for n in ABI}, imports
    exports = {e.name for e in module.exports}
    assert {"memory", "plugin_init"} | {f"execute_{job}" for job in ext.jobs} <= exports


def test_unsafe_code_only_in_the_ffi_module():
    """The compiler enforces it (`#![deny(unsafe_code)]` at the root, allowed in `mod ffi` alone); this checks
    that the attributes stay, and that no other module or the macros' expansions use `unsafe`."""
    sources = [*(SDK / "spacedrive-sdk" / "src").glob("*.rs"), SDK / "spacedrive-sdk-macros" / "src" / "lib.rs"]
    for source in sources:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            line = line.split("//")[0]
            if "unsafe" in line and source.name != "ffi.rs":
                assert re.fullmatch(r"\s*#!?\[(deny|allow)\(unsafe_code\)\]\s*", line), f"{source}:{number}: {line}"
    ffi = (SDK / "spacedrive-sdk" / "src" / "lib.rs").read_text()
    assert "#![deny(unsafe_code)]" in ffi and "#[allow(unsafe_code)]\nmod ffi;" in ffi


# ---- manifests generated from the module -------------------------------------------------------------------

@pytest.mark.parametrize("name", RUST_EXTENSIONS)
def test_committed_manifest_matches_the_module(built, name):
    assert check_manifest(EXT / name) == []


def test_manifest_drift_is_reported_and_regenerated(built, tmp_path):
    directory = tmp_path / "ext"
    shutil.copytree(EXT / "photo-ocr-rs", directory, ignore=shutil.ignore_patterns("src", "Cargo.toml"))
    manifest = directory / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("- ai.ocr\n", "- ai.ocr\n- credentials.get\n")
                        .replace("com.example.photo-ocr-rs", "com.example.other"))
    problems = check_manifest(directory)
    assert any("id is 'com.example.other'" in p for p in problems), problems
    assert any("operations" in p and "credentials.get" in p for p in problems), problems
    with pytest.raises(ExtensionError, match="disagrees with its module.*regenerate it"):
        load_extension(directory)  # the host refuses a drifted manifest, whoever edited it
    write_manifest(directory)
    assert check_manifest(directory) == []
    assert load_extension(directory).id == "com.example.photo-ocr-rs"


def _custom_section(name: str, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name.encode() + payload
    assert len(body) < 128
    return b"\x00" + bytes([len(body)]) + body


def test_jobs_listed_but_not_exported_are_refused(tmp_path):
    facts = {"id": "com.example.x", "name": "X", "version": "0.1.0", "jobs": ["scan", "index"], "operations": []}
    module = tmp_path / "x.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0" + _custom_section(MANIFEST_SECTION, json.dumps(facts).encode())
                       + _custom_section(JOBS_SECTION, b"scan\n"))
    assert custom_sections(module.read_bytes())[JOBS_SECTION] == b"scan\n"
    with pytest.raises(ModuleManifestError, match=r"lists \['index', 'scan'\] but the module's #\[job\]s are"):
        embedded_facts(module)
    module.write_bytes(b"\0asm\x01\0\0\0\x00\x7f")  # a section that runs past the end
    with pytest.raises(ModuleManifestError, match="past the end"):
        custom_sections(module.read_bytes())


def test_missing_job_function_is_a_compile_error(built, tmp_path):
    """`jobs = [a, b]` without a `#[job]` for b does not build: the drift is caught before any host sees it."""
    crate = tmp_path / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / ".cargo").mkdir()
    shutil.copy(EXT / ".cargo" / "config.toml", crate / ".cargo" / "config.toml")
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "drift"\nversion = "0.1.0"\nedition = "2021"\n[lib]\ncrate-type = ["cdylib"]\n'
        f'[dependencies]\nspacedrive-sdk = {{ path = "{SDK / "spacedrive-sdk"}" }}\n[workspace]\n')
    (crate / "src" / "lib.rs").write_text(
        "use spacedrive_sdk::prelude::*;\n"
        '#[extension(id = "com.example.drift", name = "D", version = "0.1.0", jobs = [a, b])]\nstruct D;\n'
        '#[job(name = "a")]\nfn a(_ctx: &JobContext) -> Result<()> { Ok(()) }\n')
    proc = cargo(crate, "check")
    assert proc.returncode != 0 and "execute_b" in proc.stderr, proc.stderr


def cargo(crate: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/cargo", command, "--quiet", "--release", "--target", "wasm32-unknown-unknown"],
                          cwd=crate, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "RUSTC": "/usr/bin/rustc", "HOME": str(crate),
                               "CARGO_TARGET_DIR": str(EXT / "target")})


# ---- SDK types vs operation schemas, both directions ----------------------------------------------------------

def schema_disagreements(sent: dict[str, list[dict]], registry: Registry) -> list[str]:
    """What the SDK's requests (every type sent minimal and maximal) and the operation schemas disagree on:
    a payload the schema rejects (SDK -> schema), a schema property or operation the SDK never sends
    (schema -> SDK)."""
    problems = []
    for name in registry.names():
        op = registry.get(name)
        assert op is not None
        payloads = sent.get(name)
        if not payloads:
            problems.append(f"{name}: the SDK has no request type for this operation")
            continue
        for payload in payloads:
            try:
                op.validator(payload)
            except Exception as exc:  # noqa: BLE001 - fastjsonschema's exception, reported as a finding
                problems.append(f"{name}: SDK payload {payload} fails the schema: {exc}")
        covered = set().union(*(p.keys() for p in payloads))
        for prop in sorted(set(op.schema.get("properties", {})) - covered):
            problems.append(f"{name}: schema property {prop!r} is never sent by the SDK")
    problems += [f"{name}: the SDK sends an operation the host does not register" for name in sent
                 if registry.get(name) is None]
    return problems


class Recording:
    """A CallHandler that records each payload and passes it on to the real dispatcher."""

    def __init__(self, inner: Dispatcher) -> None:
        self.inner, self.sent = inner, {}

    def reply(self, ext, method, library_id, payload, deadline, errors):
        self.sent.setdefault(method, []).append(payload)
        return self.inner.reply(ext, method, library_id, payload, deadline, errors)

    def reject(self, ext, method, library_id, code, message, duration_us=0):
        self.inner.reject(ext, method, library_id, code, message, duration_us)


ALLOW_ALL = ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: all}\nspec:\n"
             "  extensions: [com.example.sdk-conformance]\n  rules:\n"
             "    - {id: all, effect: allow, operations: ['**']}\n")


@pytest.fixture(scope="module")
def conformance_run(built, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("conformance")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(ALLOW_ALL)
    load = load_paths([tmp_path / "policies"])
    host = Host(PolicySet.from_load(load), tmp_path / "data")
    library = host.open_library(library_copy(tmp_path))
    directory = tmp_path / "conformance"  # installed, so that its namespace is its id (read_sidecar's writer)
    directory.mkdir()
    shutil.copy(SDK / "conformance" / "conformance.wasm", directory)
    write_manifest(directory)
    host.installed.install(load_extension(directory))
    ext = host.bind(load_extension(directory))
    assert ext.namespace == ext.id == "com.example.sdk-conformance"
    run = host.new_run(ext, "conformance")
    recording = Recording(Dispatcher(host.active, host.registry, host.catalog, host.data_dir, job=run))
    job_input = json.dumps({"library": library.id, "dir": "/photos", "file": "/photos/receipt.png"}).encode()
    with Runtime() as runtime:
        result = runtime.run_job(ext, "conformance", recording, job_input)
    host.close()
    return result, recording.sent


def test_every_sdk_request_matches_its_schema_and_covers_it(conformance_run):
    result, sent = conformance_run
    assert result.status == "completed", result
    assert schema_disagreements(sent, default_registry()) == []


def test_every_sdk_result_type_decodes_the_host_answer(conformance_run):
    result, _ = conformance_run
    lines = [text for _, text in result.logs]
    failures = [line for line in lines if line.startswith("err ")]
    assert failures == [], failures
    assert sum(line.startswith("ok ") for line in lines) >= len(default_registry().names())


def test_the_agreement_check_fails_on_a_disagreement(conformance_run):
    """The checker above is not vacuous: a schema that grows a property, loses one the SDK sends, or an operation
    the SDK lacks, each fails it."""
    _, sent = conformance_run

    def mutated(name: str, change) -> Registry:
        registry = Registry()
        for op in default_registry():
            if op.name == name:
                schema = json.loads(json.dumps(op.schema))
                change(schema)
                op = type(op)(op.name, op.kind, op.description, schema, op.handler, op.path_field,
                              op.needs_library, op.hidden_args, op.aggregate)
            registry.register(op)
        return registry

    grown = mutated("vdfs.read_file", lambda s: s["properties"].update(follow={"type": "boolean"}))
    assert any("'follow' is never sent" in p for p in schema_disagreements(sent, grown))
    shrunk = mutated("ai.ocr", lambda s: s["properties"].pop("language"))
    assert any("ai.ocr: SDK payload" in p for p in schema_disagreements(sent, shrunk))
    no_replace = mutated("credentials.store", lambda s: s["properties"].pop("replace"))
    assert any("credentials.store: SDK payload" in p for p in schema_disagreements(sent, no_replace))
    retyped = mutated("job.metrics", lambda s: s["properties"]["items"].update(type="string"))
    assert any("job.metrics: SDK payload" in p for p in schema_disagreements(sent, retyped))
    extra = {k: v for k, v in sent.items() if k != "vdfs.stat"}
    assert "vdfs.stat: the SDK has no request type for this operation" in schema_disagreements(extra,
                                                                                                default_registry())


# ---- photo-ocr-rs decides like the C example ---------------------------------------------------------------

def decisions(host: Host, directory: Path, job_input: dict) -> tuple[list[tuple], object]:
    ext = load_extension(directory)
    result, calls = host.run_job(ext, "scan", json.dumps(job_input).encode())
    return [(c.operation, c.path, c.decided, c.allowed, c.rules, c.code) for c in calls], result


@pytest.mark.parametrize("folder", ["/photos", "/photos/private", "/docs", "/secrets", "/nowhere"])
def test_photo_ocr_rs_makes_the_same_decisions_as_the_c_example(built, tmp_path, folder):
    root = library_copy(tmp_path)
    (root / "photos" / "private" / "other.jpg").write_bytes((root / "photos" / "receipt.png").read_bytes())
    (root / "docs" / "scan.png").write_bytes(b"not an image")
    host = Host(bundled_policies(), tmp_path / "data")
    try:
        library = host.open_library(root)
        job_input = {"library": library.id, "dir": folder}
        c_calls, c_result = decisions(host, EXT / "photo-ocr", job_input)
        rs_calls, rs_result = decisions(host, EXT / "photo-ocr-rs", job_input)
    finally:
        host.close()
    assert rs_calls == c_calls and c_calls
    assert rs_result.status == c_result.status


def test_a_denied_call_reaches_rust_as_permission_denied_with_its_rule(built, tmp_path):
    host = Host(bundled_policies(), tmp_path / "data")
    try:
        library = host.open_library(library_copy(tmp_path))
        _, result = decisions(host, EXT / "photo-ocr-rs", {"library": library.id, "dir": "/photos/private"})
    finally:
        host.close()
    logs = [text for _, text in result.logs]
    # report() prints Error::code() and Error::rule(): only the PermissionDenied variant has both of these. The
    # private folder itself is denied (a trailing ** matches the directory too), so the listing is refused.
    assert "list /photos/private: PERMISSION_DENIED (rule photo-ocr/no-raw-originals)" in logs, logs
    assert result.status == "failed"


def test_an_undeclared_operation_is_denied_by_the_manifest_rule(built, tmp_path):
    """The counter declares only job.*: the manifest denies anything else, and the SDK's lifecycle calls of an
    extension that declares nothing are refused with rule "manifest" (logged once, the job still runs)."""
    host = Host(bundled_policies(), tmp_path / "data")
    ext = load_extension(EXT / "test-extension")
    ext = Extension(ext.id, ext.name, ext.version, ext.module_path, ext.jobs, ("vdfs.*",), ext.directory)
    try:
        result, calls = host.run_job(ext, "counter", b'{"target": 3}')
    finally:
        host.close()
    assert {(c.operation, c.code, c.rules) for c in calls} >= {("job.state", "PERMISSION_DENIED", ())}
    assert result.status == "failed"  # a resumable job cannot start without job.state
    assert any("job.state" in text and "rule manifest" in text for _, text in result.logs), result.logs
