"""The daemon: policies checked at startup (fail closed), extensions hosted, jobs served over a Unix socket.

This module wires the parts together; each idea lives in its own module: config (what it is told),
policy_source + reload (settled, coalesced hot reload), socket_server + rpc (the control socket and its
protocol), jobs (admission), decision_log, metrics, supervisor (threads that cannot die silently), notify
(systemd readiness). Control methods: jobs.run, jobs.list, extensions.list, policies.status,
policies.reload, decisions.tail, health.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path

import attrs

from capengine.daemon import extension_check, rpc
from capengine.daemon.client import call
from capengine.daemon.config import DaemonConfig, DaemonError, check_directories
from capengine.daemon.decision_log import DecisionLog, rfc3339
from capengine.daemon.jobs import Admission
from capengine.daemon.metrics import Metrics
from capengine.daemon.notify import sd_notify
from capengine.daemon.reload import PolicyManager, PolicyStatus
from capengine.daemon.rpc import RpcError, param
from capengine.daemon.socket_server import ControlServer
from capengine.daemon.supervisor import Supervisor
from capengine.errors import CapengineError
from capengine.host.envelope import CallRecord
from capengine.host.extension_host import Host
from capengine.host.installed import load_installed
from capengine.host.manifests import Extension
from capengine.policy.check import run_check
from capengine.policy.engine import PolicySet

__all__ = ["Daemon", "DaemonConfig", "DaemonError", "PolicyStatus", "RpcError", "call", "check_policies"]

log = logging.getLogger("capengine.daemon.server")


def _operation_names() -> list[str]:
    from capengine.host.operations import default_registry

    return default_registry().names()


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        check_directories(config)
        self.config = config
        self._stopped = threading.Event()
        self._stopping = False
        operations = _operation_names()
        self.metrics = Metrics(set(operations), set())
        self.policies = PolicyManager(config.policies, operations, self._swap, config.settle_interval,
                                      lambda ok: self.metrics.reloads.labels("ok" if ok else "failed").inc())
        try:  # also makes the data dir private (0700) before anything below writes to it
            installed, broken = load_installed(config.extensions, config.data_dir)
        except CapengineError as exc:
            raise DaemonError(f"refusing to start: {exc}") from None
        self.decisions = DecisionLog(config.data_dir / "decisions.jsonl", config.log_max_bytes, config.log_keep,
                                     config.log_mask, config.log_high_water, config.log_fsync_interval)
        try:
            self.host = Host(self.policies.policy_set, config.data_dir, config.limits, on_call=self._on_call,
                             require_installed=True, admit=self.decisions.admit)
        except (CapengineError, OSError) as exc:
            self.decisions.close()
            raise DaemonError(f"refusing to start: {exc}") from None
        self.extensions, validation = extension_check.validate(list(installed.values()), self.host.runtime,
                                                               operations)
        self.broken_extensions = broken + validation
        for problem in self.broken_extensions:
            log.error("extension not loaded: %s", problem)
        self.metrics.extensions.update(self.extensions)
        self.admission = Admission(config.max_jobs_per_extension, config.max_queued_per_extension,
                                   config.queue_timeout)
        self._jobs_lock = threading.Lock()
        self._running: dict[str, dict] = {}
        self._finished: deque[dict] = deque(maxlen=100)
        self.supervisor = Supervisor(self._stopped)
        self._server: ControlServer | None = None
        self.metrics.gauges(lambda: self.admission.counts()["running"], lambda: self.admission.counts()["queued"],
                            lambda: self.decisions.state().backlog, lambda: self.decisions.admit() is None,
                            lambda: self.policies.status.loaded_at)

    @property
    def status(self) -> PolicyStatus:
        return self.policies.status

    def _swap(self, policy_set: PolicySet) -> None:
        self.host.swap_policies(policy_set)

    def _on_call(self, call_record: CallRecord) -> None:
        self.metrics.observe(call_record)
        self.decisions.record(call_record)

    # policies ----------------------------------------------------------------------------------
    def reload(self, accept_removals: bool = False) -> dict:
        """Coalesced with every other pending request; returns the outcome of a reload that read the files
        after this call was made."""
        if self._server is None:  # not started: no reloader thread yet
            return self.policies.reload_now(accept_removals)
        return self.policies.reload(accept_removals)

    def request_reload(self) -> None:
        """Non-blocking (SIGHUP): storms coalesce into one reload after the current one."""
        self.policies.request()

    # jobs ----------------------------------------------------------------------------------------
    def run_job(self, extension: str, job: str, job_input: object, wait: float | None = None) -> dict:
        ext = self.extensions.get(extension)
        if ext is None:
            raise RpcError(rpc.INVALID_PARAMS, f"no extension {extension!r} (see extensions.list)")
        if not isinstance(job_input, dict):
            raise RpcError(rpc.INVALID_PARAMS, "input must be a JSON object")
        if self._stopped.is_set() or self._stopping:
            raise RpcError(rpc.SHUTTING_DOWN, "the daemon is shutting down")
        refusal = self.decisions.admit()
        if refusal is not None:
            self.metrics.jobs_rejected.labels("decision_log").inc()
            raise RpcError(rpc.LOG_UNAVAILABLE, f"{refusal} (RESOURCE_EXHAUSTED)", {"retry_after_ms": 1000})
        try:
            with self.admission.slot(extension, wait):
                if self._stopping:
                    raise RpcError(rpc.SHUTTING_DOWN, "the daemon is shutting down")
                return self._run(ext, job, job_input)
        except RpcError as exc:
            if exc.code == rpc.OVERLOADED:
                if self._stopping:  # a waiter woken by the stop
                    raise RpcError(rpc.SHUTTING_DOWN, "the daemon is shutting down") from None
                self.metrics.jobs_rejected.labels("overload").inc()
            raise

    def _run(self, ext: Extension, job: str, job_input: dict) -> dict:
        job_id = os.urandom(8).hex()
        info = {"id": job_id, "extension": ext.id, "job": job, "started": rfc3339(time.time())}
        with self._jobs_lock:
            self._running[job_id] = info
        try:
            result, calls = self.host.run_job(ext, job, json.dumps(job_input).encode())
        finally:
            with self._jobs_lock:
                self._running.pop(job_id)
        self.metrics.jobs.labels(result.status).inc()
        summary = {**info, "status": result.status, "code": result.code, "error": result.error,
                   "calls": [{"operation": c.operation, "path": c.path, "code": c.code, "rules": list(c.rules)}
                             for c in calls],
                   "calls_dropped": calls.dropped,
                   "logs": [{"level": level, "message": text} for level, text in result.logs]}
        with self._jobs_lock:
            self._finished.append({k: summary[k] for k in ("id", "extension", "job", "status", "started")})
        return summary

    # control interface ------------------------------------------------------------------------------
    def handle(self, method: str, params: dict) -> object:
        if method == "jobs.run":
            wait_ms = param(params, "wait_ms", int, None, "how long to wait for a job slot")
            return self.run_job(param(params, "extension", str), param(params, "job", str, what="the job's name"),
                                param(params, "input", dict, {}), None if wait_ms is None else max(0, wait_ms) / 1000)
        if method == "jobs.list":
            with self._jobs_lock:
                return {"running": list(self._running.values()), "finished": list(self._finished)}
        if method == "extensions.list":
            return {"extensions": [{"id": e.id, "name": e.name, "version": e.version, "jobs": list(e.jobs),
                                    "operations": list(e.operations)} for e in self.extensions.values()],
                    "broken": self.broken_extensions}
        if method == "policies.status":
            return self._policy_status()
        if method == "policies.reload":
            return self.reload(param(params, "accept_removals", bool, False))
        if method == "decisions.tail":
            count = param(params, "count", int, 20)
            if not 0 <= count <= 10_000:
                raise RpcError(rpc.INVALID_PARAMS, "count must be between 0 and 10000")
            return {"decisions": self.decisions.tail(count)}
        if method == "health":
            return self.health()
        raise RpcError(rpc.METHOD_NOT_FOUND, f"no method {method!r}")

    def _policy_status(self) -> dict:
        status = attrs.asdict(self.policies.status)
        status["loaded_at"] = rfc3339(status["loaded_at"])
        status["last_error"] = list(status["last_error"])
        status["decision_log"] = attrs.asdict(self.decisions.state())
        return status

    def health(self) -> dict:
        """Everything an operator needs to tell a healthy daemon from a degraded one."""
        status = self.policies.status
        log_state = self.decisions.state()
        threads = self.supervisor.states()
        degraded = [] if log_state.state == "ok" else [f"decision log {log_state.state}: {log_state.last_error}"]
        degraded += [f"thread {name} is not running" for name, t in threads.items() if not t["alive"]]
        if status.last_error:
            degraded.append("the last policy reload was rejected")
        server = self._server
        return {
            "status": "stopping" if self._stopping else ("degraded" if degraded else "ok"),
            "problems": degraded,
            "policy": {"revision": status.revision, "files": status.files, "root": status.root,
                       "loaded_at": rfc3339(status.loaded_at), "age_seconds": round(time.time() - status.loaded_at, 3),
                       "last_reload_error": list(status.last_error), "reloads_ok": self.policies.reloads_ok,
                       "reloads_failed": self.policies.reloads_failed},
            "decision_log": attrs.asdict(log_state),
            "threads": threads,
            "jobs": self.admission.counts(),
            "connections": server.connections if server else 0,
            "extensions": {"loaded": len(self.extensions), "broken": len(self.broken_extensions)},
        }

    def answer(self, line: bytes) -> bytes | None:
        return rpc.answer(line, self.handle)

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the 0600 socket, start the supervised threads, and tell systemd we are ready."""
        path = self.config.socket
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                raise DaemonError(f"another daemon is listening on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale socket from a crashed daemon
            except OSError as exc:
                raise DaemonError(f"cannot use {path}: {exc}") from None
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.config.metrics_port is not None:  # before the socket: a busy port must not leave a socket behind
            try:
                self.metrics.serve_http(self.config.metrics_port)
            except OSError as exc:
                raise DaemonError(f"cannot serve metrics on 127.0.0.1:{self.config.metrics_port}: {exc}") from None
        server = ControlServer(path, self.answer, is_job=lambda line: b'"jobs.run"' in line,
                               max_connections=self.config.max_connections, max_line=self.config.max_line_bytes,
                               idle_timeout=self.config.idle_timeout, control_workers=self.config.control_workers,
                               job_workers=self.config.job_workers)
        try:
            server.bind()
        except OSError as exc:
            raise DaemonError(f"cannot listen on {path}: {exc}") from None
        self._server = server
        sup = self.supervisor
        sup.run("control", server.serve)
        sup.run("reloader", partial(self.policies.run_reloader, self._stopped))
        if self.config.watch_interval > 0:
            sup.run("watcher", partial(self.policies.run_watcher, self._stopped, self.config.watch_interval))
        sup.watch("decision-log", self.decisions.writer_alive, self.decisions.start)
        if self.config.metrics_textfile is not None:
            sup.run("metrics-textfile", partial(self.metrics.run_textfile, self.config.metrics_textfile,
                                                self._stopped))
        sd_notify(f"READY=1\nSTATUS=serving on {path} (policy revision {self.status.revision})\nMAINPID={os.getpid()}")
        log.info("serving on %s (policy revision %s)", path, self.status.revision)

    def stop(self) -> None:
        """Graceful: stop accepting, interrupt running jobs, deliver every reply in flight, flush the decision
        log, remove the socket. Bounded by drain_timeout (plus the log's own bound on a failing disk)."""
        if self._stopping:
            return
        self._stopping = True
        sd_notify("STOPPING=1")
        server = self._server
        if server is not None:
            server.stop_accepting()
        self.admission.wake_all()
        self.host.runtime.interrupt_all()
        deadline = time.monotonic() + self.config.drain_timeout
        while self._running and time.monotonic() < deadline:
            self.host.runtime.interrupt_all()
            time.sleep(0.01)
        if server is not None:
            server.shutdown(max(0.1, deadline - time.monotonic()))
        self._stopped.set()
        self.supervisor.join()
        if server is not None:
            server.close()
        self.decisions.close()
        self.metrics.close()
        self.host.close()
        with contextlib.suppress(OSError):
            self.config.socket.unlink(missing_ok=True)
        log.info("stopped")


def check_policies(directory: Path, operations: list[str]) -> tuple[PolicySet | None, list[str], int]:
    """The same findings `capengine check` reports; a set only when none is an error (start-up benchmark)."""
    outcome = run_check([directory], operations=operations)
    errors = [str(f) for f in outcome.findings if f.severity == "error"]
    files = sum(1 for f in outcome.load.files if f.policies)
    return (None if errors else outcome.policy_set), errors, files
