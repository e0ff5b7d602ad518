"""Adversarial review of hostile library contents, driven through the real Dispatcher (canonical path, on-disk
spelling, policy, handler) so that every layer a guest's call crosses is attacked together.

Every call runs in a thread with a hang bound, and every reply is checked for the two host failures a guest must
never see: a hang and INTERNAL (a host bug, logged with a traceback)."""

from __future__ import annotations

import base64
import json
import os
import resource
import threading
from pathlib import Path

import pytest
from wasm_helpers import LIB, call_job, extension, make_host

from capengine.host import fs_names, safe_fs
from capengine.host.dispatcher import Dispatcher
from capengine.host.host_errors import HostErrors

HANG_BOUND = 30  # seconds: far above any honest call here; only a hang gets near it

ALLOW_ALL = f"""
apiVersion: capengine/v1
kind: Policy
metadata: {{name: t}}
spec:
  extensions: ["com.example.*"]
  rules:
    - {{id: lib, effect: allow, operations: ["vdfs.**", ai.ocr], condition: 'library == "{LIB}"'}}
    - {{id: no-secret, effect: deny, operations: ["vdfs.**"], condition: 'path.glob("/docs/**/secret*")',
        message: "no secrets"}}
"""


class Guest:
    """Calls as a guest makes them: through Dispatcher.reply, with the host errors it would log."""

    def __init__(self, tmp_path: Path) -> None:
        self.host = make_host(tmp_path, ALLOW_ALL)
        self.root = tmp_path / "lib"
        self.ext = extension(tmp_path, call_job("test.ping", "{}"))
        self.dispatcher = Dispatcher(self.host.active, self.host.registry, self.host.catalog, self.host.data_dir)

    def __call__(self, method: str, **payload) -> dict:
        box: list[dict] = []
        errors = HostErrors()

        def run() -> None:
            box.append(json.loads(self.dispatcher.reply(self.ext, method, LIB, payload, None, errors)))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(HANG_BOUND)
        assert not worker.is_alive(), f"{method} {payload} hung"
        reply = box[0]
        assert not list(errors), f"host failure: {[str(e) for e in errors]}"
        assert reply["ok"] or reply["error"]["code"] != "INTERNAL", reply
        return reply

    def code(self, method: str, **payload) -> str:
        reply = self(method, **payload)
        return "OK" if reply["ok"] else reply["error"]["code"]

    def data(self, path: str) -> bytes:
        reply = self("vdfs.read_file", path=path)
        assert reply["ok"], reply
        return base64.b64decode(reply["result"]["data"])


@pytest.fixture
def guest(tmp_path):
    g = Guest(tmp_path)
    (tmp_path / "outside.txt").write_text("OUTSIDE SECRET")
    yield g
    g.host.close()


PATH_OPS = [("vdfs.read_file", {}), ("vdfs.stat", {}), ("vdfs.list_dir", {}),
            ("vdfs.write_sidecar", {"kind": "k", "data": "x"}), ("vdfs.read_sidecar", {"kind": "k"}), ("ai.ocr", {})]


# --- escaped-byte spellings: U+EF00+byte only where the name's bytes need it ------------------------------------

# Each spelling's escapes decode to bytes that are plain text: "..", "/", ".", NUL, or an ordinary letter. Before
# the review these opened the library's parent, crossed a directory (following a link on the way), or opened
# a denied file under a spelling the policy did not recognise.
ESCAPE_TRICKS = [
    "/\uef2e\uef2e/outside.txt",  # ".." : the library's parent
    "/\uef2e\uef2e",  # the parent directory itself
    "/docs\uef2fsub/secret.txt",  # "docs/sub" as one component
    "/docs/sub/s\uef65cret.txt",  # "e" spelled as a byte: the deny on secret* does not see it
    "/docs/sub/secret\uef2etxt",
    "/docs/\uef2e",  # "."
    "/docs/\uef00x",  # NUL
    "/docs/caf\uefc3\uefa9",  # the UTF-8 bytes of "é" spelled as bytes
]


@pytest.mark.parametrize("path", ESCAPE_TRICKS)
@pytest.mark.parametrize("method,extra", PATH_OPS)
def test_an_escape_that_spells_plain_bytes_is_refused_before_the_policy(guest, path, method, extra):
    (guest.root / "docs" / "café").write_text("cafe")
    reply = guest(method, path=path, **extra)
    assert not reply["ok"] and reply["error"]["code"] == "INVALID_ARGUMENT", reply
    assert "OUTSIDE" not in json.dumps(reply) and "s3cret" not in json.dumps(reply)


def test_an_escape_cannot_cross_a_link_inside_the_library(guest, tmp_path):
    os.symlink(tmp_path, guest.root / "docs" / "up")
    assert guest.code("vdfs.read_file", path="/docs/up\uef2foutside.txt") == "INVALID_ARGUMENT"
    assert guest.code("vdfs.read_file", path="/docs/up/outside.txt") == "PERMISSION_DENIED"


def test_every_listed_name_still_opens_by_its_text_form(guest):
    """The strict spelling refuses only forms no listing ever gives: every hostile name still round-trips."""
    names = [b"caf\xe9.txt", b"\xff\xfe", b"line\nbreak", b"back\\slash", b"\xef\xbc\x81x", "\uef41x".encode(),
             b"dot.\xff", b"\xc3", b"\x7f", b"\xe2\x80\xa8"]
    for i, name in enumerate(names):
        with open(os.path.join(os.fsencode(guest.root / "docs"), name), "wb") as f:
            f.write(b"n%d" % i)
    listed = {e["name"] for e in guest("vdfs.list_dir", path="/docs")["result"]["entries"]}
    for i, name in enumerate(names):
        text = fs_names.to_text(name)
        assert text in listed
        assert guest.data("/docs/" + text) == b"n%d" % i


def test_to_bytes_accepts_exactly_the_text_forms_to_text_gives():
    for name in (b"plain", b"caf\xe9", b"\xc3", "\uef41".encode(), b"a\\b", b"\x1b[31m"):
        assert fs_names.to_bytes(fs_names.to_text(name)) == name
    for text in ("\uef2e\uef2e", "a\uef2fb", "\uef61", "caf\uefc3\uefa9", "\uef00", "x\ud800"):
        with pytest.raises(fs_names.NotAName):
            fs_names.to_bytes(text)
