"""Ed25519-signed extensions: a key the operator trusts for some ids vouches for exactly what it signed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_identity import GET, POLICY, STORE, SYNC, envelope, make_ext
from wasm_helpers import policy_set

from capengine.host import signatures
from capengine.host.extension_host import Host
from capengine.host.installed import InstalledRegistry, load_installed
from capengine.host.manifests import IdentityError, load_extension

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "data"
    publisher = signatures.generate_key(tmp_path / "publisher.pem")
    InstalledRegistry(data).trusted.trust("publisher", publisher, ["com.example.*"])
    host = Host(policy_set(POLICY), data, require_installed=True)
    yield tmp_path, host
    host.close()


def test_signed_by_a_trusted_key_counts_as_installed(setup):
    tmp_path, host = setup
    ext_dir = make_ext(tmp_path / "exts" / "sync", SYNC, *STORE)
    with pytest.raises(IdentityError, match="not installed"):
        host.bind(load_extension(ext_dir))
    signatures.sign(ext_dir, tmp_path / "publisher.pem")
    assert host.bind(load_extension(ext_dir)).namespace == SYNC
    assert envelope(host, ext_dir)["ok"]
    loaded, broken = load_installed(tmp_path / "exts", host.data_dir)
    assert list(loaded) == [SYNC] and broken == []


def test_a_copied_signature_or_a_changed_module_vouches_for_nothing(setup):
    tmp_path, host = setup
    signed = make_ext(tmp_path / "exts" / "sync", SYNC, *STORE)
    signatures.sign(signed, tmp_path / "publisher.pem")
    impostor = make_ext(tmp_path / "evil" / "sync", SYNC, *GET)
    shutil.copy(signed / signatures.SIGNATURE_FILE, impostor / signatures.SIGNATURE_FILE)
    with pytest.raises(IdentityError):
        host.bind(load_extension(impostor))
    manifest = signed / "manifest.yaml"  # the publisher's build, its manifest edited after signing
    manifest.write_text(manifest.read_text().replace("operations: [", "operations: [vdfs.*, "))
    with pytest.raises(IdentityError):
        host.bind(load_extension(signed))


def test_a_key_signs_only_the_ids_it_is_trusted_for(setup):
    tmp_path, host = setup
    other = make_ext(tmp_path / "other", "org.elsewhere.tool", *STORE)
    signatures.sign(other, tmp_path / "publisher.pem")
    with pytest.raises(IdentityError):
        host.bind(load_extension(other))
    stranger = signatures.generate_key(tmp_path / "stranger.pem")
    mine = make_ext(tmp_path / "mine", SYNC, *STORE)
    signatures.sign(mine, tmp_path / "stranger.pem")  # a valid signature by a key nobody trusted
    with pytest.raises(IdentityError):
        host.bind(load_extension(mine))
    InstalledRegistry(host.data_dir).trusted.trust("stranger", stranger, [SYNC])
    assert host.bind(load_extension(mine)).namespace == SYNC
    InstalledRegistry(host.data_dir).trusted.untrust("stranger")
    with pytest.raises(IdentityError):
        host.bind(load_extension(mine))


def test_forged_signature_files_are_ignored(setup):
    tmp_path, host = setup
    ext_dir = make_ext(tmp_path / "sync", SYNC, *STORE)
    publisher = InstalledRegistry(host.data_dir).trusted.entries()["publisher"].public_key
    for document in ({"public_key": publisher, "signature": "AAAA"}, {"public_key": publisher}, [1, 2], "x",
                     {"public_key": publisher, "signature": "not base64!"}):
        (ext_dir / signatures.SIGNATURE_FILE).write_text(json.dumps(document))
        with pytest.raises(IdentityError):
            host.bind(load_extension(ext_dir))
    (ext_dir / signatures.SIGNATURE_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(IdentityError):
        host.bind(load_extension(ext_dir))


def test_cli_keygen_sign_trust(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "capengine", *argv], capture_output=True, text=True,
                              timeout=120, env=env, cwd=ROOT)

    data = ("--data-dir", str(tmp_path / "data"))
    made = cli("ext", "keygen", str(tmp_path / "k.pem"))
    assert made.returncode == 0, made.stderr
    key = made.stdout.split()[2]
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    again = cli("ext", "keygen", str(tmp_path / "k.pem"))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    ext_dir = make_ext(tmp_path / "sync", SYNC, *STORE)
    assert cli("ext", "sign", str(ext_dir), "--key", str(tmp_path / "k.pem")).returncode == 0
    bad = cli("ext", "trust", "pub", "not-a-key", "--ids", "com.example.*", *data)
    assert bad.returncode == 2 and "not an Ed25519 public key" in bad.stderr
    assert cli("ext", "trust", "pub", key, "--ids", "com.example.*", *data).returncode == 0
    assert f"trusted key pub  {key}  may sign com.example.*" in cli("ext", "list", *data).stdout
    host = Host(policy_set(POLICY), tmp_path / "data", require_installed=True)
    try:
        assert host.bind(load_extension(ext_dir)).namespace == SYNC
    finally:
        host.close()
    assert cli("ext", "untrust", "pub", *data).returncode == 0
    assert cli("ext", "untrust", "pub", *data).returncode == 1
