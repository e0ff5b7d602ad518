"""Extension identity: an id counts only for the module and manifest the operator installed.

The attacks: a module whose manifest claims an installed extension's id (to get its vault secrets, policy
grants and rate buckets), two directories claiming one id in the daemon, a module swapped on disk after load,
and two development modules claiming one id. Each now fails to reach anyone else's data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import policy_yaml
from wasm_helpers import LIB, call_job, policy_set

from capengine.daemon.server import Daemon, DaemonConfig, call
from capengine.host.extension_host import Host
from capengine.host.installed import REGISTRY_FILE, InstalledRegistry, load_installed
from capengine.host.manifests import IdentityError, load_extension

ROOT = Path(__file__).resolve().parent.parent
SYNC = "com.example.sync"
RULES = """
- {id: creds, effect: allow, operations: ["credentials.*"]}
- {id: ping, effect: allow, operations: [test.ping]}
"""
POLICY = policy_yaml("t", RULES) + "  limits:\n    - {operations: [test.ping], rate: 1/hour, burst: 1}\n"
STORE = ('credentials.store', '{"name": "token", "secret": "s3cret-of-sync"}')
GET = ('credentials.get', '{"name": "token"}')


def make_ext(directory: Path, ext_id: str, method: str, payload: str) -> Path:
    """An extension directory whose job `go` makes one call and logs the envelope it got back."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "m.wat").write_text(call_job(method, payload, 0))
    (directory / "manifest.yaml").write_text(f"id: {ext_id}\nname: X\nversion: 1.0.0\nmodule: m.wat\njobs: [go]\n"
                                             "operations: [credentials.*, test.ping]\n")
    return directory


def envelope(host: Host, directory: Path) -> dict:
    result, _ = host.run_job(load_extension(directory), "go", b"{}")
    assert result.status == "completed", result.error
    return json.loads(result.logs[0][1])


@pytest.fixture
def host(tmp_path):
    h = Host(policy_set(POLICY), tmp_path / "data")
    yield h
    h.close()


def test_impostor_claiming_an_installed_id_is_refused_everywhere(tmp_path, host):
    real = make_ext(tmp_path / "sync", SYNC, *STORE)
    InstalledRegistry(host.data_dir).install(load_extension(real))
    assert envelope(host, real)["ok"]  # the installed extension stores its secret under its id
    impostor = make_ext(tmp_path / "evil", SYNC, *GET)
    ext = load_extension(impostor)
    real_digest = load_extension(real).module_sha256

    result, calls = host.run_job(ext, "go", b"{}")  # the Python API: refused before any call
    assert result.status == "failed" and not calls
    assert ext.module_sha256 in result.error and real_digest in result.error
    assert "capengine ext install --replace" in result.error
    with pytest.raises(IdentityError):
        host.bind(ext)

    proc = cli("run", str(impostor), "--data-dir", str(host.data_dir), "--policies", str(policies(tmp_path)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ext.module_sha256 in proc.stderr and real_digest in proc.stderr and "refusing" in proc.stderr

    (tmp_path / "exts").mkdir()
    os.symlink(impostor, tmp_path / "exts" / "evil")
    loaded, broken = load_installed(tmp_path / "exts", host.data_dir)
    assert loaded == {} and ext.module_sha256 in broken[0] and real_digest in broken[0]


def test_changed_manifest_is_refused_too(tmp_path, host):
    real = make_ext(tmp_path / "sync", SYNC, *STORE)
    InstalledRegistry(host.data_dir).install(load_extension(real))
    manifest = real / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("operations: [", "operations: [vdfs.*, "))
    result, _ = host.run_job(load_extension(real), "go", b"{}")
    assert result.status == "failed" and "its manifest has sha256" in result.error


def test_module_swapped_after_load_is_not_run_under_the_old_identity(tmp_path, host):
    real = make_ext(tmp_path / "sync", SYNC, *STORE)
    InstalledRegistry(host.data_dir).install(load_extension(real))
    ext = load_extension(real)
    (real / "m.wat").write_text(call_job(*GET, 0))  # swapped between load (digest checked) and compile
    result, calls = host.run_job(ext, "go", b"{}")
    assert result.status == "failed" and "changed since" in result.error and not calls


def test_development_modules_claiming_one_id_never_share_data(tmp_path, host):
    dev_id = "com.example.devel"
    writer = make_ext(tmp_path / "w", dev_id, *STORE)
    reader = make_ext(tmp_path / "r", dev_id, *GET)
    assert envelope(host, writer)["ok"]
    assert envelope(host, reader)["error"]["code"] == "NOT_FOUND"  # same id, other module: other vault
    with sqlite3.connect(host.data_dir / "vault.sqlite3") as db:
        owners = [row[0] for row in db.execute("SELECT extension FROM secrets")]
    assert owners == [f"dev:{load_extension(writer).module_sha256}"]
    # once the operator installs a module under the id, it does not see what a development module stored there
    InstalledRegistry(host.data_dir).install(load_extension(reader))
    assert envelope(host, reader)["error"]["code"] == "NOT_FOUND"


def test_development_module_never_reaches_the_installed_extensions_vault(tmp_path, host):
    real = make_ext(tmp_path / "sync", SYNC, *STORE)
    InstalledRegistry(host.data_dir).install(load_extension(real))
    assert envelope(host, real)["ok"]
    reader = make_ext(tmp_path / "reader", SYNC, *GET)
    InstalledRegistry(host.data_dir).install(load_extension(reader), replace=True)
    assert envelope(host, reader)["result"]["secret"] == "s3cret-of-sync"  # the operator vouched: same id, same data
    InstalledRegistry(host.data_dir).remove(SYNC)
    assert envelope(host, reader)["error"]["code"] == "NOT_FOUND"  # removed: development namespace, nothing there


def test_rate_buckets_are_per_namespace(tmp_path, host):
    first = make_ext(tmp_path / "a", "com.example.pinger", "test.ping", '{"message": "x"}')
    second = make_ext(tmp_path / "b", "com.example.pinger", "test.ping", '{"message": "y"}')
    assert envelope(host, first)["ok"]
    assert envelope(host, first)["error"]["code"] == "RATE_LIMITED"
    assert envelope(host, second)["ok"]  # same claimed id, other module: its own bucket
    InstalledRegistry(host.data_dir).install(load_extension(first))
    assert envelope(host, first)["ok"]  # the installed id's bucket is not the development one
    assert envelope(host, first)["error"]["code"] == "RATE_LIMITED"


def test_daemon_refuses_duplicate_ids_and_uninstalled_modules(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    exts, data = tmp_path / "extensions", tmp_path / "data"
    one = make_ext(exts / "one", SYNC, *STORE)
    two = make_ext(exts / "two", SYNC, *GET)
    make_ext(exts / "stray", "com.example.stray", *GET)
    solo = make_ext(exts / "solo", "com.example.solo", *STORE)
    registry = InstalledRegistry(data)
    registry.install(load_extension(one))
    registry.install(load_extension(solo))
    d = Daemon(DaemonConfig(tmp_path / "policies", exts, data, data / "ctl.sock", watch_interval=0))
    d.start()
    try:
        listed = call(d.config.socket, "extensions.list")["result"]
        assert [e["id"] for e in listed["extensions"]] == ["com.example.solo"]
        broken = "\n".join(listed["broken"])
        assert f"{one}: extension id {SYNC} is claimed by 2 directories" in broken
        assert f"{two}: extension id {SYNC} is claimed by 2 directories" in broken
        assert "com.example.stray is not installed" in broken and f"capengine ext install {exts / 'stray'}" in broken
        assert call(d.config.socket, "jobs.run", {"extension": SYNC, "job": "go"})["error"]["code"] == -32602
        ok = call(d.config.socket, "jobs.run", {"extension": "com.example.solo", "job": "go"})["result"]
        assert ok["status"] == "completed"
        registry.remove("com.example.solo")  # withdrawn while the daemon runs: refused from the next job
        gone = call(d.config.socket, "jobs.run", {"extension": "com.example.solo", "job": "go"})["result"]
        assert gone["status"] == "failed" and "not installed" in gone["error"]
    finally:
        d.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    if not directory.is_dir():
        directory.mkdir()
        (directory / "p.yaml").write_text(POLICY)
    return directory


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "capengine", *argv], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def test_ext_commands_and_run_modes(tmp_path):
    data = tmp_path / "data"
    ext = make_ext(tmp_path / "sync", SYNC, *STORE)
    common = ("--data-dir", str(data))
    dev = cli("run", str(ext), "--policies", str(policies(tmp_path)), "--library", str(ROOT / "extensions" /
              "sample-library"), "--input", json.dumps({"library": LIB}), *common)
    assert dev.returncode == 0, dev.stderr
    digest = load_extension(ext).module_sha256
    assert f"development mode: {SYNC} is not installed" in dev.stdout and f"dev:{digest}" in dev.stdout

    installed = cli("ext", "install", str(ext), *common)
    assert installed.returncode == 0 and f"installed: {SYNC} 1.0.0" in installed.stdout and digest in installed.stdout
    assert stat.S_IMODE((data / REGISTRY_FILE).stat().st_mode) == 0o600
    assert cli("ext", "install", str(ext), *common).stdout.startswith("already installed")
    listed = cli("ext", "list", *common)
    assert listed.returncode == 0 and SYNC in listed.stdout and digest in listed.stdout

    run = cli("run", str(ext), "--policies", str(policies(tmp_path)), "--input", json.dumps({"library": LIB}),
              "--library", str(ROOT / "extensions" / "sample-library"), *common)
    assert run.returncode == 0 and "development mode" not in run.stdout

    other = make_ext(tmp_path / "other", SYNC, *GET)
    refused = cli("ext", "install", str(other), *common)
    assert refused.returncode == 2 and "already installed" in refused.stderr and "--replace" in refused.stderr
    assert cli("ext", "install", "--replace", str(other), *common).returncode == 0
    assert cli("ext", "remove", SYNC, *common).returncode == 0
    missing = cli("ext", "remove", SYNC, *common)
    assert missing.returncode == 1 and "not installed" in missing.stderr
    assert cli("ext", "list", *common).stdout == ""


def test_a_damaged_registry_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / REGISTRY_FILE).write_text('{"format": 1, "extensions": {"com.example.sync": {"id": "x"}}}')
    proc = cli("ext", "list", "--data-dir", str(data))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(data / REGISTRY_FILE) in proc.stderr and "install the extensions again" in proc.stderr
    ext = make_ext(tmp_path / "sync", SYNC, *STORE)
    run = cli("run", str(ext), "--data-dir", str(data), "--policies", str(policies(tmp_path)),
              "--library", str(ROOT / "extensions" / "sample-library"))
    assert run.returncode == 2 and "Traceback" not in run.stderr and REGISTRY_FILE in run.stderr


def test_successive_installed_builds_of_one_id_share_its_data(tmp_path, host):
    from wasm_helpers import installed_extension

    first = installed_extension(host, tmp_path, call_job(*STORE, 0), SYNC)
    assert host.run_job(first, "go", b"{}")[1][0].code == "OK"
    second = installed_extension(host, tmp_path, call_job(*GET, 0), SYNC)  # the operator installed a new build
    result, _ = host.run_job(second, "go", b"{}")
    assert json.loads(result.logs[0][1])["result"]["secret"] == "s3cret-of-sync"
    result, _ = host.run_job(first, "go", b"{}")  # the old build is no longer what is installed
    assert result.status == "failed" and "refusing" in result.error
