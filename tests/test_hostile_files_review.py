"""Adversarial review of hostile library contents, driven through the real Dispatcher (canonical path, on-disk
spelling, policy, handler) so that every layer a guest's call crosses is attacked together.

Every call runs in a thread with a hang bound, and every reply is checked for the two host failures a guest must
never see: a hang and INTERNAL (a host bug, logged with a traceback)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import shutil
import threading
from pathlib import Path

import pytest
from helpers import policy_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasm_helpers import LIB, call_job, extension, make_host

from capengine.host import fs_names, safe_fs
from capengine.host.dispatcher import Dispatcher
from capengine.host.host_errors import HostErrors

HANG_BOUND = 30  # seconds: far above any honest call here; only a hang gets near it

ALLOW_ALL = policy_yaml("t", f"""
- {{id: lib, effect: allow, operations: ["vdfs.**", ai.ocr], condition: 'library == "{LIB}"'}}
- {{id: no-secret, effect: deny, operations: ["vdfs.**"], condition: 'path.glob("/docs/**/secret*")',
    message: "no secrets"}}
""")


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


# --- deep nesting: one descriptor on the way down ---------------------------------------------------------------

@pytest.fixture
def deep_tree():
    """make(root, depth): `depth` directories `a` under root/deep with f.txt at the bottom, built relative to
    descriptors; removed afterwards a level at a time (shutil.rmtree, and so pytest's clean-up of old temporary
    directories, recurses once per level and fails on such a tree)."""
    made: list[Path] = []

    def make(root: Path, depth: int) -> str:
        made.append(root / "deep")
        return _deep_tree(root, depth)

    yield make
    for top in made:
        _flatten(top)


def _flatten(top: Path) -> None:
    spare = top.with_name(top.name + ".up")
    while (top / "a").is_dir():
        os.rename(top / "a", spare)
        shutil.rmtree(top)
        os.rename(spare, top)
    shutil.rmtree(top)


def _deep_tree(root: Path, depth: int) -> str:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir("deep", dir_fd=fd)
    for name in [b"deep"] + [b"a"] * depth:
        if name == b"a":
            os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)
    return "/deep" + "/a" * depth + "/f.txt"


@pytest.fixture
def few_descriptors():
    """The soft RLIMIT_NOFILE a daemon commonly runs with (1,024), restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_path_deeper_than_the_descriptor_limit_is_read(guest, few_descriptors, deep_tree):
    """Before the review each directory on the way stayed open: 1,500 levels ran out of descriptors (INTERNAL),
    and every other thread of the host (the decision log, the socket server) with it."""
    path = deep_tree(guest.root, 1500)
    assert guest.data(path) == b"deep"
    assert guest("vdfs.stat", path=path)["result"]["size"] == 4
    assert guest.code("vdfs.write_sidecar", path=path, kind="k", data="x") == "OK"
    assert guest("vdfs.read_sidecar", path=path, kind="k")["result"]["data"] == "x"
    assert guest.code("vdfs.list_dir", path=path.rsplit("/", 1)[0]) == "OK"


def test_open_beneath_holds_one_descriptor_whatever_the_depth(tmp_path, deep_tree):
    path = deep_tree(tmp_path, 300)
    before = len(os.listdir("/proc/self/fd"))
    with safe_fs.open_beneath(tmp_path, path) as fd:
        assert os.pread(fd, 4, 0) == b"deep"
        assert len(os.listdir("/proc/self/fd")) - before <= 2  # the file (and listdir's own descriptor)
    with safe_fs.open_parent(tmp_path, path) as (parent, name):
        assert name == b"f.txt" and len(os.listdir("/proc/self/fd")) - before <= 2
    assert len(os.listdir("/proc/self/fd")) == before


# --- the library root itself removed or replaced ----------------------------------------------------------------

@pytest.mark.parametrize("replacement", ["removed", "symlink", "file", "fifo"])
@pytest.mark.parametrize("method,extra", PATH_OPS)
def test_a_removed_or_replaced_root_fails_closed_and_says_so(guest, tmp_path, replacement, method, extra):
    moved = tmp_path / "lib.moved"
    guest.root.rename(moved)
    if replacement == "symlink":
        os.symlink(moved, guest.root)
    elif replacement == "file":
        guest.root.write_text("not a directory")
    elif replacement == "fifo":
        os.mkfifo(guest.root)
    reply = guest(method, path="/docs/hello.txt", **extra)
    assert reply["error"]["code"] == "NOT_FOUND" and "library's root" in reply["error"]["message"], reply
    assert str(tmp_path) not in reply["error"]["message"]  # the guest is not told where the root is


def test_a_directory_link_on_the_way_is_named_as_a_link(guest, tmp_path):
    os.symlink(guest.root / "docs", guest.root / "alias")
    reply = guest("vdfs.read_file", path="/alias/hello.txt")
    assert reply["error"]["code"] == "PERMISSION_DENIED" and "symbolic link" in reply["error"]["message"]
    os.mkfifo(guest.root / "pipe")
    assert guest.code("vdfs.list_dir", path="/pipe") == "NOT_FOUND"


# --- writes that fail: a full disk, a read-only volume, a directory in the sidecar's place ----------------------

def sidecar_files(root: Path, kind: str = "k") -> list[Path]:
    return sorted((root / ".capengine" / "sidecars").glob(f"*/*/{kind}"))


def temp_files(root: Path) -> list[Path]:
    return sorted((root / ".capengine" / "sidecars").glob("*/*/.*.tmp"))


@pytest.fixture
def small_guest(tmp_path):
    """A guest whose library is a real 1 MiB tmpfs."""
    from daemon_helpers import tmpfs

    with tmpfs(tmp_path / "lib", "1m"):
        g = Guest(tmp_path)
        yield g
        g.host.close()


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_old_sidecar(small_guest):
    from daemon_helpers import fill

    g = small_guest
    assert g.code("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="old") == "OK"
    filler = fill(g.root / "docs")
    try:
        reply = g("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="new" * 100_000)
        assert reply["error"]["code"] == "RESOURCE_EXHAUSTED" and "No space" in reply["error"]["message"], reply
        assert g("vdfs.read_sidecar", path="/docs/hello.txt", kind="k")["result"]["data"] == "old"
        assert temp_files(g.root) == []
        # a first sidecar for another kind: the same, and nothing half-written is left behind
        reply = g("vdfs.write_sidecar", path="/docs/hello.txt", kind="other", data="x" * 300_000)
        assert reply["error"]["code"] == "RESOURCE_EXHAUSTED", reply
        assert sidecar_files(g.root, "other") == [] and temp_files(g.root) == []
    finally:
        filler.unlink()
    assert g.code("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="new") == "OK"


def test_a_read_only_library_refuses_writes_and_still_reads(small_guest):
    import subprocess

    g = small_guest
    subprocess.run(["mount", "-o", "remount,ro", str(g.root)], check=True)
    reply = g("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="x")
    assert reply["error"]["code"] == "PERMISSION_DENIED" and "read-only" in reply["error"]["message"], reply
    assert g.data("/docs/hello.txt") == b"hello bytes"


def test_a_directory_in_the_sidecars_place_is_a_clear_error(guest):
    assert guest.code("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="x") == "OK"
    [stored] = sidecar_files(guest.root)
    stored.unlink()
    (stored / "inside").mkdir(parents=True)
    reply = guest("vdfs.write_sidecar", path="/docs/hello.txt", kind="k", data="y")
    assert reply["error"]["code"] == "INVALID_ARGUMENT" and "directory" in reply["error"]["message"], reply
    assert (stored / "inside").is_dir() and temp_files(guest.root) == []
    assert guest.code("vdfs.read_sidecar", path="/docs/hello.txt", kind="k") == "INVALID_ARGUMENT"


# --- entries the host may not read (a real unprivileged process) ------------------------------------------------

def as_nobody(guest: Guest, calls: list[tuple[str, dict]]) -> list[dict]:
    """The replies to `calls` made by a forked child that has dropped to uid/gid 65534 (root reads everything, so
    permission bits only bite an unprivileged host). Modules are already imported: the child opens only the
    library."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            replies = [json.loads(guest.dispatcher.reply(guest.ext, m, LIB, p, None, None)) for m, p in calls]
            os.write(write, json.dumps(replies).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(out)


@pytest.fixture
def open_guest():
    """A guest whose library an unprivileged user can reach (pytest's own temporary directories are 0700)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="capengine-review-"))
    base.chmod(0o711)
    g = Guest(base)
    (g.root / "docs").chmod(0o755)
    g.root.chmod(0o755)
    yield g
    g.host.close()
    for path in base.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
    shutil.rmtree(base)


def test_entries_the_host_may_not_read_are_permission_denied_not_internal(open_guest):
    g = open_guest
    for name, mode in (("listable", 0o444), ("closed", 0o000)):
        (g.root / "docs" / name).mkdir()
        (g.root / "docs" / name / "x.txt").write_text("x")
        (g.root / "docs" / name).chmod(mode)
    (g.root / "docs" / "unreadable.txt").write_text("u")
    (g.root / "docs" / "unreadable.txt").chmod(0o000)
    g("vdfs.read_file", path="/docs/hello.txt")  # the catalogue is read (and cached) while still root
    calls = [("vdfs.list_dir", {"path": "/docs/listable"}),  # names readable, entries not searchable
             ("vdfs.list_dir", {"path": "/docs/closed"}),
             ("vdfs.read_file", {"path": "/docs/listable/x.txt"}),
             ("vdfs.stat", {"path": "/docs/closed/x.txt"}),
             ("vdfs.read_file", {"path": "/docs/unreadable.txt"}),
             ("vdfs.write_sidecar", {"path": "/docs/hello.txt", "kind": "k", "data": "x"}),  # .capengine is root's
             ("vdfs.read_file", {"path": "/docs/hello.txt"})]
    replies = as_nobody(g, calls)
    codes = ["OK" if r["ok"] else r["error"]["code"] for r in replies]
    assert codes == ["PERMISSION_DENIED"] * 6 + ["OK"], replies


# --- the library's own id file, and re-rooting ------------------------------------------------------------------

def id_file(root: Path) -> Path:
    (root / ".capengine").mkdir(parents=True, exist_ok=True)
    return root / ".capengine" / "library-id"


HOSTILE_ID_FILES = {
    "not utf-8": lambda p, tmp: p.write_bytes(b"\xff\xfe" + LIB.encode()),
    "a link outside": lambda p, tmp: os.symlink(tmp / "outside-id", p),
    "a link to a device": lambda p, tmp: os.symlink("/dev/zero", p),
    "a fifo": lambda p, tmp: os.mkfifo(p),
    "a directory": lambda p, tmp: p.mkdir(),
    "huge": lambda p, tmp: p.write_bytes(LIB.encode() + b" " * (4 * 1024 * 1024)),
    "a hard link outside": lambda p, tmp: os.link(tmp / "outside-id", p),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_ID_FILES))
@pytest.mark.parametrize("how", ["add", "claim"])
def test_a_hostile_library_id_file_is_never_followed_waited_on_or_a_traceback(tmp_path, attack, how):
    from capengine.host.libraries import LibraryCatalog, LibraryError

    root = tmp_path / "lib"
    (tmp_path / "outside-id").write_text(LIB)
    HOSTILE_ID_FILES[attack](id_file(root), tmp_path)
    catalog = LibraryCatalog(tmp_path / "data")
    box: list = []

    def run() -> None:
        try:
            box.append(getattr(catalog, how)(root))
        except LibraryError as exc:
            box.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_BOUND)
    assert not worker.is_alive(), f"{how} hung on {attack}"
    [result] = box
    if isinstance(result, LibraryError):  # refused, naming the file and what to do
        assert "library-id" in str(result) and "--id" in str(result), result
    else:  # or ignored: never the id read through a link, a device or a link to another file
        assert result.id != LIB, attack


def test_a_moved_library_keeps_its_settings_and_is_probed_again(tmp_path, monkeypatch):
    """`library move` to another volume: the case probe runs for the new root (a folding volume there must be
    judged by on-disk spelling), and --allow-hardlinks is kept. Before the review both were dropped (and the
    probe's answer for the old volume was kept in the catalogue)."""
    from capengine.host import libraries

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    catalog = libraries.LibraryCatalog(tmp_path / "data")
    catalog.add(old, library_id=LIB, allow_hardlinks=True)
    assert not catalog.get(LIB).case_insensitive
    probed = []
    monkeypatch.setattr(libraries, "probe_case_insensitive", lambda root: probed.append(root) or root == new)
    moved = catalog.move(LIB, new)
    assert probed == [new]
    for library in (moved, catalog.get(LIB), libraries.LibraryCatalog(tmp_path / "data").get(LIB)):
        assert library.root == new and library.case_insensitive and library.allow_hardlinks


def test_a_link_planted_as_capengine_cannot_steer_the_case_probe(tmp_path):
    """The probe creates a file under ROOT/.capengine and looks it up by other spellings. A library on a
    case-insensitive volume whose .capengine is a link to a case-sensitive directory made the probe answer for
    that directory (and create a file there): recorded case-sensitive, a deny on /photos/private missed
    /photos/Private. The probe now never goes through a link, and the deny holds."""
    from test_hostile_files import DENY_PRIVATE, casefold_mount

    from capengine.host.libraries import LibraryCatalog

    backing, mnt, elsewhere = tmp_path / "backing", tmp_path / "mnt", tmp_path / "elsewhere"
    for directory in (backing, mnt, elsewhere):
        directory.mkdir()
    (backing / "photos" / "private").mkdir(parents=True)
    (backing / "photos" / "private" / "passport.png").write_text("PASSPORT")
    os.symlink(elsewhere, backing / ".capengine")
    with casefold_mount(backing, mnt):
        assert (mnt / "photos" / "Private" / "passport.png").read_text() == "PASSPORT"  # the volume folds
        library = LibraryCatalog(tmp_path / "data").add(mnt, library_id=LIB)
        assert library.case_insensitive and list(elsewhere.iterdir()) == []
        host = make_host(tmp_path / "h", DENY_PRIVATE)
        host.catalog._known[LIB] = library
        dispatcher = Dispatcher(host.active, host.registry, host.catalog, host.data_dir)
        ext = extension(tmp_path, call_job("test.ping", "{}"))
        try:
            for spelling in ("/photos/Private/passport.png", "/PHOTOS/private/PASSPORT.png"):
                reply = json.loads(dispatcher.reply(ext, "vdfs.read_file", LIB, {"path": spelling}, None, None))
                assert reply["error"]["code"] == "PERMISSION_DENIED", reply
        finally:
            host.close()


# --- a zoo of hostile entries, every operation on each, as the entry and as a directory on the way -------------

def hostile_zoo(root: Path, outside: Path) -> dict[str, bytes]:
    """Every kind of entry a library writer can plant, under /docs/zoo; name -> on-disk name."""
    import socket

    zoo = root / "docs" / "zoo"
    zoo.mkdir()
    (outside / "outside-dir").mkdir(exist_ok=True)
    (outside / "outside-dir" / "x").write_text("OUTSIDE SECRET")
    entries = {
        "fifo": lambda p: os.mkfifo(p),
        "chardev": lambda p: os.mknod(p, 0o600 | 0o020000, os.makedev(1, 5)),  # a copy of /dev/zero
        "blockdev": lambda p: os.mknod(p, 0o600 | 0o060000, os.makedev(7, 200)),
        "link-zero": lambda p: os.symlink("/dev/zero", p),
        "link-out-file": lambda p: os.symlink(outside / "outside.txt", p),
        "link-out-dir": lambda p: os.symlink(outside / "outside-dir", p),
        "link-up": lambda p: os.symlink("../../..", p),
        "link-dangling": lambda p: os.symlink("nowhere", p),
        "link-loop": lambda p: os.symlink(p.name, p),
        "hardlink-out": lambda p: os.link(outside / "outside.txt", p),
        "sparse": lambda p: os.truncate(p.touch() or p, 16 * 1024 ** 3),
        "empty": lambda p: p.write_bytes(b""),
    }
    names: dict[str, bytes] = {}
    for label, make in entries.items():
        make(zoo / label)
        names[label] = label.encode()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(zoo / "socket"))
    sock.close()  # the socket file stays
    names["socket"] = b"socket"
    for label, raw in (("newline", b"new\nline"), ("latin1", b"caf\xe9"), ("long", b"L" * 255),
                       ("nfd", "cafe\u0301".encode())):
        with open(os.path.join(os.fsencode(zoo), raw), "wb") as f:
            f.write(b"plain " + label.encode())
        names[label] = raw
    return names


NOT_REGULAR = {"fifo", "chardev", "blockdev", "socket", "link-zero", "link-out-file", "link-out-dir", "link-up",
               "link-dangling", "link-loop", "hardlink-out"}


def test_every_operation_on_every_hostile_entry_fails_closed(guest, tmp_path):
    names = hostile_zoo(guest.root, tmp_path)
    listing = guest("vdfs.list_dir", path="/docs/zoo")["result"]["entries"]
    assert {e["name"] for e in listing} == {fs_names.to_text(n) for n in names.values()}
    from capengine.policy.paths import canonical_path

    for label, raw in names.items():
        text = canonical_path("/docs/zoo/" + fs_names.to_text(raw))
        for method, extra in PATH_OPS:
            for path in (text, text + "/x"):
                reply = guest(method, path=path, **extra)  # never a hang, never INTERNAL
                assert "OUTSIDE" not in json.dumps(reply), (label, method, path)
                if label in NOT_REGULAR and method in ("vdfs.read_file", "ai.ocr", "vdfs.write_sidecar"):
                    assert not reply["ok"], (label, method, path, reply)
        if label not in NOT_REGULAR and label != "sparse":
            assert guest.data(text) == (b"plain " + label.encode() if label != "empty" else b"")
    sparse = guest("vdfs.read_file", path="/docs/zoo/sparse")
    assert sparse["error"]["code"] == "RESOURCE_EXHAUSTED"
    part = guest("vdfs.read_file", path="/docs/zoo/sparse", offset=16 * 1024 ** 3 - 4, length=100)
    assert base64.b64decode(part["result"]["data"]) == b"\0" * 4


# --- TOCTOU: the entry is swapped by a racing thread while the guest calls -----------------------------------

def test_an_entry_swapped_between_kinds_while_called_never_leaks_hangs_or_fails_inside(guest, tmp_path):
    """A racing thread turns /docs/race into a regular file, a link to a file outside, a FIFO, a socket, a hard
    link to a file outside, a directory, and a link to a directory outside, over and over, while a guest reads,
    stats, lists and writes sidecars for it (and for a file inside it)."""
    import socket

    race = guest.root / "docs" / "race"
    outside = tmp_path / "outside.txt"
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "x").write_text("OUTSIDE SECRET")

    def regular(p: Path) -> None:
        p.write_text("inside")

    def a_socket(p: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()

    def a_directory(p: Path) -> None:
        p.mkdir()
        (p / "x").write_text("inside")

    kinds = [regular, lambda p: os.symlink(outside, p), os.mkfifo, a_socket, lambda p: os.link(outside, p),
             a_directory, lambda p: os.symlink(tmp_path / "outside-dir", p)]
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            try:
                if race.is_dir() and not race.is_symlink():
                    shutil.rmtree(race)
                elif race.exists() or race.is_symlink():
                    race.unlink()
                kinds[i % len(kinds)](race)
            except OSError:
                pass
            i += 1

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    seen: set[str] = set()
    try:
        for _ in range(300):
            for path in ("/docs/race", "/docs/race/x"):
                for method, extra in PATH_OPS[:5]:
                    reply = guest(method, path=path, **extra)
                    assert "OUTSIDE" not in json.dumps(reply) and "T1VUU0lERS" not in json.dumps(reply), reply
                    seen.add("OK" if reply["ok"] else reply["error"]["code"])
    finally:
        stop.set()
        flipper.join(HANG_BOUND)
    assert "OK" in seen and len(seen) > 2, seen  # the race really ran through several kinds


@pytest.mark.parametrize("kind", ["socket", "fifo", "chardev", "directory"])
def test_a_special_file_swapped_in_after_the_check_is_refused_as_what_it_is(guest, monkeypatch, kind):
    """The narrow window of the race above, held open: fstatat saw a regular file, then the open met `kind`.
    Opening a socket fails with ENXIO, which was INTERNAL ("cannot open")."""
    import socket

    target = guest.root / "docs" / "swap.png"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
        s.close()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "chardev":
        os.mknod(target, 0o600 | 0o020000, os.makedev(1, 5))
    else:
        target.mkdir()
    regular = os.stat(guest.root / "docs" / "hello.txt")
    real_stat = os.stat

    def stat_says_regular(path, *args, **kwargs):
        return regular if path == b"swap.png" else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(safe_fs.os, "stat", stat_says_regular)
    for method, extra in (PATH_OPS[0], PATH_OPS[3], PATH_OPS[5]):
        reply = guest(method, path="/docs/swap.png", **extra)
        assert reply["error"]["code"] in ("INVALID_ARGUMENT", "PERMISSION_DENIED"), reply


# --- the root as an entry, and the lookup index's memory --------------------------------------------------------

def test_stat_of_the_library_root_is_its_directory(guest):
    reply = guest("vdfs.stat", path="/")
    assert reply["ok"] and reply["result"]["kind"] == "directory" and reply["result"]["path"] == "/", reply


def test_the_lookup_index_is_bounded_in_entries_across_directories(guest, monkeypatch):
    """Each lookup of a name that does not exist lists its directory (to find an NFD spelling) and caches the
    listing. The cache was bounded per directory (20,000) and in directories (256), not in total: 256 planted
    directories of 20,000 long names would hold gigabytes. Now the total is bounded too."""
    from capengine.host import dir_index

    monkeypatch.setattr(dir_index, "MAX_CACHED_TOTAL", 100)
    monkeypatch.setattr(dir_index, "_cache", type(dir_index._cache)())
    monkeypatch.setattr(dir_index, "_cached_total", 0, raising=False)
    for d in range(12):
        directory = guest.root / "docs" / f"d{d}"
        directory.mkdir()
        for n in range(30):
            (directory / f"{'n' * 200}{n}").write_text("x")
        assert guest.code("vdfs.read_file", path=f"/docs/d{d}/missing") == "NOT_FOUND"
        assert sum(len(listing.names) for _, listing in dir_index._cache.values()) <= 100
    assert guest.data(f"/docs/d11/{'n' * 200}7") == b"x"


def test_a_directory_too_big_to_cache_is_listed_once_per_lookup(guest, monkeypatch):
    from capengine.host import dir_index

    monkeypatch.setattr(dir_index, "MAX_CACHED_ENTRIES", 10)
    (guest.root / "docs" / "big").mkdir()
    for n in range(20):
        (guest.root / "docs" / "big" / f"f{n}").write_text("x")
    listed = []
    real_entries = safe_fs._entries
    monkeypatch.setattr(safe_fs, "_entries", lambda fd, path: listed.append(path) or real_entries(fd, path))
    assert guest.code("vdfs.read_file", path="/docs/big/missing") == "NOT_FOUND"
    assert len(listed) == 1


def test_a_file_that_grows_and_shrinks_while_read_and_hashed(guest):
    """A writer truncates and appends to the file in a loop: reads return what was there (never more than the
    cap, never an error inside), and a sidecar is attached only to content that held still while hashed."""
    path = guest.root / "docs" / "live.log"
    path.write_bytes(b"x" * 100_000)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(b"y" * 300_000)
                f.flush()
                f.truncate(50_000)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    codes: set[str] = set()
    try:
        for _ in range(200):
            reply = guest("vdfs.read_file", path="/docs/live.log")
            if reply["ok"]:
                assert len(base64.b64decode(reply["result"]["data"])) <= 300_000
            reply = guest("vdfs.write_sidecar", path="/docs/live.log", kind="k", data="d")
            codes.add("OK" if reply["ok"] else reply["error"]["code"])
            if not reply["ok"]:
                assert "changed while it was being read" in reply["error"]["message"], reply
    finally:
        stop.set()
        writer.join(HANG_BOUND)
    assert codes <= {"OK", "INVALID_ARGUMENT"}


@pytest.mark.parametrize("how", ["add", "claim", "move"])
@pytest.mark.parametrize("attack", ["link loop", "name too long", "a file", "a fifo"])
def test_a_hostile_root_given_to_the_catalogue_is_a_library_error(tmp_path, how, attack):
    """`library add DIR`, `library move ID DIR`, `run --library DIR` with DIR a link loop (RuntimeError from
    Path.resolve), a name over NAME_MAX (OSError from is_dir), a file or a FIFO: a LibraryError naming DIR."""
    from capengine.host.libraries import LibraryCatalog, LibraryError

    root = tmp_path / "root"
    if attack == "link loop":
        os.symlink("root", root)
    elif attack == "name too long":
        root = tmp_path / ("x" * 300)
    elif attack == "a file":
        root.write_text("x")
    else:
        os.mkfifo(root)
    catalog = LibraryCatalog(tmp_path / "data")
    (tmp_path / "ok").mkdir()
    catalog.add(tmp_path / "ok", library_id=LIB)
    with pytest.raises(LibraryError) as exc:
        catalog.move(LIB, root) if how == "move" else getattr(catalog, how)(root)
    assert root.name[:20] in str(exc.value)


ESCAPES = [chr(fs_names.ESCAPE_BASE + b) for b in (0x00, 0x0A, 0x2E, 0x2F, 0x5C, 0x61, 0x80, 0xA9, 0xBC, 0xC3,
                                                   0xE2, 0xEF, 0xFF)]


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from(list("a.é/\\\n\u0301\u2028\uef41") + ESCAPES) | st.characters(), max_size=12))
def test_one_text_one_name_for_any_text(text):
    """Whatever a guest sends: either refused, or exactly the text form of one name."""
    try:
        name = fs_names.to_bytes(text)
    except fs_names.NotAName:
        return
    assert fs_names.to_text(name) == text
    assert name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=16).filter(lambda b: b not in (b".", b"..") and b"/" not in b
                                                  and b"\0" not in b))
def test_every_name_on_disk_has_a_text_that_opens_it(name):
    assert fs_names.to_bytes(fs_names.to_text(name)) == name


def test_the_fallback_probe_reads_a_bounded_number_of_names(tmp_path, monkeypatch):
    """A planted .capengine link sends the probe to the existing names. It listed the whole root (ten million
    names planted there: gigabytes); it now looks at a bounded number, and learns from a name whose other case
    is the same entry (folding) or a different one (both exist: case-sensitive)."""
    from capengine.host import libraries

    root = tmp_path / "lib"
    root.mkdir()
    os.symlink(tmp_path, root / ".capengine")
    for n in range(200):
        (root / f"{n:04d}").mkdir()  # names without case: nothing to learn from them
    monkeypatch.setattr(libraries, "MAX_PROBED_NAMES", 50)
    real_scandir = os.scandir
    seen = []

    def counting_scandir(path):
        with real_scandir(path) as it:
            for entry in it:
                seen.append(entry.name)
                yield entry

    monkeypatch.setattr(libraries.os, "scandir", lambda path: contextlib.closing(counting_scandir(path)))
    assert libraries.probe_case_insensitive(root) is True  # nothing learnt: the safe answer
    assert len(seen) <= 51
    (root / "Photos").mkdir()
    (root / "photos").mkdir()
    monkeypatch.setattr(libraries, "MAX_PROBED_NAMES", 1000)
    assert libraries.probe_case_insensitive(root) is False  # two entries: the volume tells case apart


def test_a_file_where_a_directory_should_be_is_named(guest):
    os.mkfifo(guest.root / "docs" / "pipe")
    for path, what in (("/docs/hello.txt", "a regular file"), ("/docs/pipe/x", "a FIFO")):
        reply = guest("vdfs.list_dir", path=path)
        assert reply["error"]["code"] == "NOT_FOUND" and what in reply["error"]["message"], reply


def test_a_real_guest_cannot_read_the_librarys_parent_through_escapes(tmp_path):
    """The escape attack from a real WebAssembly guest, through the Host's ABI and the policy."""
    host = make_host(tmp_path, ALLOW_ALL)
    (tmp_path / "outside.txt").write_text("OUTSIDE SECRET")
    try:
        for path in ("/\\uef2e\\uef2e/outside.txt", "/docs/sub/s\\uef65cret.txt"):
            ext = extension(tmp_path, call_job("vdfs.read_file", f'{{"path": "{path}"}}'))
            result, calls = host.run_job(ext, "go", b"{}")
            assert result.status == "completed" and calls[0].code == "INVALID_ARGUMENT", (result, calls)
            assert "T1VUU0lERS" not in str(result.logs) and "czNjcmV0" not in str(result.logs)
    finally:
        host.close()


@pytest.mark.parametrize("path,expected", [
    ("/../outside.txt", "INVALID_ARGUMENT"),
    ("/docs/../../outside.txt", "INVALID_ARGUMENT"),
    ("/docs/sub/../sub/secret.txt", "PERMISSION_DENIED"),  # judged as the path it is
    ("//docs//sub/./secret.txt", "PERMISSION_DENIED"),
    ("/docs/sub/secret.txt\u0000.png", "INVALID_ARGUMENT"),
    ("/docs\\sub\\secret.txt", "INVALID_ARGUMENT"),
    ("/docs/sub/SECRET.txt", "NOT_FOUND"),  # a case-sensitive volume: another name, and nothing there
    ("//docs/./hello.txt/", "OK"),
])
def test_literal_path_tricks_through_the_dispatcher(guest, path, expected):
    reply = guest("vdfs.read_file", path=path)
    assert ("OK" if reply["ok"] else reply["error"]["code"]) == expected, reply
    assert "OUTSIDE" not in json.dumps(reply) and "czNjcmV0" not in json.dumps(reply)


def test_a_big_library_without_an_id_file_is_added(tmp_path, monkeypatch):
    """Reading the id file safely must not turn "there is none" into a directory scan that a root with more
    entries than safe_fs scans for equivalent names (100,000) refuses."""
    from capengine.host.libraries import LibraryCatalog

    monkeypatch.setattr(safe_fs, "MAX_SCAN", 10)
    root = tmp_path / "lib"
    root.mkdir()
    for n in range(20):
        (root / f"{n}.jpg").write_text("x")
    assert LibraryCatalog(tmp_path / "data").add(root).root == root


@pytest.fixture(scope="module")
def zoo_guest(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    g = Guest(base)
    (base / "outside.txt").write_text("OUTSIDE SECRET")
    names = hostile_zoo(g.root, base)
    yield g, [fs_names.to_text(n) for n in names.values()]
    g.host.close()


PIECES = ["docs", "zoo", "sub", "secret.txt", "hello.txt", "outside.txt", "..", ".", "", "\uef2e\uef2e", "\uef2f",
          "\uef00", "\uef65", "caf\uefe9", "\u00e9", "e\u0301", "DOCS", ".capengine", "sidecars", "x" * 255]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_paths_over_a_hostile_library_never_leak_hang_or_fail_inside(zoo_guest, data):
    g, zoo_names = zoo_guest
    parts = data.draw(st.lists(st.sampled_from(PIECES + zoo_names) | st.text(max_size=6), min_size=1, max_size=6))
    path = "/" + "/".join(parts)
    method, extra = data.draw(st.sampled_from(PATH_OPS[:5]))
    reply = g(method, path=path, **extra)  # never a hang, never INTERNAL
    text = json.dumps(reply)
    assert "OUTSIDE" not in text and "T1VUU0lERS" not in text and "czNjcmV0" not in text, (path, reply)
