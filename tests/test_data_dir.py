"""The data directory and its key files: private (0700/0600, checked at start), keys that appear whole or not at
all (racing first users, a full disk, a damaged file), and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from wasm_helpers import call_job, extension, make_host

from capengine.daemon.server import Daemon, DaemonConfig
from capengine.host import data_dir as private
from capengine.host.operations.credentials import _master_key
from capengine.host.operations.registry import OperationError

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_host_makes_a_fresh_data_dir_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPENGINE_VAULT_KEY", raising=False)
    old_umask = os.umask(0o022)  # the usual umask: what SQLite and open() would otherwise turn into 0644
    try:
        host = make_host(tmp_path)
        ext = extension(tmp_path, call_job("credentials.store", '{"name": "n", "secret": "s"}', 0))
        host.run_job(ext, "go", b"{}")
        host.close()
    finally:
        os.umask(old_umask)
    data = tmp_path / "data"
    assert mode(data) == 0o700 and mode(data / "module-cache") == 0o700
    private_files = [data / "vault.sqlite3", data / "libraries.sqlite3", data / "module-cache" / "cache.key"]
    private_files += list((data / "module-cache").glob("*.cwasm"))
    assert len(private_files) == 4
    assert {p.name: mode(p) for p in private_files} == {p.name: 0o600 for p in private_files}


def test_daemon_makes_a_fresh_data_dir_private(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  extensions: ['*']\n  rules:\n"
        "    - {id: ping, effect: allow, operations: [test.ping]}\n")
    (tmp_path / "extensions").mkdir()
    data = tmp_path / "fresh" / "data"
    d = Daemon(DaemonConfig(tmp_path / "policies", tmp_path / "extensions", data, data / "ctl.sock",
                            watch_interval=0))
    d.stop()
    assert mode(data) == 0o700 and mode(data / "vault.sqlite3") == 0o600 and mode(data / "libraries.sqlite3") == 0o600


def test_a_world_readable_vault_is_fixed_at_start_and_said(tmp_path, caplog):
    data = tmp_path / "data"
    (data / "module-cache").mkdir(parents=True)
    os.chmod(data, 0o755)
    for name in ("vault.sqlite3", "vault.key", "decisions.jsonl.1", "module-cache/x.cwasm"):
        (data / name).write_bytes(b"")
        os.chmod(data / name, 0o644)
    (data / "notes.txt").write_text("the user's own file")  # not capengine's: left alone
    os.chmod(data / "notes.txt", 0o644)
    with caplog.at_level(logging.WARNING):
        private.prepare(data)
    assert mode(data) == 0o700 and mode(data / "module-cache") == 0o700
    for name in ("vault.sqlite3", "vault.key", "decisions.jsonl.1", "module-cache/x.cwasm"):
        assert mode(data / name) == 0o600, name
    assert mode(data / "notes.txt") == 0o644
    assert f"{data / 'vault.sqlite3'} was mode 0644" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")
def test_a_data_dir_another_user_owns_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 12345, 12345)
    with pytest.raises(private.DataDirError, match=r"belongs to uid 12345, not to you"):
        private.prepare(data)


def _first_use(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        results.put(private.load_or_create_key(Path(path), 32, "fix").hex())
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"error: {exc}")


def race_threads(path: Path, count: int) -> list[bytes]:
    barrier = threading.Barrier(count)
    found: list[bytes] = []

    def use() -> None:
        barrier.wait()
        found.append(private.load_or_create_key(path, 32, "fix"))

    threads = [threading.Thread(target=use) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found


def test_racing_first_uses_agree_on_one_whole_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(15):
        path = tmp_path / f"{round_}.key"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_first_use, args=(str(path), barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        keys = {results.get(timeout=30) for _ in procs}
        for p in procs:
            p.join()
        assert len(keys) == 1 and len(next(iter(keys))) == 64, keys  # nobody read an empty or other key
        assert path.read_bytes().hex() in keys and mode(path) == 0o600
        found = race_threads(tmp_path / f"t{round_}.key", 6)
        assert len(set(found)) == 1 and len(found) == 6 and len(found[0]) == 32
    assert not list(tmp_path.glob(".*.tmp"))  # every temp file was removed


def test_a_short_key_is_retried_then_called_corrupt(tmp_path):
    path = tmp_path / "vault.key"
    path.write_bytes(b"")  # an older capengine between creating and writing it
    key = os.urandom(32)
    writer = threading.Timer(0.2, path.write_bytes, (key,))
    writer.start()
    assert private.load_or_create_key(path, 32, "fix") == key
    writer.join()
    path.write_bytes(b"short")
    with pytest.raises(private.KeyFileError, match=r"vault.key is corrupt \(5 bytes, expected 32\); restore") as exc:
        private.load_or_create_key(path, 32, "restore it")
    assert exc.value.corrupt
    path.write_bytes(os.urandom(40))
    with pytest.raises(private.KeyFileError, match=r"more than 32 bytes"):
        private.load_or_create_key(path, 32, "fix")


def test_vault_key_problems_reach_the_host_log_not_the_guest(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CAPENGINE_VAULT_KEY", raising=False)
    monkeypatch.setattr(private, "KEY_READ_ATTEMPTS", 2)
    (tmp_path / "vault.key").write_bytes(b"")
    with pytest.raises(OperationError) as exc:
        _master_key(tmp_path)
    assert exc.value.message == "the vault is unavailable; see the host log" and "vault.key" not in exc.value.message
    assert "vault.key is corrupt" in caplog.text


FULL_DISK_VAULT = """
import json, os, resource, sys
from pathlib import Path
from capengine.host.operations.credentials import _master_key
from capengine.host.operations.registry import OperationError
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    print(json.dumps({"key": len(_master_key(Path(sys.argv[1])))}))
except OperationError as exc:
    print(json.dumps({"error": exc.message}))
"""


def test_a_full_disk_leaves_no_empty_vault_key(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "CAPENGINE_VAULT_KEY"}
    for limit in (0, 16):  # nothing fits; half the key fits
        proc = subprocess.run([sys.executable, "-c", FULL_DISK_VAULT, str(tmp_path), str(limit)],
                              capture_output=True, text=True, timeout=60, env=env)
        assert json.loads(proc.stdout) == {"error": "the vault is unavailable; see the host log"}, proc.stderr
        assert not (tmp_path / "vault.key").exists() and not list(tmp_path.glob(".*"))
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_VAULT, str(tmp_path), str(1 << 20)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(proc.stdout) == {"key": 32}  # space again: the vault works, nothing to repair by hand


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capengine", *argv], capture_output=True, text=True, timeout=120,
                          env=ENV, cwd=ROOT)


HELLO = str(ROOT / "extensions" / "hello-wat")


def test_run_with_a_file_as_data_dir_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for data_dir in (not_a_dir, not_a_dir / "below"):
        proc = cli("run", HELLO, "--data-dir", str(data_dir))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"data directory {data_dir}" in proc.stderr and "point --data-dir" in proc.stderr
        ext = cli("ext", "install", HELLO, "--data-dir", str(data_dir))
        assert ext.returncode == 2 and "Traceback" not in ext.stderr and str(data_dir) in ext.stderr


def test_run_with_a_corrupt_cache_key_is_a_clear_error(tmp_path):
    key = tmp_path / "data" / "module-cache" / "cache.key"
    key.parent.mkdir(parents=True)
    for damage in (b"", b"x" * 5, b"x" * 33):
        key.write_bytes(damage)
        start = time.monotonic()
        proc = cli("run", HELLO, "--data-dir", str(tmp_path / "data"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"the key file {key} is corrupt" in proc.stderr and "delete it" in proc.stderr
        assert time.monotonic() - start < 60
    key.unlink()  # what the message says to do
    proc = cli("run", HELLO, "--data-dir", str(tmp_path / "data"))
    assert proc.returncode in (0, 1) and "job " in proc.stdout, proc.stderr


def test_daemon_with_a_file_as_data_dir_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    (tmp_path / "extensions").mkdir()
    proc = cli("daemon", "--policies", str(ROOT / "policies"), "--extensions", str(tmp_path / "extensions"),
               "--data-dir", str(not_a_dir), "--socket", str(tmp_path / "s.sock"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"data directory {not_a_dir} is not a directory" in proc.stderr


def test_a_data_dir_reached_through_a_symlink_is_made_private_too(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o755)
    (tmp_path / "link").symlink_to(real)
    private.prepare(tmp_path / "link")
    assert mode(real) == 0o700 and mode(real / "vault.sqlite3") == 0o600
