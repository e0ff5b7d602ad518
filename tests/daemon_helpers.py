"""Real daemon processes for the attack tests: spawn, wait for readiness, talk raw JSON-RPC, mount a tmpfs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import policy_yaml, write
from wasm_helpers import LIB, call_job

from capengine.daemon.client import call
from capengine.host.libraries import LibraryCatalog

ALLOW_READS = "- {id: read, effect: allow, operations: [vdfs.read_file, test.ping]}\n"
DENY_PRIVATE = ("- {id: private, effect: deny, operations: [vdfs.read_file],\n"
                "   condition: 'path.under(\"/private\")'}\n")


def install(ext_dir: Path, data: Path) -> None:
    """Vouch for an extension where the daemon runs installed extensions only (`capengine ext install`); a
    no-op on a tree without the installed-extension registry."""
    try:
        from capengine.host.installed import InstalledRegistry  # type: ignore[import-not-found]
        from capengine.host.manifests import load_extension
    except ImportError:
        return
    InstalledRegistry(data).install(load_extension(ext_dir))


def make_setup(tmp: Path, data: Path | None = None) -> dict[str, Path]:
    """Policies (allow.yaml allows reads, deny.yaml denies /private), a library with a secret, and guests:
    `reader` reads /private/secret.txt, `pinger` pings with a lone surrogate in an arg a condition reads."""
    policies, extensions = tmp / "policies", tmp / "extensions"
    policies.mkdir(parents=True)
    write(policies, "allow.yaml", policy_yaml("allow", ALLOW_READS))
    write(policies, "deny.yaml", policy_yaml("deny", DENY_PRIVATE))
    library = tmp / "lib"
    (library / "private").mkdir(parents=True)
    (library / "private" / "secret.txt").write_text("the secret")
    data = data or tmp / "data"
    LibraryCatalog(data).add(library, "lib", LIB)
    for name, method, payload, lib_ptr in (("reader", "vdfs.read_file", '{"path": "/private/secret.txt"}', 64),
                                           ("pinger", "test.ping", '{"message": "x"}', 0)):
        ext = extensions / name
        ext.mkdir(parents=True)
        (ext / "guest.wat").write_text(call_job(method, payload, lib_ptr))
        (ext / "manifest.yaml").write_text(f"id: com.example.{name}\nname: {name}\nversion: 1.0.0\n"
                                           f"module: guest.wat\njobs: [go]\noperations: [{method}]\n")
        install(ext, data)
    return {"policies": policies, "extensions": extensions, "data": data, "socket": tmp / "ctl.sock",
            "library": library}


class DaemonProcess:
    def __init__(self, dirs: dict[str, Path], *extra: str, env: dict | None = None) -> None:
        self.dirs, self.socket = dirs, dirs["socket"]
        # files, not pipes: a daemon whose log pipe nobody reads would block on a full pipe
        self.stderr_path = dirs["socket"].with_name(f"daemon-{time.monotonic_ns()}.err")
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "capengine", "daemon", "--policies", str(dirs["policies"]),
             "--extensions", str(dirs["extensions"]), "--data-dir", str(dirs["data"]), "--socket", str(self.socket),
             *extra], stdout=subprocess.DEVNULL, stderr=self._err, text=True,
            env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 180) -> DaemonProcess:  # generous: CI machines can be very busy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            with contextlib.suppress(Exception):
                if "result" in call(self.socket, "health", timeout=5):
                    return self
            time.sleep(0.05)
        raise AssertionError("daemon never became ready")

    def call(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return call(self.socket, method, params, timeout=timeout)

    def result(self, method: str, params: dict | None = None) -> dict:
        reply = self.call(method, params)
        assert "result" in reply, reply
        return reply["result"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def raw(sock_path: Path, data: bytes, replies: int = 1, timeout: float = 10) -> list:
    """Send raw bytes; read `replies` lines back (JSON-decoded)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(data)
        reader = s.makefile("rb")
        return [json.loads(reader.readline()) for _ in range(replies)]


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` until ENOSPC."""
    filler = directory / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), filler.open("ab") as f:  # the last few bytes
        for _ in range(65536):
            f.write(b"\0")
            f.flush()
    return filler


def read_log(data: Path) -> list[dict]:
    records = []
    for path in sorted(data.glob("decisions.jsonl*"), reverse=True):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records.append(json.loads(line.decode("utf-8")))  # strict: every line valid UTF-8 JSON
    return records


def child_pids() -> set[int]:
    """The children of every thread of this process (a thread that ends while they are listed is skipped)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            pids.update(int(c) for c in (task / "children").read_text().split())
    return pids
