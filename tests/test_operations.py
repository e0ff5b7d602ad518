"""Operations against a real library directory: path escapes, symlink races, sidecar atomicity, OCR, e2e C guest."""

from __future__ import annotations

import base64
import os
import shutil
import threading
from pathlib import Path

import pytest
from wasm_helpers import LIB, build_c_example, make_host

from capengine.host import safe_fs
from capengine.host.libraries import Library
from capengine.host.manifests import load_extension
from capengine.host.operations import CallContext, OperationError, default_registry

REGISTRY = default_registry()


@pytest.fixture
def lib(tmp_path) -> Library:
    root = tmp_path / "lib"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha")
    (tmp_path / "outside.txt").write_text("OUTSIDE")
    return Library(LIB, "t", root)


def call(lib, name, **args):
    op = REGISTRY.get(name)
    op.validate(args)
    return op.handler(CallContext("com.example.app", lib, lib.root.parent / "data"), args)


def test_read_file_with_offset_and_length(lib):
    out = call(lib, "vdfs.read_file", path="/docs/a.txt", offset=1, length=3)
    assert base64.b64decode(out["data"]) == b"lph" and out["size"] == 5 and out["mime"] == "text/plain"


def test_list_dir_and_stat(lib):
    (lib.root / ".capengine").mkdir()
    listing = call(lib, "vdfs.list_dir", path="/")
    assert [e["name"] for e in listing["entries"]] == ["docs"]  # the sidecar store is hidden
    assert call(lib, "vdfs.stat", path="/docs/a.txt")["size"] == 5


@pytest.mark.parametrize("name,args", [
    ("vdfs.read_file", {}),
    ("vdfs.read_file", {"path": "/a", "offset": -1}),
    ("vdfs.write_sidecar", {"path": "/docs/a.txt", "kind": "../../x", "data": ""}),
    ("vdfs.write_sidecar", {"path": "/docs/a.txt", "kind": "OCR", "data": ""}),
    ("ai.ocr", {"path": "/a.png", "language": "eng; rm -rf /"}),
    ("test.ping", {"message": 1}),
])
def test_schema_violations(name, args):
    with pytest.raises(OperationError) as exc:
        REGISTRY.get(name).validate(args)
    assert exc.value.code == "INVALID_ARGUMENT"


def test_symlink_out_of_the_root_is_not_followed(lib, tmp_path):
    os.symlink(tmp_path / "outside.txt", lib.root / "docs" / "link.txt")
    os.symlink(tmp_path, lib.root / "escape")
    for path in ("/docs/link.txt", "/escape/outside.txt"):
        with pytest.raises(OperationError) as exc:
            call(lib, "vdfs.read_file", path=path)
        assert exc.value.code in ("PERMISSION_DENIED", "NOT_FOUND")
    entries = {e["name"]: e["kind"] for e in call(lib, "vdfs.list_dir", path="/docs")["entries"]}
    assert entries["link.txt"] == "symlink"


def test_symlink_swapped_in_during_reads_never_leaks(lib, tmp_path):
    """A racing thread flips /docs/race between a real directory and a symlink to outside the root."""
    real = lib.root / "docs" / "race"
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            shutil.rmtree(real, ignore_errors=True) if real.is_dir() and not real.is_symlink() else None
            try:
                real.unlink() if real.is_symlink() else None
                os.symlink(tmp_path, real)
                real.unlink()
                real.mkdir()
                (real / "outside.txt").write_text("inside")
            except OSError:
                pass

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(2000):
            try:
                data = base64.b64decode(call(lib, "vdfs.read_file", path="/docs/race/outside.txt")["data"])
            except OperationError:
                continue
            assert data in (b"", b"inside")  # never b"OUTSIDE": the symlink is not followed
    finally:
        stop.set()
        t.join()


def test_write_sidecar_is_keyed_by_content_and_atomic(lib):
    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="first")
    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="second")
    assert call(lib, "vdfs.read_sidecar", path="/docs/a.txt", kind="ocr-text")["data"] == "second"
    [stored] = (lib.root / ".capengine" / "sidecars").glob("*/*/ocr-text")
    assert stored.read_text() == "second" and stored.stat().st_mode & 0o777 == 0o600
    assert not list(stored.parent.glob("*.tmp"))


def test_sidecar_crash_before_rename_leaves_old_file(lib, monkeypatch):
    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="old")

    def crash(*a, **k):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OperationError):  # a failing file system is an error the guest sees, not a host bug
        call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="new")
    monkeypatch.undo()
    [stored] = (lib.root / ".capengine" / "sidecars").glob("*/*/ocr-text")
    assert stored.read_text() == "old" and not list(stored.parent.glob("*.tmp"))


def test_abandoned_temp_files_are_swept(lib):
    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="v1")
    [stored] = (lib.root / ".capengine" / "sidecars").glob("*/*/ocr-text")
    old, fresh = stored.parent / ".ocr-text.1.dead.tmp", stored.parent / ".ocr-text.2.live.tmp"
    old.write_text("torn")
    fresh.write_text("in progress")
    os.utime(old, (0, 0))
    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="v2")
    assert not old.exists() and fresh.exists()  # a writer that may still be running is left alone


def test_open_beneath_rejects_non_canonical(lib):
    for bad in ("docs/a.txt", "/docs/../a", "/docs/./a.txt"):
        with pytest.raises(safe_fs.FsError), safe_fs.open_beneath(lib.root, bad):
            pass


def render_png(path: Path, text: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (900, 160), 255)
    ImageDraw.Draw(img).text((40, 50), text, fill=0, font=ImageFont.load_default(size=48))
    img.save(path)


def test_ocr_reads_a_rendered_image(lib):
    render_png(lib.root / "docs" / "sign.png", "OPEN SESAME 42")
    out = call(lib, "ai.ocr", path="/docs/sign.png")
    assert "OPEN SESAME 42" in out["text"] and 0.5 < out["confidence"] <= 1


def test_ocr_without_tesseract_is_a_clear_error(lib, monkeypatch):
    render_png(lib.root / "docs" / "sign.png", "X")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(OperationError) as exc:
        call(lib, "ai.ocr", path="/docs/sign.png")
    assert exc.value.code == "INTERNAL" and "tesseract" in exc.value.message


PHOTO_POLICY = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: p}
spec:
  extensions: ["com.example.photo-ocr"]
  rules:
    - {id: browse, effect: allow, operations: [vdfs.list_dir], condition: 'path.under("/photos")'}
    - {id: read, effect: allow, operations: [vdfs.read_file, ai.ocr], condition: 'path.under("/photos")'}
    - {id: private, effect: deny, operations: ["**"], condition: 'path.glob("/photos/private*")'}
    - {id: sidecars, effect: allow, operations: [vdfs.write_sidecar], condition: 'args.kind == "ocr-text"'}
"""


def test_c_photo_ocr_extension_end_to_end(tmp_path):
    ext = load_extension(build_c_example())
    host = make_host(tmp_path, PHOTO_POLICY)
    try:
        photos = tmp_path / "lib" / "photos"
        photos.mkdir()
        render_png(photos / "note.png", "HELLO WASM")
        render_png(photos / "private-id.png", "PRIVATE")
        result, calls = host.run_job(ext, "scan", f'{{"library": "{LIB}", "dir": "/photos"}}'.encode())
    finally:
        host.close()
    summary = [(c.operation, c.path, c.code) for c in calls]
    assert ("ai.ocr", "/photos/note.png", "OK") in summary
    assert ("vdfs.write_sidecar", "/photos/note.png", "OK") in summary
    assert ("vdfs.read_file", "/photos/private-id.png", "PERMISSION_DENIED") in summary
    assert result.status == "failed"  # one image was refused, and the job says so
    [sidecar] = (tmp_path / "lib" / ".capengine" / "sidecars").glob("*/*/ocr-text")
    assert "HELLO WASM" in sidecar.read_text()


def vault_call(tmp_path, extension_id, operation, **args):
    op = REGISTRY.get(operation)
    op.validate(args)
    return op.handler(CallContext(extension_id, None, tmp_path / "data"), args)


def test_vault_round_trip_and_isolation(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPENGINE_VAULT_KEY", raising=False)
    secret = "tok-" + os.urandom(16).hex()
    vault_call(tmp_path, "com.a.sync", "credentials.store", name="sync.token", secret=secret, kind="api-token")
    assert vault_call(tmp_path, "com.a.sync", "credentials.get", name="sync.token")["secret"] == secret
    with pytest.raises(OperationError) as exc:  # B asks for A's name: B's namespace has no such entry
        vault_call(tmp_path, "com.b.evil", "credentials.get", name="sync.token")
    assert exc.value.code == "NOT_FOUND" and secret not in exc.value.message
    assert (tmp_path / "data" / "vault.key").stat().st_mode & 0o777 == 0o600
    raw = (tmp_path / "data" / "vault.sqlite3").read_bytes()
    assert secret.encode() not in raw  # ciphertext at rest
    assert vault_call(tmp_path, "com.a.sync", "credentials.delete", name="sync.token")["deleted"] is True
    with pytest.raises(OperationError):
        vault_call(tmp_path, "com.a.sync", "credentials.get", name="sync.token")


def test_vault_row_moved_to_another_namespace_does_not_decrypt(tmp_path):
    import sqlite3

    vault_call(tmp_path, "com.a.sync", "credentials.store", name="k", secret="s")
    with sqlite3.connect(tmp_path / "data" / "vault.sqlite3") as db:
        db.execute("UPDATE secrets SET extension = 'com.b.evil'")
    with pytest.raises(OperationError) as exc:
        vault_call(tmp_path, "com.b.evil", "credentials.get", name="k")
    assert exc.value.code == "INTERNAL"


def test_secrets_never_reach_policies_or_call_records(tmp_path):
    from wasm_helpers import call_job, extension

    policy = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: v}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: store, effect: allow, operations: [credentials.store], condition: '!has(args.secret)'}
"""
    host = make_host(tmp_path, policy)
    try:
        ext = extension(tmp_path, call_job("credentials.store", '{"name": "n", "secret": "hunter2"}', 0))
        result, calls = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    assert calls[0].code == "OK" and "hunter2" not in repr(calls) and "hunter2" not in repr(result.logs)


WRITER = """
import sys
from pathlib import Path
from capengine.host.libraries import Library
from capengine.host.operations import CallContext, default_registry
op = default_registry().get("vdfs.write_sidecar")
lib = Library("{lib}", "t", Path(sys.argv[1]))
ctx = CallContext("com.example.app", lib, Path(sys.argv[1]).parent / "data")
i = 0
while True:
    i += 1
    op.handler(ctx, {{"path": "/docs/a.txt", "kind": "ocr-text", "data": str(i % 10) * 2_000_000}})
    print(i, flush=True)
"""


def test_sidecar_survives_a_killed_writer(lib):
    """SIGKILL a process in the middle of rewriting a 2 MB sidecar: the file is always a whole version."""
    import signal
    import subprocess
    import sys

    call(lib, "vdfs.write_sidecar", path="/docs/a.txt", kind="ocr-text", data="old")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(lib=LIB), str(lib.root)],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one full write has happened
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [stored] = (lib.root / ".capengine" / "sidecars").glob("*/*/ocr-text")
        text = stored.read_text()
        assert text == "old" or (len(text) == 2_000_000 and len(set(text)) == 1), len(text)
