"""Hostile library contents: FIFOs, sparse giants, decompression bombs, hard links, names the file system treats
as equal (NFD, case, non-UTF-8), sidecar poisoning across extensions. Real files, real Tesseract."""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasm_helpers import LIB, call_job, extension, make_host

from capengine.host import fs_names, safe_fs
from capengine.host.deadline import Deadline
from capengine.host.libraries import Library, LibraryCatalog, probe_case_insensitive
from capengine.host.operations import CallContext, OperationError, default_registry, vdfs
from capengine.host.operations import ocr as ocr_module

REGISTRY = default_registry()
HANG_BOUND = 30  # seconds: far above any honest call here; only a hang gets near it


@pytest.fixture
def lib(tmp_path) -> Library:
    root = tmp_path / "lib"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.txt").write_text("alpha")
    return Library(LIB, "t", root)


def call(lib, name, extension_id="com.example.app", deadline=None, **args):
    op = REGISTRY.get(name)
    op.validate(args)
    ctx = CallContext(extension_id, lib, lib.root.parent / "data", deadline or Deadline.after(60))
    return op.handler(ctx, args)


def outcome(lib, name, **args):
    """The error code a call ends with ("OK" when it succeeds), run in a thread so a hang fails the test."""
    box: list[str] = []

    def run():
        try:
            call(lib, name, **args)
            box.append("OK")
        except OperationError as exc:
            box.append(f"{exc.code}: {exc.message}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG_BOUND)
    assert not t.is_alive(), f"{name} {args} hung"
    return box[0]


# --- item 4: nothing but regular files and directories is opened; no host call hangs -------------------------

FIFO_CALLS = [("vdfs.read_file", {}), ("ai.ocr", {}), ("vdfs.write_sidecar", {"kind": "ocr-text", "data": "x"}),
              ("vdfs.read_sidecar", {"kind": "ocr-text"})]


@pytest.mark.parametrize("name,extra", FIFO_CALLS)
def test_a_fifo_named_like_a_photo_is_refused_not_waited_on(lib, name, extra):
    os.mkfifo(lib.root / "photos" / "holiday.png")
    result = outcome(lib, name, path="/photos/holiday.png", **extra)
    assert result.startswith("INVALID_ARGUMENT") and "FIFO" in result


def test_a_socket_and_a_directory_are_refused_too(lib):
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(lib.root / "photos" / "s.png"))
    try:
        assert "socket" in outcome(lib, "vdfs.read_file", path="/photos/s.png")
    finally:
        sock.close()
    assert outcome(lib, "ai.ocr", path="/photos").startswith("INVALID_ARGUMENT")


def test_a_fifo_swapped_in_after_the_check_is_opened_without_blocking_and_refused(lib, monkeypatch):
    """The race: fstatat saw a regular file, then a FIFO took its place. O_NONBLOCK + fstat catch it."""
    fifo = lib.root / "photos" / "swap.png"
    os.mkfifo(fifo)
    regular = os.stat(lib.root / "photos" / "a.txt")
    real_stat = os.stat

    def stat_says_regular(path, *args, **kwargs):
        return regular if path == b"swap.png" else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(safe_fs.os, "stat", stat_says_regular)
    result = outcome(lib, "vdfs.read_file", path="/photos/swap.png")
    assert result.startswith("INVALID_ARGUMENT") and "FIFO" in result


def test_a_fifo_on_the_way_or_behind_a_link_is_never_opened(lib):
    os.mkfifo(lib.root / "photos" / "pipe")
    os.symlink("pipe", lib.root / "photos" / "link.png")
    assert outcome(lib, "vdfs.read_file", path="/photos/pipe/x.png").startswith("NOT_FOUND")
    assert outcome(lib, "vdfs.list_dir", path="/photos/pipe").startswith("NOT_FOUND")
    assert outcome(lib, "vdfs.read_file", path="/photos/link.png").startswith("PERMISSION_DENIED")
    assert call(lib, "vdfs.stat", path="/photos/pipe")["kind"] == "other"  # lstat only: metadata is safe


def test_a_planted_sidecar_fifo_or_hard_link_is_refused(lib):
    """Whoever writes the library can write .capengine/ too: a sidecar is opened like any library file."""
    call(lib, "vdfs.write_sidecar", path="/photos/a.txt", kind="k", data="mine")
    [stored] = (lib.root / ".capengine" / "sidecars").glob("*/*/k")
    stored.unlink()
    os.mkfifo(stored)
    assert outcome(lib, "vdfs.read_sidecar", path="/photos/a.txt", kind="k").startswith("INVALID_ARGUMENT")
    stored.unlink()
    (lib.root / "secret.txt").write_text("sk-live")
    os.link(lib.root / "secret.txt", stored)
    result = outcome(lib, "vdfs.read_sidecar", path="/photos/a.txt", kind="k")
    assert result.startswith("PERMISSION_DENIED") and "sk-live" not in result


def test_a_fifo_through_a_real_guest_fails_the_call_not_the_host(tmp_path):
    host = make_host(tmp_path, cpu_seconds=5.0)
    try:
        os.mkfifo(tmp_path / "lib" / "docs" / "holiday.png")
        ext = extension(tmp_path, call_job("vdfs.read_file", '{"path": "/docs/holiday.png"}'))
        result, calls = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    assert result.status == "completed" and calls[0].code == "INVALID_ARGUMENT"


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_16_gib_sparse_file_is_not_hashed(lib, monkeypatch):
    sparse(lib.root / "photos" / "huge.bin", 16 * 1024 ** 3)
    reads = []
    monkeypatch.setattr(vdfs.os, "read", lambda *a: reads.append(a) or b"")
    for name, extra in (("vdfs.write_sidecar", {"data": "x"}), ("vdfs.read_sidecar", {})):
        result = outcome(lib, name, path="/photos/huge.bin", kind="ocr-text", **extra)
        assert result.startswith("RESOURCE_EXHAUSTED") and "bytes" in result
    assert reads == []  # refused from fstat alone


def test_hashing_stops_at_the_call_deadline(lib):
    sparse(lib.root / "photos" / "big.bin", vdfs.MAX_HASHED)
    expired = Deadline(time.monotonic() - 1)
    with pytest.raises(OperationError) as exc:
        call(lib, "vdfs.write_sidecar", deadline=expired, path="/photos/big.bin", kind="k", data="x")
    assert exc.value.code == "RESOURCE_EXHAUSTED" and "time limit" in exc.value.message
    with pytest.raises(OperationError) as exc:
        call(lib, "vdfs.write_sidecar", deadline=Deadline.after(60, lambda: True), path="/photos/big.bin",
             kind="k", data="x")
    assert "shutting down" in exc.value.message


def test_content_hashes_are_cached_until_the_file_changes(lib, monkeypatch):
    path = lib.root / "photos" / "a.txt"
    call(lib, "vdfs.write_sidecar", path="/photos/a.txt", kind="k", data="one")
    real_read = os.read
    reads = []

    def counting_read(fd, n):
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(vdfs.os, "read", counting_read)
    assert call(lib, "vdfs.read_sidecar", path="/photos/a.txt", kind="k")["data"] == "one"
    assert reads == [vdfs.MAX_READ + 1]  # only the sidecar itself was read, not the entry
    path.write_text("alpha, changed")
    with pytest.raises(OperationError) as exc:  # new content: another hash, so no sidecar for it yet
        call(lib, "vdfs.read_sidecar", path="/photos/a.txt", kind="k")
    assert exc.value.code == "NOT_FOUND"


SIDECAR_POLICY = f"""
apiVersion: capengine/v1
kind: Policy
metadata: {{name: t}}
spec:
  extensions: ["com.example.*"]
  rules:
    - {{id: s, effect: allow, operations: [vdfs.write_sidecar], condition: 'library == "{LIB}"'}}
"""


def test_host_shutdown_ends_a_long_host_call(tmp_path):
    """A guest's call hashes a 1 GiB file; interrupt_all (daemon shutdown) stops the call, not just the wasm."""
    host = make_host(tmp_path, SIDECAR_POLICY, cpu_seconds=60.0)
    sparse(tmp_path / "lib" / "docs" / "big.bin", vdfs.MAX_HASHED)
    ext = extension(tmp_path, call_job("vdfs.write_sidecar", '{"path": "/docs/big.bin", "kind": "k", "data": "x"}'))
    out: list = []
    worker = threading.Thread(target=lambda: out.append(host.run_job(ext, "go", b"{}")), daemon=True)
    try:
        worker.start()
        time.sleep(0.2)
        host.runtime.interrupt_all()
        worker.join(HANG_BOUND)
        assert not worker.is_alive()
    finally:
        host.close()
    result, calls = out[0]
    if calls:  # the call had started: it was stopped from inside, and says why
        assert calls[0].code == "RESOURCE_EXHAUSTED" and "shutting down" in calls[0].message
    else:  # the shutdown came before the guest ran
        assert result.status == "interrupted"


def test_the_jobs_cpu_limit_reaches_inside_a_host_call(tmp_path, monkeypatch):
    """cpu_seconds=0.3 and a call that would hash 1 GiB in 4 KiB steps: the call stops at the job's limit."""
    monkeypatch.setattr(vdfs, "HASH_CHUNK", 4096)
    host = make_host(tmp_path, SIDECAR_POLICY, cpu_seconds=0.3)
    sparse(tmp_path / "lib" / "docs" / "big.bin", vdfs.MAX_HASHED)
    ext = extension(tmp_path, call_job("vdfs.write_sidecar", '{"path": "/docs/big.bin", "kind": "k", "data": "x"}'))
    out: list = []
    worker = threading.Thread(target=lambda: out.append(host.run_job(ext, "go", b"{}")), daemon=True)
    try:
        worker.start()
        worker.join(HANG_BOUND)
        assert not worker.is_alive()
    finally:
        host.close()
    result, calls = out[0]
    if calls:
        assert calls[0].code == "RESOURCE_EXHAUSTED" and "time limit" in calls[0].message, calls[0]
    else:  # the limit ran out before the guest got to its call
        assert result.status == "failed" and "CPU time limit" in result.error


# --- item 5: OCR decompression bomb ----------------------------------------------------------------------------

def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A real 1-bit PNG of width x height white pixels, written row by row (the file is about 100 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_never_reaches_tesseract(lib, monkeypatch):
    bomb = bomb_png(lib.root / "photos" / "bomb.png")
    assert bomb.stat().st_size < 1024 * 1024
    started = []
    monkeypatch.setattr(ocr_module.subprocess, "Popen", lambda *a, **k: started.append(a) or 1 / 0)
    result = outcome(lib, "ai.ocr", path="/photos/bomb.png")
    assert result.startswith("RESOURCE_EXHAUSTED") and "pixels" in result and started == []


def test_an_image_just_over_the_pixel_cap_is_refused_from_its_header(lib, monkeypatch):
    monkeypatch.setattr(ocr_module, "MAX_PIXELS", 1000 * 999)
    bomb_png(lib.root / "photos" / "wide.png", 1000, 1000)
    result = outcome(lib, "ai.ocr", path="/photos/wide.png")
    assert result.startswith("RESOURCE_EXHAUSTED") and "1000x1000" in result


def test_tesseract_runs_under_rlimit_as_one_thread_and_a_clean_environment(lib, tmp_path, monkeypatch):
    """A stand-in tesseract on PATH reports the limits it was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tesseract"
    fake.write_text('#!/bin/sh\necho "threads=$OMP_THREAD_LIMIT as=$(ulimit -v) home=${HOME:-unset}" >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    bomb_png(lib.root / "photos" / "small.png", 64, 64)
    result = outcome(lib, "ai.ocr", path="/photos/small.png")
    assert f"threads=1 as={ocr_module.MEMORY_BYTES // 1024} home=unset" in result


def test_tesseract_over_its_memory_limit_is_resource_exhausted(lib, monkeypatch):
    from test_operations import render_png

    render_png(lib.root / "photos" / "sign.png", "HELLO")
    monkeypatch.setattr(ocr_module, "MEMORY_BYTES", 16 * 1024 * 1024)  # too little even to load the model
    result = outcome(lib, "ai.ocr", path="/photos/sign.png")
    assert result.startswith("RESOURCE_EXHAUSTED"), result


def test_ocr_is_killed_at_the_deadline(lib, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tesseract").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "tesseract").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    bomb_png(lib.root / "photos" / "small.png", 64, 64)
    result = outcome(lib, "ai.ocr", path="/photos/small.png", deadline=Deadline.after(0.3))
    assert result.startswith("RESOURCE_EXHAUSTED") and "stopped" in result


def test_a_file_that_is_not_an_image_is_invalid_argument(lib):
    (lib.root / "photos" / "fake.png").write_bytes(b"not a png at all")
    assert outcome(lib, "ai.ocr", path="/photos/fake.png").startswith("INVALID_ARGUMENT")


# --- item 6: sidecars are namespaced per extension --------------------------------------------------------------

def test_extension_b_cannot_replace_a_sidecar_of_extension_a(lib):
    (lib.root / "documents").mkdir()
    (lib.root / "photos" / "receipt.png").write_bytes(b"same bytes")
    (lib.root / "documents" / "copy.png").write_bytes(b"same bytes")
    call(lib, "vdfs.write_sidecar", "com.a.ocr", path="/photos/receipt.png", kind="ocr-text", data="TOTAL 12.50")
    call(lib, "vdfs.write_sidecar", "com.b.evil", path="/documents/copy.png", kind="ocr-text", data="PAY EVIL")
    mine = call(lib, "vdfs.read_sidecar", "com.a.ocr", path="/photos/receipt.png", kind="ocr-text")
    assert mine["data"] == "TOTAL 12.50" and mine["writer"] == "com.a.ocr"
    theirs = call(lib, "vdfs.read_sidecar", "com.a.ocr", path="/photos/receipt.png", kind="ocr-text",
                  writer="com.b.evil")
    assert theirs["data"] == "PAY EVIL" and theirs["writer"] == "com.b.evil"  # only when asked, and labelled
    sidecars = lib.root / ".capengine" / "sidecars"
    assert sorted(p.name for p in sidecars.iterdir()) == ["com.a.ocr", "com.b.evil"]


def test_odd_extension_ids_get_digest_namespaces_that_cannot_collide():
    assert vdfs.namespace("com.example.app") == "com.example.app"
    odd = [vdfs.namespace(x) for x in ("dev:sha256:ab/../x", "..", "A.Upper", "x" * 300)]
    assert all(n.startswith("=") and "/" not in n and len(n) == 65 for n in odd)
    assert len(set(odd)) == 4


def test_policies_see_whose_sidecar_is_read(tmp_path):
    policy = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: t}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: own, effect: allow, operations: [vdfs.read_sidecar], condition: '!has(args.writer)'}
"""
    host = make_host(tmp_path, policy)
    try:
        ext = extension(tmp_path, call_job("vdfs.read_sidecar",
                                           '{"path": "/docs/hello.txt", "kind": "k", "writer": "com.other"}'))
        _, calls = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    assert calls[0].code == "PERMISSION_DENIED" and calls[0].args["writer"] == "com.other"


# --- item 7: names the file system treats as equal ---------------------------------------------------------------

def test_an_nfd_name_is_listed_and_readable_by_either_spelling(lib):
    nfd = "cafe\u0301.txt"
    (lib.root / "photos" / nfd).write_text("nfd bytes")
    names = [e["name"] for e in call(lib, "vdfs.list_dir", path="/photos")["entries"]]
    assert nfd in names
    for spelling in (nfd, "caf\u00e9.txt"):  # the policy sees NFC either way (canonical_path)
        from capengine.policy.paths import canonical_path

        out = call(lib, "vdfs.read_file", path=canonical_path("/photos/" + spelling))
        assert base64.b64decode(out["data"]) == b"nfd bytes"
        assert call(lib, "vdfs.stat", path=canonical_path("/photos/" + spelling))["size"] == 9


def test_two_names_equal_after_nfc_open_the_exact_one_or_refuse(lib):
    (lib.root / "photos" / "caf\u00e9").write_text("nfc")
    (lib.root / "photos" / "cafe\u0301").write_text("nfd")
    assert base64.b64decode(call(lib, "vdfs.read_file", path="/photos/caf\u00e9")["data"]) == b"nfc"
    os.unlink(lib.root / "photos" / "caf\u00e9")
    (lib.root / "photos" / "cafe\u0301\u0300").write_text("other")  # unrelated name, different NFC
    assert base64.b64decode(call(lib, "vdfs.read_file", path="/photos/caf\u00e9")["data"]) == b"nfd"


NASTY_NAMES = [b"caf\xe9.txt", b"\xff\xfe", b"line\nbreak", b"esc\x1b[31m", b"back\\slash", b"\xef\xbc\x81x",
               "\uef41real-escape-char".encode(), b"tab\there", b"c1\xc2\x85"]


def test_every_name_that_exists_is_listed_and_readable(lib):
    """Non-UTF-8 names, control characters, backslashes: listed in the fs_names text form, read back by it."""
    from capengine.policy.paths import canonical_path

    directory = os.fsencode(lib.root / "photos")
    for i, name in enumerate(NASTY_NAMES):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"content %d" % i)
    entries = call(lib, "vdfs.list_dir", path="/photos")["entries"]
    listed = {e["name"] for e in entries}
    assert len(listed) == len(NASTY_NAMES) + 1
    for i, name in enumerate(NASTY_NAMES):
        text = fs_names.to_text(name)
        assert text in listed
        path = canonical_path("/photos/" + text)  # what a guest sends back passes canonicalisation unchanged
        assert path == "/photos/" + text
        assert base64.b64decode(call(lib, "vdfs.read_file", path=path)["data"]) == b"content %d" % i
    assert fs_names.to_text(b"caf\xe9.txt") == "caf\uefe9.txt"


def test_list_dir_with_a_non_utf8_name_through_a_guest_is_not_internal(tmp_path):
    host = make_host(tmp_path)
    try:
        with open(os.path.join(os.fsencode(tmp_path / "lib" / "docs"), b"bad\xffname"), "wb"):
            pass
        ext = extension(tmp_path, call_job("vdfs.list_dir", '{"path": "/docs"}'))
        result, calls = host.run_job(ext, "go", b"{}")
    finally:
        host.close()
    assert calls[0].code == "OK" and "bad\uefffname" in result.logs[0][1]


def test_the_case_probe_sees_a_case_sensitive_volume(tmp_path):
    assert probe_case_insensitive(tmp_path) is False
    assert not list((tmp_path / ".capengine").iterdir())  # the probe file is gone


def test_the_case_probe_with_a_read_only_root_looks_at_existing_names(tmp_path, monkeypatch):
    from capengine.host import libraries

    (tmp_path / "Photos").mkdir()
    monkeypatch.setattr(libraries.os, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "ro")))
    assert probe_case_insensitive(tmp_path) is False
    (tmp_path / "Photos").rmdir()
    (tmp_path / "123").mkdir()  # no name with case: nothing to learn, so assume the worse case
    assert probe_case_insensitive(tmp_path) is True


def test_the_catalogue_records_the_probe_and_probes_old_entries(tmp_path):
    import sqlite3

    catalog = LibraryCatalog(tmp_path / "data")
    root = tmp_path / "lib"
    root.mkdir()
    lib = catalog.add(root, "t", LIB)
    assert lib.case_insensitive is False and lib.allow_hardlinks is False
    with sqlite3.connect(tmp_path / "data" / "libraries.sqlite3") as db:
        db.execute("UPDATE libraries SET case_insensitive = NULL")  # a catalogue from before the probe
    assert LibraryCatalog(tmp_path / "data").get(LIB).case_insensitive is False


def folding_lib(root: Path) -> Library:
    """A library recorded as case-insensitive. On this ext4 test volume names do not fold, so this exercises
    capengine's side (spelling paths as on disk), not the volume's."""
    return Library(LIB, "t", root, case_insensitive=True)


def test_on_a_case_insensitive_library_policies_judge_the_on_disk_spelling(tmp_path):
    policy = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: t}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: photos, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/photos")'}
    - {id: private, effect: deny, operations: ["**"], condition: 'path.under("/photos/private")'}
"""
    host = make_host(tmp_path, policy)
    root = tmp_path / "lib"
    (root / "photos" / "private").mkdir(parents=True)
    (root / "photos" / "private" / "passport.png").write_text("PASSPORT")
    host.catalog._known[LIB] = folding_lib(root)
    try:
        for spelling in ("/photos/Private/passport.png", "/photos/PRIVATE/Passport.PNG",
                         "/photos/pri\u200cvate/passport.png", "/photos/private/passport.png"):
            ext = extension(tmp_path, call_job("vdfs.read_file", f'{{"path": "{spelling}"}}'))
            _, calls = host.run_job(ext, "go", b"{}")
            assert (calls[0].code, calls[0].path, calls[0].rules) == (
                "PERMISSION_DENIED", "/photos/private/passport.png", ("t/private",)), spelling
    finally:
        host.close()


def test_spelled_path_refuses_names_that_match_several_entries(tmp_path):
    root = tmp_path / "lib"
    (root / "a").mkdir(parents=True)
    (root / "a" / "Readme").write_text("1")
    (root / "a" / "README").write_text("2")
    with pytest.raises(safe_fs.FsError) as exc:
        safe_fs.spelled_path(root, "/a/readme", True)
    assert exc.value.code == "INVALID_ARGUMENT"
    assert safe_fs.spelled_path(root, "/a/README", True) == "/a/README"  # an exact name is itself
    assert safe_fs.spelled_path(root, "/A/missing/x", True) == "/a/missing/x"  # missing parts keep their spelling
    assert safe_fs.spelled_path(root, "/A/readme", False) == "/A/readme"  # a case-sensitive library: unchanged


def test_a_name_the_volume_resolves_is_confirmed_by_inode(tmp_path, monkeypatch):
    """Simulates a volume that opens "pr\u0131vate" (dotless i) as "private": no key matches, the inode does."""
    root = tmp_path / "lib"
    (root / "private").mkdir(parents=True)
    real_stat = os.stat

    def folding_stat(path, *args, **kwargs):
        return real_stat(b"private" if path == "pr\u0131vate".encode() else path, *args, **kwargs)

    monkeypatch.setattr(safe_fs.os, "stat", folding_stat)
    assert safe_fs.spelled_path(root, "/pr\u0131vate/x", True) == "/private/x"


def test_a_casefold_directory_on_a_case_sensitive_volume_is_detected(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert safe_fs.casefolded(fd) is False  # this volume has no casefold directories
    finally:
        os.close(fd)


# --- item 16: hard links -------------------------------------------------------------------------------------------

def test_a_hard_link_to_a_secret_outside_the_allowed_area_is_refused(lib):
    (lib.root / "secrets").mkdir()
    secret = lib.root / "secrets" / "api-key.txt"
    secret.write_text("sk-live-123")
    os.link(secret, lib.root / "photos" / "innocent.png")
    for name, extra in (("vdfs.read_file", {}), ("ai.ocr", {}), ("vdfs.write_sidecar", {"kind": "k", "data": "x"})):
        result = outcome(lib, name, path="/photos/innocent.png", **extra)
        assert result.startswith("PERMISSION_DENIED") and "hard links" in result and "sk-live" not in result
    allowing = Library(LIB, "t", lib.root, allow_hardlinks=True)
    out = call(allowing, "vdfs.read_file", path="/photos/innocent.png")
    assert base64.b64decode(out["data"]) == b"sk-live-123"
    assert call(lib, "vdfs.stat", path="/photos/innocent.png")["kind"] == "file"  # metadata only: allowed


def test_a_hard_link_to_a_file_outside_the_library_is_refused(lib, tmp_path):
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("OUTSIDE")
    os.link(outside, lib.root / "photos" / "x.txt")
    assert outcome(lib, "vdfs.read_file", path="/photos/x.txt").startswith("PERMISSION_DENIED")


def test_devices_are_never_opened(lib):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(lib.root / "photos" / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    result = outcome(lib, "vdfs.read_file", path="/photos/zero.png")
    assert result.startswith("INVALID_ARGUMENT") and "character device" in result



# --- a real case-insensitive volume (FUSE), where the kernel itself folds names -----------------------------------

@contextlib.contextmanager
def casefold_mount(backing: Path, mountpoint: Path):
    """Mount tests/casefold_fuse.py (a kernel-level case-insensitive file system) over `backing`."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("fuse", reason="fusepy is not installed")
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount") is None:
        pytest.skip("no FUSE on this machine (needs /dev/fuse and fusermount from libfuse2)")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("casefold_fuse.py")), str(backing),
                             str(mountpoint)], stderr=subprocess.PIPE)
    for _ in range(200):
        if os.path.ismount(mountpoint) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.ismount(mountpoint):
        proc.kill()
        pytest.skip(f"cannot mount a FUSE file system here: {proc.communicate()[1].decode()[-300:]}")
    try:
        yield
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], check=False)
        proc.wait(timeout=HANG_BOUND)


@pytest.fixture
def casefold_volume(tmp_path):
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    with casefold_mount(backing, mountpoint):
        yield backing, mountpoint


DENY_PRIVATE = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: t}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: photos, effect: allow, operations: [vdfs.read_file, vdfs.list_dir], condition: 'path.under("/photos")'}
    - {id: private, effect: deny, operations: ["**"], condition: 'path.under("/photos/private")'}
"""


def test_deny_rules_hold_on_a_real_case_insensitive_volume(casefold_volume, tmp_path):
    from wasm_helpers import policy_set

    from capengine.host.extension_host import Host

    backing, mnt = casefold_volume
    (backing / "photos" / "private").mkdir(parents=True)
    (backing / "photos" / "private" / "passport.png").write_text("PASSPORT")
    (backing / "photos" / "note.txt").write_text("note")
    assert (mnt / "photos" / "Private" / "passport.png").read_text() == "PASSPORT"  # the volume folds: the attack
    host = Host(policy_set(DENY_PRIVATE), tmp_path / "data")
    try:
        library = host.catalog.add(mnt, "usb stick", LIB)
        assert library.case_insensitive is True  # found by probing the volume at `library add`
        for spelling in ("/photos/Private/passport.png", "/PHOTOS/PRIVATE/PASSPORT.PNG", "/photos/private/passport.png",
                         "/photos/Pri\u0301vate/passport.png"):
            ext = extension(tmp_path, call_job("vdfs.read_file", f'{{"path": "{spelling}"}}'))
            result, calls = host.run_job(ext, "go", b"{}")
            assert calls[0].code in ("PERMISSION_DENIED", "NOT_FOUND"), (spelling, calls[0])
            assert "PASSPORT" not in result.logs[0][1] and "UEFTU1BPUl" not in result.logs[0][1]
        ext = extension(tmp_path, call_job("vdfs.read_file", '{"path": "/Photos/NOTE.txt"}'))
        result, calls = host.run_job(ext, "go", b"{}")
        assert (calls[0].code, calls[0].path) == ("OK", "/photos/note.txt")  # judged and opened as on disk
        # The attack this prevents: the same library recorded as case-sensitive lets "Private" through.
        host.catalog._known[LIB] = Library(LIB, "usb stick", library.root, case_insensitive=False)
        ext = extension(tmp_path, call_job("vdfs.read_file", '{"path": "/photos/Private/passport.png"}'))
        result, calls = host.run_job(ext, "go", b"{}")
        assert calls[0].code == "OK" and "UEFTU1BPUlQ" in result.logs[0][1]  # base64("PASSPORT")
    finally:
        host.close()


def test_library_add_allow_hardlinks_is_recorded(tmp_path, capsys):
    from capengine.cli import main

    (tmp_path / "lib").mkdir()
    assert main(["library", "add", str(tmp_path / "lib"), "--id", LIB, "--data-dir", str(tmp_path / "data"),
                 "--allow-hardlinks"]) == 0
    assert "hard links allowed" in capsys.readouterr().out
    assert LibraryCatalog(tmp_path / "data").get(LIB).allow_hardlinks is True


NAME_BYTES = st.binary(min_size=1, max_size=80).filter(lambda b: b"/" not in b and b"\0" not in b
                                                     and b not in (b".", b".."))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAME_BYTES)
def test_any_name_on_disk_is_listed_and_read_back(tmp_path, name):
    """For random byte names: the listed text form passes canonicalisation and opens that very file."""
    from capengine.policy.paths import PathError, canonical_path

    root = tmp_path / "names"
    (root / "d").mkdir(parents=True, exist_ok=True)  # not the root, where .capengine is hidden
    lib = Library(LIB, "t", root)
    target = os.path.join(os.fsencode(root / "d"), name)
    with open(target, "wb") as f:
        f.write(b"payload:" + name)
    try:
        [entry] = call(lib, "vdfs.list_dir", path="/d")["entries"]
        assert fs_names.to_bytes(entry["name"]) == name
        try:
            path = canonical_path("/d/" + entry["name"])
        except PathError:  # only when escaping made the name longer than 255 bytes
            assert len(entry["name"].encode()) > 255
            return
        assert base64.b64decode(call(lib, "vdfs.read_file", path=path)["data"]) == b"payload:" + name
    finally:
        os.unlink(target)


def test_a_case_insensitive_volume_mounted_inside_a_library_is_folded_too(tmp_path):
    """The library root is on ext4 (probe: case-sensitive); /photos is a case-insensitive mount inside it."""
    from wasm_helpers import policy_set

    from capengine.host.extension_host import Host

    root, backing = tmp_path / "lib", tmp_path / "backing"
    (root / "photos").mkdir(parents=True)
    (backing / "private").mkdir(parents=True)
    (backing / "private" / "passport.png").write_text("PASSPORT")
    with casefold_mount(backing, root / "photos"):
        host = Host(policy_set(DENY_PRIVATE), tmp_path / "data")
        try:
            assert host.catalog.add(root, "home", LIB).case_insensitive is False
            ext = extension(tmp_path, call_job("vdfs.read_file", '{"path": "/photos/PRIVATE/passport.png"}'))
            result, calls = host.run_job(ext, "go", b"{}")
        finally:
            host.close()
    assert (calls[0].code, calls[0].path) == ("PERMISSION_DENIED", "/photos/private/passport.png")


@pytest.mark.parametrize("name,extra", [("vdfs.read_file", {}), ("ai.ocr", {}),
                                        ("vdfs.write_sidecar", {"kind": "k", "data": "x"}),
                                        ("vdfs.read_sidecar", {"kind": "k"})])
def test_the_library_root_is_not_a_file(lib, name, extra):
    """Found by the fuzz test: ai.ocr of "/" read the root directory's descriptor (INTERNAL)."""
    assert outcome(lib, name, path="/", **extra).startswith("INVALID_ARGUMENT")
