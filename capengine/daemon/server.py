"""The daemon: policies checked at startup (fail closed), extensions hosted, jobs served over a Unix socket.

Control protocol: newline-delimited JSON-RPC 2.0 on a 0600 Unix socket. Methods: jobs.run, jobs.list,
jobs.status, jobs.cancel, jobs.resume, extensions.list, policies.status, policies.reload, decisions.tail.
Policies reload on SIGHUP, on policies.reload and when files under the policy directory change (polled,
debounced): the new set is
checked and compiled off to the side and swapped in only if clean, else the last-known-good set stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections import deque
from pathlib import Path

import attrs

from capengine.daemon.decision_log import DEFAULT_MASK, DecisionLog
from capengine.daemon.jobs import JobRecord, JobTable
from capengine.errors import CapengineError
from capengine.host.extension_host import Host
from capengine.host.job_run import JobRun
from capengine.host.manifests import Extension, load_extensions
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
    resume_interrupted: bool = False  # on start, resume the jobs a shutdown (or a crash) interrupted
    shutdown_grace: float = 2.0  # seconds running jobs get to checkpoint and return before they are stopped


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
        extensions, broken = load_extensions(config.extensions)
        for problem in broken:
            log.error("extension skipped: %s", problem)
        self.extensions: dict[str, Extension] = {e.id: e for e in extensions}
        self.broken_extensions = broken
        self.decisions = DecisionLog(config.data_dir / "decisions.jsonl", config.log_max_bytes, config.log_keep,
                                     config.log_mask)
        self.host = Host(policy_set, config.data_dir, config.limits, on_call=self.decisions.record)
        self._jobs_lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._running: dict[str, dict] = {}
        self._finished: deque[dict] = deque(maxlen=100)
        self.jobs = JobTable(config.data_dir / "jobs")
        self._runs: dict[str, tuple[JobRun, JobRecord]] = {}
        self._cancelled: set[str] = set()
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
    def run_job(self, extension: str, job: str, job_input: object, detach: bool = False,
                resume: JobRecord | None = None) -> dict:
        """Run a job (or the next attempt of `resume`, from its checkpoint). `detach` returns its id at once;
        otherwise the summary when it ends."""
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
            if resume is not None and resume.id in self._runs:
                raise RpcError(-32602, f"job {resume.id} is already running")
            self._in_flight[extension] = self._in_flight.get(extension, 0) + 1
            run = self.host.new_run(ext, job, resume.id if resume else None)
            job_id = run.run_id
            if resume is None:
                record = JobRecord(job_id, extension, job, job_input)
            else:
                record = attrs.evolve(resume, status="running", interrupted_by="", attempts=resume.attempts + 1,
                                      finished=None, error="")
            self._running[job_id] = {"id": job_id, "extension": extension, "job": job, "started": time.time()}
            self._runs[job_id] = (run, record)
        self.jobs.save(record)
        if detach:
            threading.Thread(target=self._execute, args=(ext, run, record), name=f"capengine-job-{job_id}",
                             daemon=True).start()
            return {"id": job_id, "status": "running", "attempt": record.attempts}
        return self._execute(ext, run, record)

    def _execute(self, ext: Extension, run: JobRun, record: JobRecord) -> dict:
        job_id, extension = run.run_id, ext.id
        try:
            result, calls = self.host.run_job(ext, run.job, json.dumps(record.input).encode(), run)
            # Saved before the job leaves _running: shutdown waits for _running, so the record is on disk
            # before the process exits.
            # A new record: the live one stays as it was while jobs.status may still add this attempt's counters.
            interrupted_by = ("cancel" if job_id in self._cancelled else "shutdown") \
                if result.status == "interrupted" else ""
            final = attrs.evolve(record, status=result.status, finished=time.time(), error=result.error,
                                 interrupted_by=interrupted_by, progress=run.progress, message=run.message,
                                 items=record.items + run.items, bytes=record.bytes + run.bytes,
                                 warnings=(record.warnings + run.warnings)[-100:])
            self.jobs.save(final)
        finally:
            with self._jobs_lock:
                self._in_flight[extension] -= 1
                info = self._running.pop(job_id)
                self._runs.pop(job_id, None)
                self._cancelled.discard(job_id)
        summary = {**info, "status": result.status, "code": result.code, "error": result.error,
                   "attempt": final.attempts, "progress": run.snapshot(),
                   "calls": [{"operation": c.operation, "path": c.path, "code": c.code, "rules": list(c.rules)}
                             for c in calls],
                   "calls_dropped": calls.dropped,
                   "logs": [{"level": level, "message": text} for level, text in result.logs]}
        self._finished.append({k: summary[k] for k in ("id", "extension", "job", "status", "started")})
        return summary

    # control interface ------------------------------------------------------------------------------
    def handle(self, method: str, params: dict) -> object:
        if method == "jobs.run":
            return self.run_job(params.get("extension"), params.get("job"), params.get("input", {}),
                                bool(params.get("detach")))
        if method == "jobs.status":
            return self.job_status(self._job_id(params))
        if method == "jobs.cancel":
            return self.cancel_job(self._job_id(params))
        if method == "jobs.resume":
            record = self.jobs.get(self._job_id(params))
            if record is None:
                raise RpcError(-32602, f"no job {params.get('id')!r}")
            if record.status not in ("interrupted", "failed"):
                raise RpcError(-32602, f"job {record.id} is {record.status}; only an interrupted or failed job "
                                       "can be resumed")
            return self.run_job(record.extension, record.job, record.input, bool(params.get("detach")), record)
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

    @staticmethod
    def _job_id(params: dict) -> str:
        job_id = params.get("id")
        if not isinstance(job_id, str) or not re.fullmatch(r"[0-9a-f]{8,64}", job_id):
            raise RpcError(-32602, "id must be a job id (hex), as jobs.run returned it")
        return job_id

    def job_status(self, job_id: str) -> dict:
        """A running job's live progress (its record plus this attempt's counters), else its last record."""
        with self._jobs_lock:
            live = self._runs.get(job_id)
        if live is not None:
            run, record = live
            snap = run.snapshot()
            return {**record.public(), "progress": snap["progress"], "message": snap["message"],
                    "items": record.items + snap["items"], "bytes": record.bytes + snap["bytes"],
                    "warnings": (record.warnings + snap["warnings"])[-100:],
                    "interrupt_requested": snap["interrupt_requested"]}
        stored = self.jobs.get(job_id)
        if stored is None:
            raise RpcError(-32602, f"no job {job_id}")
        return stored.public()

    def cancel_job(self, job_id: str) -> dict:
        """Ask a running job to stop: job.interrupted turns true; a well-behaved guest checkpoints and returns
        (status "interrupted", resumable with jobs.resume). A guest that ignores it runs to its CPU limit."""
        with self._jobs_lock:
            live = self._runs.get(job_id)
            if live is None:
                raise RpcError(-32602, f"job {job_id} is not running")
            self._cancelled.add(job_id)
        live[0].interrupt()
        return {"id": job_id, "status": "cancelling"}

    def _resume_interrupted(self) -> None:
        for record in self.jobs.to_resume_after_restart():
            try:
                self.run_job(record.extension, record.job, record.input, detach=True, resume=record)
                log.info("resumed job %s (%s/%s), attempt %d", record.id, record.extension, record.job,
                         record.attempts + 1)
            except RpcError as exc:
                log.error("cannot resume job %s: %s", record.id, exc.message)

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
        if self.config.resume_interrupted:
            self._resume_interrupted()

    def stop(self) -> None:
        """Graceful: stop accepting, interrupt running jobs, flush the decision log, remove the socket."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._jobs_lock:  # first ask: a guest that checks job.interrupted checkpoints and returns
            runs = [run for run, _ in self._runs.values()]
        for run in runs:
            run.interrupt()
        grace = time.monotonic() + self.config.shutdown_grace
        while self._running and time.monotonic() < grace:
            time.sleep(0.01)
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
