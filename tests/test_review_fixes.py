"""Attacks from the review of issue 10: damaged data dirs, garbage through the public API, values no JSON holds,
API/CLI disagreement, first runs racing, closed pipes, the package as built, bundled names, bad limits.

Every CLI case runs the real command in a subprocess: what a user sees is the exit code and stderr, and the
assertion is always the same shape: exit 2, one line, the file named, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import capengine
from capengine.host.data_dir import DataDirError, KeyFileError
from capengine.host.libraries import LibraryCatalog, LibraryError
from capengine.host.runtime import Limits, LimitsError
from capengine.policy.model import RequestError

ROOT = Path(__file__).resolve().parent.parent
POLICIES = str(ROOT / "policies")
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def cli(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capengine", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          cwd=cwd or ROOT)


def assert_clear_error(result: subprocess.CompletedProcess[str], names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0], lines[0]


# 1. bad data directories -------------------------------------------------------------------------------------

def _plain_file(tmp: Path) -> Path:
    (tmp / "file").write_text("not a directory")
    return tmp / "file"


def _module_cache_file(tmp: Path) -> Path:
    (tmp / "data").mkdir(mode=0o700)
    (tmp / "data" / "module-cache").write_text("x")
    (tmp / "data" / "module-cache").chmod(0o600)
    return tmp / "data" / "module-cache"


def _cache_key_dir(tmp: Path) -> Path:
    (tmp / "data" / "module-cache" / "cache.key").mkdir(parents=True, mode=0o700)
    return tmp / "data" / "module-cache" / "cache.key"


def _cache_key_garbage(tmp: Path) -> Path:
    (tmp / "data" / "module-cache").mkdir(parents=True, mode=0o700)
    (tmp / "data" / "module-cache" / "cache.key").write_bytes(os.urandom(200))
    return tmp / "data" / "module-cache" / "cache.key"


def _catalogue_garbage(tmp: Path) -> Path:
    (tmp / "data").mkdir(mode=0o700)
    (tmp / "data" / "libraries.sqlite3").write_bytes(b"this is not SQLite " * 300)
    return tmp / "data" / "libraries.sqlite3"


def _cache_key_fifo(tmp: Path) -> Path:
    (tmp / "data" / "module-cache").mkdir(parents=True, mode=0o700)
    os.mkfifo(tmp / "data" / "module-cache" / "cache.key", 0o600)  # opening it for reading would block
    return tmp / "data" / "module-cache" / "cache.key"


def _catalogue_fifo(tmp: Path) -> Path:
    (tmp / "data").mkdir(mode=0o700)
    os.mkfifo(tmp / "data" / "libraries.sqlite3", 0o600)  # opening it for writing would block
    return tmp / "data" / "libraries.sqlite3"


def _vault_dir(tmp: Path) -> Path:
    (tmp / "data" / "vault.sqlite3").mkdir(parents=True, mode=0o700)
    return tmp / "data" / "vault.sqlite3"


@pytest.mark.parametrize("damage, data_dir", [
    (_plain_file, lambda bad: bad),
    (_plain_file, lambda bad: bad / "under" / "it"),
    (_module_cache_file, lambda bad: bad.parent),
    (_cache_key_dir, lambda bad: bad.parent.parent),
    (_cache_key_garbage, lambda bad: bad.parent.parent),
    (_catalogue_garbage, lambda bad: bad.parent),
    (_cache_key_fifo, lambda bad: bad.parent.parent),
    (_catalogue_fifo, lambda bad: bad.parent),
    (_vault_dir, lambda bad: bad.parent),
], ids=["file", "under-a-file", "module-cache-a-file", "cache-key-a-dir", "cache-key-garbage",
        "catalogue-garbage", "cache-key-a-fifo", "catalogue-a-fifo", "vault-a-dir"])
def test_run_on_a_damaged_data_dir_is_one_clear_line(tmp_path, damage, data_dir):
    bad = damage(tmp_path)
    assert_clear_error(cli("run", "--data-dir", str(data_dir(bad))), str(bad))


def test_xdg_data_home_a_file(tmp_path):
    bad = _plain_file(tmp_path)
    result = cli("run", env={"XDG_DATA_HOME": str(bad), "CAPENGINE_DATA_DIR": "", "HOME": str(tmp_path)})
    assert_clear_error(result, str(bad))


@pytest.mark.parametrize("command, damage", [
    (["library", "list"], _catalogue_garbage), (["library", "add", "."], _catalogue_garbage),
    (["library", "list"], _catalogue_fifo), (["ext", "list"], _plain_file),
])
def test_other_commands_on_a_damaged_data_dir(tmp_path, command, damage):
    bad = damage(tmp_path)
    data_dir = bad.parent if command[0] == "library" else bad
    result = cli(*command, "--data-dir", str(data_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(data_dir) in result.stderr


def test_read_only_home(tmp_path):
    """A fresh HOME on a read-only mount: root ignores chmod, so the mount itself is made read-only."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to mount a read-only HOME (chmod does not stop root)")
    home = tmp_path / "home"
    home.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    script = (f"mount --bind {home} {home} && mount -o remount,ro,bind {home} && "
              f"exec {sys.executable} -m capengine run")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "XDG_DATA_HOME": "", "CAPENGINE_DATA_DIR": ""}
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert_clear_error(result, str(home / ".local" / "share" / "capengine"))
    assert "Read-only file system" in result.stderr


def test_python_api_raises_capengine_errors(tmp_path):
    policies = capengine.load_policies(POLICIES)
    with pytest.raises(DataDirError, match="not a directory"):
        capengine.Host(policies, _plain_file(tmp_path))
    with pytest.raises(LibraryError, match="libraries.sqlite3"):
        LibraryCatalog(_catalogue_garbage(tmp_path).parent)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data" / "module-cache" / "cache.key").mkdir(parents=True, mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        capengine.Host(policies, other / "data")
    assert issubclass(LimitsError, capengine.CapengineError)


# 2. public API input types -----------------------------------------------------------------------------------

GARBAGE = [None, [], 5, "x", b"x", 1.5, {"extension"}, ("a", "b")]


@pytest.mark.parametrize("raw", GARBAGE, ids=repr)
def test_garbage_requests_are_denied_not_raised(raw):
    policies = capengine.load_policies(POLICIES)
    decision = policies.decide_raw(raw)
    assert not decision.allowed and decision.message.startswith("invalid request")
    explanation = policies.explain(raw)
    assert not explanation.decision.allowed and "invalid" in explanation.reason
    with pytest.raises(RequestError, match="must be an object"):
        capengine.Request.from_mapping(raw)
    with pytest.raises(RequestError, match="takes a Request"):
        policies.decide(raw)


def test_explain_accepts_a_request():
    policies = capengine.load_policies(POLICIES)
    raw = {"extension": "com.example.photo-ocr", "operation": "vdfs.read_file", "path": "/photos/private/p.png",
           "library": LIB}
    assert policies.explain(capengine.Request.from_mapping(raw)) == policies.explain(raw)
    assert not policies.explain(raw).decision.allowed


@pytest.mark.parametrize("paths", [None, 5, b"policies", [], [None], [b"x"], {"policies": 1}, 2.5], ids=repr)
def test_load_policies_of_non_paths(paths):
    with pytest.raises(capengine.PolicyLoadError, match="path"):
        capengine.load_policies(paths)
    with pytest.raises(capengine.PolicyLoadError):
        capengine.check(paths)


# 3. only JSON/CEL values in requests -------------------------------------------------------------------------

SIZE_CAP = """apiVersion: capengine/v1
kind: Policy
metadata: {name: cap}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: too-big, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 10'}
    - {id: rest, effect: allow, operations: [vdfs.read_file]}
"""

HOSTILE_ARGS = [
    {"length": math.nan}, {"length": math.inf}, {"length": -math.inf}, {"length": -(2**70)}, {"length": 2**64},
    {"length": -(2**63) - 1},
    {"items": (1, 2, 3)}, {"items": {1, 2, 3}}, {"items": b"abc"}, {"items": bytearray(b"abc")},
    {1: "non-string key"}, {"nested": {"deep": [1, {"n": math.nan}]}}, {"nested": {("t",): 1}},
    {"text": "lone \ud800 surrogate"}, {"obj": object()},
]


@pytest.mark.parametrize("args", HOSTILE_ARGS, ids=repr)
def test_values_no_json_holds_are_refused(tmp_path, args):
    (tmp_path / "cap.yaml").write_text(SIZE_CAP)
    policies = capengine.load_policies(tmp_path)
    raw = {"extension": "com.example.app", "operation": "vdfs.read_file", "path": "/a", "library": LIB,
           "args": args}
    with pytest.raises(RequestError):
        capengine.Request.from_mapping(raw)
    decision = policies.decide_raw(raw)
    assert not decision.allowed and decision.message.startswith("invalid request"), decision


def test_deep_nesting_is_refused_not_a_recursion_error():
    nested: object = 1
    for _ in range(10_000):
        nested = [nested]
    with pytest.raises(RequestError, match="nested more than"):
        capengine.Request("com.example.app", "test.ping", args={"x": nested})


def test_args_are_a_deep_copy_and_edge_values_pass(tmp_path):
    (tmp_path / "cap.yaml").write_text(SIZE_CAP)
    policies = capengine.load_policies(tmp_path)
    items = [1, 2]
    request = capengine.Request("com.example.app", "vdfs.read_file", "/a", LIB,
                                {"length": 2**63 - 1, "items": items, "m": -(2**63), "u": 2**64 - 1, "f": 1e308})
    assert policies.decide(request).rules == ("cap/too-big",)  # the largest int64 is still a number > 10
    items.append(3)  # the caller's list changes after the request was built: the request does not
    small = capengine.Request("com.example.app", "vdfs.read_file", "/a", LIB, {"length": 1, "items": items[:2]})
    assert policies.decide(small).allowed
    assert list(request.args["items"]) == [1, 2]


def test_cli_explain_refuses_nan(tmp_path):
    request = ('{"extension": "com.example.app", "operation": "vdfs.read_file", "path": "/a", '
               '"args": {"length": NaN}}')
    result = cli("explain", "--policies", POLICIES, "--request", request)
    assert_clear_error(result, "--request")
    assert "NaN" in result.stderr
    (tmp_path / "req.json").write_text(request.replace("NaN", "-Infinity"))
    result = cli("explain", "--policies", POLICIES, "--request", f"@{tmp_path / 'req.json'}")
    assert_clear_error(result, str(tmp_path / "req.json"))


# 4. API and CLI find the same ----------------------------------------------------------------------------------

BROKEN = {
    "typo.yaml": """apiVersion: capengine/v1
kind: Policy
metadata: {name: typo}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: no-secrets, effect: deny, operations: [vdfs.reed_file], condition: 'path.under("/secrets")'}
    - {id: docs, effect: allow, operations: [vdfs.read_file, vdfs.lst_dir]}
""",
    "glob.yaml": """apiVersion: capengine/v1
kind: Policy
metadata: {name: glob}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: all-ai, effect: deny, operations: ["aii.*"]}
""",
}


def test_api_check_finds_what_the_cli_finds(tmp_path):
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    result = cli("check", "--format", "json", str(tmp_path))
    assert result.returncode == 1, result.stderr
    by_cli = {(f["file"], f["line"], f["code"]) for f in json.loads(result.stdout)["findings"]}
    by_api = {(f.location.file, f.location.line, str(f.code)) for f in capengine.check(tmp_path).findings}
    assert by_api == by_cli
    assert any("typo.yaml" in file and line == 7 for file, line, _ in by_api), by_api  # vdfs.reed_file
    with pytest.raises(capengine.PolicyLoadError, match="reed_file"):
        capengine.load_policies(tmp_path)


# 5. first runs racing on a fresh data dir ----------------------------------------------------------------------

BARRIER = ("import os, sys, time\nfrom pathlib import Path\nready, go = Path(sys.argv[1]), Path(sys.argv[2])\n"
           "ready.touch()\nwhile not go.exists():\n    time.sleep(0.001)\n")


def _race(tmp: Path, code: str, argv: list[str], env: dict[str, str], n: int, cwd: Path) -> list[tuple[int, str, str]]:
    """Start `n` real processes, let each import what it needs, then release them at once (a start file), so
    their first touches of the data dir overlap instead of being spread over interpreter start-up."""
    gate = tmp / "gate"
    gate.mkdir(exist_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gate / f"ready{i}"), str(gate / "go"), *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
             for i in range(n)]
    for _ in range(6000):
        if len(list(gate.glob("ready*"))) == n or any(p.poll() is not None for p in procs):
            break
        subprocess.run(["sleep", "0.01"])
    (gate / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    shutil.rmtree(gate)
    return results


def test_concurrent_first_runs_of_an_installed_package(tmp_path):
    """Six real processes run `capengine run` at once with one fresh HOME, as from a wheel: the sample library
    is copied into the data dir and the catalogue created by whichever gets there first."""
    fake = tmp_path / "packaged"
    (fake / "extensions").mkdir(parents=True)
    (fake / "policies").symlink_to(ROOT / "policies")
    (fake / "extensions" / "photo-ocr").symlink_to(ROOT / "extensions" / "photo-ocr")
    shutil.copytree(ROOT / "extensions" / "sample-library", fake / "extensions" / "sample-library",
                    ignore=shutil.ignore_patterns("sidecars"))
    for i in range(200):  # a library worth copying: the window between two first runs is the copy
        (fake / "extensions" / "sample-library" / "photos" / f"extra-{i}.txt").write_text("x" * 1000)
    code = ("import capengine.bundled as b, capengine.host.extension_host\n" + BARRIER
            + f"b.root = lambda: Path({str(fake)!r})\nfrom capengine.cli import main\nsys.exit(main(['run']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "home"), "XDG_DATA_HOME": "",
           "CAPENGINE_DATA_DIR": ""}
    for code_, out, err in _race(tmp_path, code, [], env, 6, tmp_path):
        assert code_ == 0 and "Traceback" not in err, err
        assert "job completed" in out
    data = tmp_path / "home" / ".local" / "share" / "capengine"
    assert sorted(p.name for p in data.glob("*sample-library*")) == ["sample-library"]  # no partial copies left


SLOW_SCHEMA_READS = (
    "import functools, sqlite3\n"
    "class Slow(sqlite3.Connection):  # a loaded machine: the schema read and the upgrade are far apart\n"
    "    def execute(self, sql, *args):\n"
    "        cursor = super().execute(sql, *args)\n"
    "        if sql.startswith('PRAGMA table_info'):\n"
    "            time.sleep(0.3)\n"
    "        return cursor\n"
    "sqlite3.connect = functools.partial(sqlite3.connect, factory=Slow)\n"
    "from capengine.host.libraries import LibraryCatalog\n"
    "LibraryCatalog(sys.argv[3]).list()\n")


@pytest.mark.parametrize("old_schema", [False, True], ids=["fresh", "older-catalogue"])
def test_concurrent_catalogue_upgrade(tmp_path, old_schema):
    """Six processes open one catalogue at once, each slow between reading the schema and upgrading it: all
    see the columns missing, and only the first may add them (the others once died of "duplicate column
    name"). A catalogue from before the columns existed is upgraded the same way."""
    import sqlite3

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    if old_schema:
        with contextlib.closing(sqlite3.connect(data / "libraries.sqlite3")) as db:
            db.execute("CREATE TABLE libraries (id TEXT PRIMARY KEY, name TEXT NOT NULL, root TEXT NOT NULL UNIQUE)")
            db.execute("INSERT INTO libraries VALUES (?, 'old', ?)", (LIB, str(tmp_path)))
            db.commit()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for code, _, err in _race(tmp_path, BARRIER + SLOW_SCHEMA_READS, [str(data)], env, 6, tmp_path):
        assert code == 0, err
    with contextlib.closing(sqlite3.connect(data / "libraries.sqlite3")) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(libraries)")}
    assert {"case_insensitive", "allow_hardlinks"} <= columns


# 6. closed pipes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["ops", "--format", "json"], ["check", "--format", "sarif", POLICIES],
                                  ["explain", "--policies", POLICIES, "--request",
                                   json.dumps({"extension": "com.example.a", "operation": "vdfs.stat"})]])
def test_reader_closing_the_pipe_is_quiet(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a byte (`| true`)
    try:
        result = subprocess.run([sys.executable, "-m", "capengine", *argv], stdout=write, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 141


# 7. the package as built -------------------------------------------------------------------------------------

def _source_tree(tmp: Path) -> Path:
    """The checkout's tracked files plus the built example modules, as a fresh clone after `make` has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = tmp / "src"
    for name in filter(None, files.decode().split("\0")):
        source, target = ROOT / name, tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    for module in (ROOT / "extensions").glob("*/*.wasm"):
        shutil.copy2(module, tree / module.relative_to(ROOT))
    return tree


def test_sdist_and_wheel(tmp_path):
    pytest.importorskip("build", reason="needs the `build` package (pip install .[test])")
    if not list((ROOT / "extensions").glob("*/*.wasm")):
        pytest.skip("build the example modules first: make -C extensions")
    if not (ROOT / ".git").exists():
        pytest.skip("builds from the files git tracks: needs a git checkout (not an unpacked sdist)")
    tree = _source_tree(tmp_path)
    stale = tree / "build" / "lib" / "capengine" / "removed_long_ago.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("STALE = True\n")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(tree)], check=True,
                   capture_output=True, timeout=600)
    wheel_in_tree = tmp_path / "wheel-in-tree"  # built where build/lib is stale (what `pip wheel .` does)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(wheel_in_tree), str(tree)],
                   check=True, capture_output=True, timeout=600)
    for wheel_path in (*dist.glob("*.whl"), *wheel_in_tree.glob("*.whl")):
        with zipfile.ZipFile(wheel_path) as wheel:
            names = set(wheel.namelist())
            assert not any("removed_long_ago" in n for n in names)
            assert "capengine/cel/cel.lark" in names  # the CEL grammar: without it nothing parses
            assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
            assert "License-Expression: Apache-2.0" in wheel.read(next(n for n in names if n.endswith("METADATA")))\
                .decode()
            for name in (n for n in names if n.startswith("capengine/bundled/") and n.endswith(".yaml")):
                # byte for byte the checkout's (an installed extension's manifest digest must match either copy)
                original = tree / name.removeprefix("capengine/bundled/")
                assert wheel.read(name) == original.read_bytes(), name
                first = wheel.read(name).decode().splitlines()[0]
                if "$schema=" in first:
                    target = os.path.normpath(os.path.join(os.path.dirname(name), first.split("$schema=")[1]))
                    assert target in names, (name, first)
    (sdist_path,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist_path) as sdist:
        sdist.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    for needed in ("LICENSE", "README.md", "docs/embedding.md", "tests/helpers.py", "tests/wasm_helpers.py",
                   "tests/cel_conformance.py", "tests/casefold_fuse.py", "tests/cel-spec/LICENSE",
                   "tests/cel-spec/README.md"):
        assert (unpacked / needed).is_file(), needed
    collect = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"], cwd=unpacked,
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(unpacked)})
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]


# 8. bundled extensions by name -------------------------------------------------------------------------------

def test_run_a_bundled_extension_by_name(tmp_path):
    result = cli("run", "hello-wat", "--input", json.dumps({"path": "/secrets/api-key.txt"}), "--data-dir",
                 str(tmp_path / "data"), cwd=tmp_path)
    assert "com.example.hello-wat" in result.stdout, result.stderr
    assert "org-baseline/no-secrets-dirs" in result.stdout
    result = cli("run", "no-such-extension", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "no-such-extension" in result.stderr


# 9. limits -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("cpu_seconds", math.nan), ("cpu_seconds", math.inf), ("cpu_seconds", 0), ("cpu_seconds", -1),
    ("cpu_seconds", 10**9), ("cpu_seconds", "10"), ("cpu_seconds", True), ("fuel", 0), ("fuel", -5),
    ("fuel", 1.5), ("memory_bytes", 0), ("memory_bytes", -1), ("memory_bytes", 1.0), ("instances", 0),
    ("max_wasm_stack", 0), ("table_elements", -1), ("bridge", None),
])
def test_limits_refuse_values_they_cannot_enforce(field, value):
    with pytest.raises(LimitsError, match=field):
        Limits(**{field: value})


def test_sane_limits_build():
    assert Limits(cpu_seconds=0.5, fuel=1, memory_bytes=65536).cpu_seconds == 0.5
    assert Limits(cpu_seconds=86_400).fuel is None


# 10. messages name what was wrong -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"library": NaN}', '{"n": 1e400}', '{"n": -Infinity}',
                                  "{" * 100_000])
def test_run_input_errors_name_the_flag(tmp_path, text):
    assert_clear_error(cli("run", "--input", text, "--data-dir", str(tmp_path / "data")), "--input")


@pytest.mark.parametrize("module, content", [
    ("hello.wat", b"(module (func"), ("hello.wat", b"\xff\xfe(module)"), ("m.wasm", b"\0asm\1\0\0\0\5garbage"),
    ("m.wasm", b"not wasm at all"),
])
def test_invalid_module_names_the_file(tmp_path, module, content):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "manifest.yaml").write_text(
        f"id: com.example.broken\nname: broken\nversion: 0.1.0\nmodule: {module}\njobs: [read]\n"
        "operations: [vdfs.read_file]\n")
    (ext / module).write_bytes(content)
    result = cli("run", str(ext), "--data-dir", str(tmp_path / "data"), "--input", "{}")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert f"{ext / module} is not valid WebAssembly" in result.stdout + result.stderr
