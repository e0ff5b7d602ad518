"""Build hostile and ordinary guests for the bridge tests: WAT text around the ABI imports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from capengine.host.extension_host import Host
from capengine.host.manifests import Extension
from capengine.policy.engine import PolicySet
from capengine.policy.loader import LoadResult, load_text

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = (ROOT / "extensions" / "include" / "spacedrive.wat").read_text()
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
LIB_BYTES = "".join(f"\\{b:02x}" for b in bytes.fromhex(LIB.replace("-", "")))


def wat_module(body: str, data: str = "", pages: int = 2, max_pages: str = "") -> str:
    return (f"(module\n{IMPORTS}\n  (memory (export \"memory\") {pages} {max_pages})\n"
            f"  (data (i32.const 64) \"{LIB_BYTES}\")\n{data}\n{body}\n)")


def call_job(method: str | bytes, payload: str, library_ptr: int = 64) -> str:
    """A module whose job `go` makes one call with literal method/payload and returns the call's result."""
    method_len = len(method.encode() if isinstance(method, str) else method)
    data = (f'  (data (i32.const 1024) "{wat_bytes(method)}")\n'
            f'  (data (i32.const 4096) "{wat_bytes(payload)}")')
    body = f"""
  (func (export "execute_go") (result i32)
    (local $n i32)
    (local.set $n (call $spacedrive_call (i32.const 1024) (i32.const {method_len})
                                         (i32.const {library_ptr}) (i32.const 4096)
                                         (i32.const {len(payload.encode())})))
    (if (i32.ge_s (local.get $n) (i32.const 0))
      (then (drop (call $spacedrive_result (i32.const 32768) (local.get $n)))
            (call $spacedrive_log (i32.const 1) (i32.const 32768) (local.get $n))))
    (i32.const 0))"""
    return wat_module(body, data)


def wat_bytes(text: str | bytes) -> str:
    """Text or bytes as the body of a WAT data string (every byte escaped)."""
    raw = text.encode() if isinstance(text, str) else text
    return "".join(f"\\{b:02x}" for b in raw)


def expect_job(expected: int, call: str, data: str = "") -> str:
    """A module whose job `go` traps unless `call` (a WAT expression) returns `expected`."""
    body = f"""
  (func (export "execute_go") (result i32)
    (if (i32.ne {call} (i32.const {expected})) (then unreachable))
    (i32.const 0))"""
    return wat_module(body, data)


def extension(tmp_path: Path, wat: str, ext_id: str = "com.example.app", operations=("**",),
              jobs=("go",)) -> Extension:
    path = tmp_path / f"{ext_id}.wat"
    path.write_text(wat)
    return Extension(ext_id, ext_id, "0.1.0", path, tuple(jobs), tuple(operations), tmp_path)


def installed_extension(host: Host, tmp_path: Path, wat: str, ext_id: str = "com.example.app",
                        operations=("**",), jobs=("go",)) -> Extension:
    """Like `extension`, but installed in the host's data dir (replacing the id's previous module), so that
    successive guests of one test act as one extension and share its vault and sidecars. A plain `extension`
    runs in development mode: its namespace is keyed by its module digest, so two different guests never share."""
    from capengine.host.installed import InstalledRegistry
    from capengine.host.manifests import load_extension

    directory = tmp_path / "installed" / ext_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "module.wat").write_text(wat)
    (directory / "manifest.yaml").write_text(
        f"id: {ext_id}\nname: {ext_id}\nversion: 0.1.0\nmodule: module.wat\njobs: [{', '.join(jobs)}]\n"
        f"operations: [{', '.join(json.dumps(o) for o in operations)}]\n")
    ext = load_extension(directory)
    InstalledRegistry(host.data_dir).install(ext, replace=True)
    return ext


def policy_set(text: str) -> PolicySet:
    loaded, findings = load_text("test.yaml", text)
    assert not findings, [str(f) for f in findings]
    return PolicySet.from_load(LoadResult([loaded], []))


ALLOW_DOCS = f"""
apiVersion: capengine/v1
kind: Policy
metadata: {{name: t}}
spec:
  extensions: ["com.example.*"]
  rules:
    - {{id: docs, effect: allow, operations: [vdfs.read_file, vdfs.list_dir, vdfs.stat],
        condition: 'library == "{LIB}" && path.under("/docs")'}}
    - {{id: no-secret, effect: deny, operations: ["vdfs.**"], condition: 'path.glob("/docs/**/secret*")',
        message: "no secrets"}}
    - {{id: ping, effect: allow, operations: [test.ping]}}
"""


def make_host(tmp_path: Path, policies: str = ALLOW_DOCS, **limits) -> Host:
    from capengine.host.runtime import Limits

    library = tmp_path / "lib"
    (library / "docs" / "sub").mkdir(parents=True, exist_ok=True)
    (library / "docs" / "hello.txt").write_text("hello bytes")
    (library / "docs" / "sub" / "secret.txt").write_text("s3cret")
    host = Host(policy_set(policies), tmp_path / "data", Limits(**limits) if limits else None)
    host.catalog.add(library, "test", LIB)
    return host


def build_c_example() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "extensions")], check=True)
    return ROOT / "extensions" / "photo-ocr"


PING_METHOD, PING_PAYLOAD = "test.ping", '{"message": "hi"}'


# The reply envelope starts with {"ok": and then t(rue) or f(alse): byte 6 is 'f' (0x66) for a failed call.
REFUSED_STOPS = "(br_if $done (i32.eq (i32.load8_u (i32.const 32774)) (i32.const 0x66)))"


def pings(count: int, spin: bool = False, until_refused: bool = False) -> str:
    """A guest whose job `go` calls test.ping `count` times (reading each reply), then returns, or spins
    forever when `spin` (a job that is running when the test kills its worker); `until_refused` stops at the
    first call that fails (a job that runs until the host starts refusing)."""
    data = (f'  (data (i32.const 1024) "{wat_bytes(PING_METHOD)}")\n'
            f'  (data (i32.const 4096) "{wat_bytes(PING_PAYLOAD)}")')
    body = f"""
  (func (export "execute_go") (result i32)
    (local $i i32) (local $n i32)
    (block $done (loop $again
      (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
      (local.set $n (call $spacedrive_call (i32.const 1024) (i32.const {len(PING_METHOD)}) (i32.const 0)
                                           (i32.const 4096) (i32.const {len(PING_PAYLOAD)})))
      (if (i32.ge_s (local.get $n) (i32.const 0))
        (then (drop (call $spacedrive_result (i32.const 32768) (local.get $n)))))
      {REFUSED_STOPS if until_refused else ""}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $again)))
    {"(loop $spin (br $spin))" if spin else ""}
    (i32.const 0))"""
    return wat_module(body, data)
