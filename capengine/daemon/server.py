"""The daemon: policies checked at startup (fail closed), extensions hosted, jobs served over a Unix socket.

Control protocol: newline-delimited JSON-RPC 2.0 on a 0600 Unix socket. Methods: jobs.run, jobs.list,
extensions.list, policies.status, policies.reload, decisions.tail. Policies reload on SIGHUP, on
policies.reload and when files under the policy directory change (polled, debounced): the new set is
checked and compiled off to the side and swapped in only if clean, else the last-known-good set stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections import deque
from pathlib import Path

import attrs

from capengine.daemon.decision_log import DEFAULT_MASK, DecisionLog
from capengine.errors import CapengineError
from capengine.host.extension_host import Host
from capengine.host.installed import load_installed
from capengine.host.manifests import Extension
from capengine.host.runtime import Limits
from capengine.policy.check import run_check
from capengine.policy.engine import PolicySet

log = logging.getLogger("capengine.daemon.server")


class DaemonError(CapengineError):
    """The daemon cannot start (policy errors, socket in use); the message lists every reason."""


@attrs.frozen
class DaemonConfig:
    policies: Path
    extensions: Path
    data_dir: Path
    socket: Path
    limits: Limits = Limits()
    max_jobs_per_extension: int = 2
    watch_interval: float = 1.0  # seconds between polls of the policy directory; 0 disables watching
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    log_mask: tuple[str, ...] = DEFAULT_MASK  # arg names whose values the decision log replaces with "***"


@attrs.frozen
class PolicyStatus:
    revision: str
    files: int
    loaded_at: float
    last_error: tuple[str, ...] = ()  # findings of the last failed reload, () when the last one succeeded


class RpcError(CapengineError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def check_policies(directory: Path, operations: list[str]) -> tuple[PolicySet | None, list[str], int]:
    """The same findings `capengine check` reports; a set only when none is an error."""
    outcome = run_check([directory], operations=operations)
    errors = [str(f) for f in outcome.findings if f.severity == "error"]
    files = sum(1 for f in outcome.load.files if f.policies)
    return (None if errors else outcome.policy_set), errors, files


def _snapshot(directory: Path) -> tuple:
    entries = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(entries)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()
        self._seen = _snapshot(config.policies)  # before loading: a change made during start is not missed
        policy_set, errors, files = check_policies(config.policies, self._operation_names())
        if policy_set is None:
            raise DaemonError("refusing to start: the policy set has errors\n" + "\n".join(errors))
        self.status = PolicyStatus(policy_set.revision, files, time.time())
        try:  # also makes the data dir private (0700) before anything below writes to it
            extensions, broken = load_installed(config.extensions, config.data_dir)
        except CapengineError as exc:
            raise DaemonError(f"refusing to start: {exc}") from None
        for problem in broken:
            log.error("extension skipped: %s", problem)
        self.extensions: dict[str, Extension] = extensions
        self.broken_extensions = broken
        self.decisions = DecisionLog(config.data_dir / "decisions.jsonl", config.log_max_bytes, config.log_keep,
                                     config.log_mask)
        try:
            self.host = Host(policy_set, config.data_dir, config.limits, on_call=self.decisions.record,
                             require_installed=True)
        except CapengineError as exc:
            self.decisions.close()
            raise DaemonError(f"refusing to start: {exc}") from None
        self._jobs_lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._running: dict[str, dict] = {}
        self._finished: deque[dict] = deque(maxlen=100)
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._watcher: threading.Thread | None = None

    @staticmethod
    def _operation_names() -> list[str]:
        from capengine.host.operations import default_registry

        return default_registry().names()

    # policies ----------------------------------------------------------------------------------
    def reload(self) -> dict:
        """Check and compile off to the side; swap only a clean set. Returns what happened."""
        with self._reload_lock:
            policy_set, errors, files = check_policies(self.config.policies, self._operation_names())
            if policy_set is None:
                self.status = attrs.evolve(self.status, last_error=tuple(errors))
                log.error("policy reload rejected; keeping revision %s:\n%s", self.status.revision, "\n".join(errors))
                return {"reloaded": False, "revision": self.status.revision, "errors": errors}
            self.host.swap_policies(policy_set)
            self.status = PolicyStatus(policy_set.revision, files, time.time())
            log.info("policies reloaded: revision %s", policy_set.revision)
            return {"reloaded": True, "revision": policy_set.revision, "errors": []}

    def _watch(self) -> None:
        interval = self.config.watch_interval
        while not self._stopped.wait(interval):
            current = _snapshot(self.config.policies)
            if current == self._seen:
                continue
            while not self._stopped.wait(interval):  # debounce: wait until the files stop changing
                settled = _snapshot(self.config.policies)
                if settled == current:
                    break
                current = settled
            self._seen = current
            self.reload()

    # jobs ----------------------------------------------------------------------------------------
    def run_job(self, extension: str, job: str, job_input: object) -> dict:
        ext = self.extensions.get(extension)
        if ext is None:
            raise RpcError(-32602, f"no extension {extension!r}")
        if not isinstance(job_input, dict):
            raise RpcError(-32602, "input must be a JSON object")
        if self._stopped.is_set():
            raise RpcError(-32000, "the daemon is shutting down")
        with self._jobs_lock:
            if self._in_flight.get(extension, 0) >= self.config.max_jobs_per_extension:
                raise RpcError(-32001, f"{extension} already has {self.config.max_jobs_per_extension} jobs "
                                       "in flight (RESOURCE_EXHAUSTED); retry later")
            self._in_flight[extension] = self._in_flight.get(extension, 0) + 1
            job_id = os.urandom(8).hex()
            self._running[job_id] = {"id": job_id, "extension": extension, "job": job, "started": time.time()}
        try:
            result, calls = self.host.run_job(ext, job, json.dumps(job_input).encode())
        finally:
            with self._jobs_lock:
                self._in_flight[extension] -= 1
                info = self._running.pop(job_id)
        summary = {**info, "status": result.status, "code": result.code, "error": result.error,
                   "calls": [{"operation": c.operation, "path": c.path, "code": c.code, "rules": list(c.rules)}
                             for c in calls],
                   "calls_dropped": calls.dropped,
                   "logs": [{"level": level, "message": text} for level, text in result.logs]}
        self._finished.append({k: summary[k] for k in ("id", "extension", "job", "status", "started")})
        return summary

    # control interface ------------------------------------------------------------------------------
    def handle(self, method: str, params: dict) -> object:
        if method == "jobs.run":
            return self.run_job(params.get("extension"), params.get("job"), params.get("input", {}))
        if method == "jobs.list":
            with self._jobs_lock:
                return {"running": list(self._running.values()), "finished": list(self._finished)}
        if method == "extensions.list":
            return {"extensions": [{"id": e.id, "name": e.name, "version": e.version, "jobs": list(e.jobs),
                                    "operations": list(e.operations)} for e in self.extensions.values()],
                    "broken": self.broken_extensions}
        if method == "policies.status":
            return attrs.asdict(self.status)
        if method == "policies.reload":
            return self.reload()
        if method == "decisions.tail":
            count = params.get("count", 20)
            if not isinstance(count, int) or count < 0:
                raise RpcError(-32602, "count must be a non-negative integer")
            return {"decisions": self.decisions.tail(count)}
        raise RpcError(-32601, f"no method {method!r}")

    def answer(self, line: bytes) -> dict:
        request_id = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise RpcError(-32600, "a request is a JSON object with a string 'method'")
            request_id = request.get("id")
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise RpcError(-32602, "params must be an object")
            return {"jsonrpc": "2.0", "id": request_id, "result": self.handle(request["method"], params)}
        except json.JSONDecodeError as exc:
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": f"parse error: {exc}"}}
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # noqa: BLE001 - one bad request never takes the daemon down
            log.exception("control request failed")
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": f"internal: {exc}"}}

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the 0600 socket and start serving and watching (in background threads)."""
        path = self.config.socket
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                raise DaemonError(f"another daemon is listening on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale socket from a crashed daemon
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if line.strip():
                        self.wfile.write(json.dumps(daemon.answer(line)).encode() + b"\n")
                        self.wfile.flush()

        server = socketserver.ThreadingUnixStreamServer(str(path), Handler, bind_and_activate=False)
        server.daemon_threads = True
        old_umask = os.umask(0o177)  # the socket file is created 0600: only the owner can control the daemon
        try:
            server.server_bind()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        server.server_activate()
        self._server = server
        threading.Thread(target=server.serve_forever, name="capengine-control", daemon=True).start()
        if self.config.watch_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="capengine-watch", daemon=True)
            self._watcher.start()
        log.info("serving on %s (policy revision %s)", path, self.status.revision)

    def stop(self) -> None:
        """Graceful: stop accepting, interrupt running jobs, flush the decision log, remove the socket."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.host.runtime.interrupt_all()
        deadline = time.monotonic() + 10
        while self._running and time.monotonic() < deadline:
            time.sleep(0.01)
        self.decisions.close()
        self.host.close()
        self.config.socket.unlink(missing_ok=True)
        log.info("stopped")


def call(socket_path: Path, method: str, params: dict | None = None, timeout: float = 60) -> dict:
    """One JSON-RPC call over the control socket (the `capengine ctl` client)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode()
                     + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
