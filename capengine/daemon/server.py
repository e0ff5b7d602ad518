"""The daemon: policies checked at startup (fail closed), extensions hosted, jobs served over a Unix socket.

This module wires the parts together; each idea lives in its own module: config (what it is told),
policy_source + reload (settled, coalesced hot reload), socket_server + rpc (the control socket and its
protocol), jobs (admission), job_table (jobs persisted, so they can be resumed), decision_log, metrics,
supervisor (threads that cannot die silently), notify (systemd readiness). Control methods: jobs.run,
jobs.status, jobs.cancel, jobs.resume, jobs.list, extensions.list, policies.status, policies.reload,
decisions.tail, health.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import stat
import threading
import time
from collections import deque
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import attrs

from capengine.daemon import extension_check, rpc
from capengine.daemon.client import call
from capengine.daemon.config import DaemonConfig, DaemonError, check_directories
from capengine.daemon.decision_log import SYNC_WAIT, DecisionLog, rfc3339
from capengine.daemon.instance_lock import InstanceLock
from capengine.daemon.job_table import JobRecord, JobTable
from capengine.daemon.jobs import Admission
from capengine.daemon.metrics import Metrics
from capengine.daemon.notify import sd_notify
from capengine.daemon.reload import PolicyManager, PolicyStatus
from capengine.daemon.rpc import RpcError, param
from capengine.daemon.shared_buckets import limit_keys
from capengine.daemon.socket_server import ControlServer
from capengine.daemon.supervisor import Supervisor
from capengine.daemon.worker_pool import WorkerPool
from capengine.daemon.worker_process import WorkerSetup
from capengine.errors import CapengineError
from capengine.host.checkpoints import CheckpointStore
from capengine.host.envelope import CallRecord
from capengine.host.extension_host import CallRecords, Host
from capengine.host.installed import load_installed
from capengine.host.job_run import JobRun
from capengine.host.manifests import Extension
from capengine.host.runtime import JobResult
from capengine.policy.check import run_check
from capengine.policy.engine import PolicySet

__all__ = ["Daemon", "DaemonConfig", "DaemonError", "PolicyStatus", "RpcError", "call", "check_policies"]

log = logging.getLogger("capengine.daemon.server")
_JOB_ID = re.compile(r"[0-9a-f]{8,64}")
# may wait long (for a job slot and the job; for a reload stuck on a stalled worker): the job worker pool, so that
# the control threads stay free for health and the other quick methods
JOB_METHODS = (b'"jobs.run"', b'"jobs.resume"', b'"policies.reload"')


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
        # before anything writes to the data directory (the decision log's writer repairs the log's tail)
        self._locks = [InstanceLock(config.data_dir, f"the data directory {config.data_dir}", directory=True)]
        self.decisions = DecisionLog(config.data_dir / "decisions.jsonl", config.log_max_bytes, config.log_keep,
                                     config.log_mask, config.log_high_water, config.log_fsync_interval)
        try:
            self.host = Host(self.policies.policy_set, config.data_dir, config.limits, on_call=self._on_call,
                             require_installed=True, admit=self.decisions.admit)
        except (CapengineError, OSError) as exc:
            self.decisions.close()
            self._release()
            raise DaemonError(f"refusing to start: {exc}") from None
        self._effects = self.host.registry.effects()  # not batched: the guest goes on once the record is written
        self.extensions, validation = extension_check.validate(list(installed.values()), self.host.runtime,
                                                               operations)
        self.broken_extensions = broken + validation
        for problem in self.broken_extensions:
            log.error("extension not loaded: %s", problem)
        self.metrics.extensions.update(self.extensions)
        self.admission = Admission(config.max_jobs_per_extension, config.max_queued_per_extension,
                                   config.queue_timeout)
        self._jobs_lock = threading.Lock()
        self._pruning = threading.Lock()
        self._running: dict[str, dict] = {}
        self._finished: deque[dict] = deque(maxlen=100)
        self.jobs = JobTable(config.data_dir / "jobs", config.job_retention, CheckpointStore(config.data_dir))
        self._runs: dict[str, tuple[JobRun, JobRecord]] = {}  # running jobs: the live run and its record
        self._cancelled: set[str] = set()
        self.supervisor = Supervisor(self._stopped)
        self._server: ControlServer | None = None
        self.pool: WorkerPool | None = None  # workers > 0: jobs run in that many worker processes (worker_pool)
        self.metrics.gauges(lambda: self.admission.counts()["running"], lambda: self.admission.counts()["queued"],
                            lambda: self.decisions.state().backlog, lambda: self.decisions.admit() is None,
                            lambda: self.policies.status.loaded_at)

    @property
    def status(self) -> PolicyStatus:
        return self.policies.status

    def _swap(self, policy_set: PolicySet) -> None:
        """In-process: one reference assignment. With worker processes: two-phase (WorkerPool.switch); a
        DaemonError means no worker and not this process switched (the reload is reported rejected)."""
        if self.pool is None:
            self.host.swap_policies(policy_set)
            return
        incoming = self.policies.incoming
        assert incoming is not None and incoming.outcome.policy_set is policy_set
        keep = limit_keys(policy_set.policies) | limit_keys(self.host.policy_set.policies)
        self.pool.switch(policy_set.revision, _files(incoming.outcome.load.files),
                         partial(self.host.swap_policies, policy_set), keep)

    def _execute(self, ext: Extension, run: JobRun, record: JobRecord) -> tuple[JobResult, CallRecords]:
        input_json = json.dumps(record.input).encode()
        if self.pool is None:
            return self.host.run_job(ext, run.job, input_json, run)
        return self.pool.run(ext, run, input_json, run.extension)

    def _on_call(self, call_record: CallRecord) -> None:
        self.metrics.observe(call_record)
        self.decisions.record(call_record)
        if call_record.allowed and call_record.operation in self._effects:
            self.decisions.flush(SYNC_WAIT, unless_failing=True)

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
    def run_job(self, extension: str, job: str, job_input: object, wait: float | None = None, detach: bool = False,
                resume: JobRecord | None = None) -> dict:
        """Run a job (or the next attempt of `resume`, from its checkpoint) once a job slot is free. `detach`
        returns `{id, status: "running"}` as soon as it has its slot; otherwise the summary when it ends."""
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
        slot = ExitStack()
        try:
            slot.enter_context(self.admission.slot(extension, wait))
            with slot:
                if self._stopping:
                    raise RpcError(rpc.SHUTTING_DOWN, "the daemon is shutting down")
                run, record = self._start(ext, job, job_input, resume)
                if not detach:
                    return self._run(ext, run, record)
                held = slot.pop_all()  # the slot passes to the job's thread, which releases it when the job ends
            self._detach(held, ext, run, record)
            return {"id": run.run_id, "status": "running", "attempt": record.attempts}
        except RpcError as exc:
            if exc.code == rpc.OVERLOADED:
                if self._stopping:  # a waiter woken by the stop
                    raise RpcError(rpc.SHUTTING_DOWN, "the daemon is shutting down") from None
                self.metrics.jobs_rejected.labels("overload").inc()
            raise

    def _start(self, ext: Extension, job: str, job_input: dict, resume: JobRecord | None) -> tuple[JobRun, JobRecord]:
        """The run (its id is the job's id; its checkpoints are keyed by the extension's namespace) and the
        record of this attempt, saved as "running" so that a crash leaves it resumable."""
        run = self.host.new_run(ext, job, resume.id if resume is not None else None)
        with self._jobs_lock:
            if resume is None:
                record = JobRecord(run.run_id, ext.id, job, job_input)
            else:  # checked again now that it has a slot: a twin request may have resumed (even finished) it
                current = self._resumable(resume.id)
                record = attrs.evolve(current, status="running", interrupted_by="", attempts=current.attempts + 1,
                                      finished=None, error="")
            self._runs[run.run_id] = (run, record)
            self._running[run.run_id] = {"id": run.run_id, "extension": ext.id, "job": job,
                                         "started": rfc3339(time.time()), "attempt": record.attempts}
        self.jobs.save(record)
        return run, record

    def _detach(self, slot: ExitStack, ext: Extension, run: JobRun, record: JobRecord) -> None:
        try:
            threading.Thread(target=self._run_detached, args=(slot, ext, run, record),
                             name=f"capengine-job-{run.run_id}", daemon=True).start()
        except RuntimeError:  # no thread to be had: give everything back; the record stays resumable
            with self._jobs_lock:
                self._running.pop(run.run_id, None)
                self._runs.pop(run.run_id, None)
            slot.close()
            self.jobs.save(attrs.evolve(record, status="failed", error="the daemon could not start a thread for it"))
            raise RpcError(rpc.OVERLOADED, "the daemon cannot start another job thread; retry later",
                           {"retry_after_ms": 1000}) from None

    def _run_detached(self, slot: ExitStack, ext: Extension, run: JobRun, record: JobRecord) -> None:
        with slot:
            try:
                self._run(ext, run, record)
            except Exception:  # noqa: BLE001 - a detached job has no caller to report to: the log is it
                log.exception("job %s (%s/%s) failed inside the daemon", run.run_id, ext.id, run.job)

    def _run(self, ext: Extension, run: JobRun, record: JobRecord) -> dict:
        job_id = run.run_id
        try:
            result, calls = self._execute(ext, run, record)
            # The job's records are in the file before its end is saved or told (docs/daemon.md, Durability).
            self.decisions.flush(SYNC_WAIT, unless_failing=True)
            # Saved before the job leaves _running (a stop waits for _running to empty, so the record is on disk
            # before the process exits), as a new record: jobs.status may still be adding up the live one.
            interrupted_by = ("cancel" if job_id in self._cancelled else "shutdown") \
                if result.status == "interrupted" else ""
            final = attrs.evolve(record, status=result.status, finished=time.time(), error=result.error,
                                 interrupted_by=interrupted_by, progress=run.progress, message=run.message,
                                 items=record.items + run.items, bytes=record.bytes + run.bytes,
                                 warnings=(record.warnings + run.warnings)[-100:])
            self.jobs.save(final)
        finally:
            with self._jobs_lock:
                info = self._running.pop(job_id)
                self._runs.pop(job_id, None)
                self._cancelled.discard(job_id)
        if self.jobs.due(final):
            self._prune_jobs()
        self.metrics.jobs.labels(result.status).inc()
        summary = {**info, "status": result.status, "code": result.code, "error": result.error,
                   "progress": run.snapshot(),
                   "calls": [{"operation": c.operation, "path": c.path, "code": c.code, "rules": list(c.rules)}
                             for c in calls],
                   "calls_dropped": calls.dropped,
                   "logs": [{"level": level, "message": text} for level, text in result.logs]}
        with self._jobs_lock:
            self._finished.append({k: summary[k] for k in ("id", "extension", "job", "status", "started", "attempt")})
        return summary

    @staticmethod
    def _job_id(params: dict) -> str:
        job_id = param(params, "id", str, what="the job id jobs.run returned")
        if not _JOB_ID.fullmatch(job_id):
            raise RpcError(rpc.INVALID_PARAMS, "parameter 'id' must be a job id (hex), as jobs.run returned it")
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
            raise RpcError(rpc.INVALID_PARAMS, f"no job {job_id}")
        return stored.public()

    def cancel_job(self, job_id: str) -> dict:
        """Ask a running job to stop: job.interrupted turns true; a well-behaved guest checkpoints and returns
        (status "interrupted", resumable with jobs.resume). A guest that ignores it runs to its CPU limit."""
        with self._jobs_lock:
            live = self._runs.get(job_id)
            if live is None:
                raise RpcError(rpc.INVALID_PARAMS, f"job {job_id} is not running")
            self._cancelled.add(job_id)
        live[0].interrupt()
        if self.pool is not None:
            self.pool.interrupt(job_id)
        return {"id": job_id, "status": "cancelling"}

    def resume_job(self, job_id: str, wait: float | None = None, detach: bool = False) -> dict:
        """The next attempt of an interrupted or failed job (or one a crashed daemon left "running"), from its last
        checkpoint."""
        with self._jobs_lock:
            record = self._resumable(job_id)
        return self.run_job(record.extension, record.job, record.input, wait, detach, record)

    def _resumable(self, job_id: str) -> JobRecord:
        """The job's record as it is on disk now, if it may be resumed (call with the jobs lock held)."""
        record = self.jobs.get(job_id)
        if record is None:
            raise RpcError(rpc.INVALID_PARAMS, f"no job {job_id}")
        if job_id in self._runs:
            raise RpcError(rpc.INVALID_PARAMS, f"job {job_id} is already running")
        # "running" on disk but not here: the daemon that ran it died (a crash), which interrupted it too
        if record.status not in ("interrupted", "failed", "running"):
            raise RpcError(rpc.INVALID_PARAMS, f"job {record.id} is {record.status}; only an interrupted or failed "
                                               "job can be resumed")
        return record

    def _prune_jobs(self) -> None:
        """One prune at a time, in its own thread (a job's reply does not wait for it); each record is removed
        under the jobs lock, so no job starts or resumes from a record while it may be going (JobTable.prune)."""
        if not self._pruning.acquire(blocking=False):
            return

        def prune() -> None:
            try:
                self.jobs.prune(self._runs, self._jobs_lock)
            finally:
                self._pruning.release()
        try:
            threading.Thread(target=prune, name="capengine-prune-jobs", daemon=True).start()
        except RuntimeError:  # no thread to be had now: the next finished job tries again
            self._pruning.release()

    def _resume_interrupted(self) -> None:
        """--resume-interrupted: each job a shutdown interrupted (or a crash left "running") waits for a slot in
        its own thread, so start-up never blocks on them; one that cannot resume stays resumable by hand."""
        def resume(record: JobRecord) -> None:
            try:
                self.run_job(record.extension, record.job, record.input, resume=record)
            except RpcError as exc:
                log.error("cannot resume job %s (%s/%s): %s", record.id, record.extension, record.job, exc.message)

        for record in self.jobs.to_resume_after_restart():
            log.info("resuming job %s (%s/%s), attempt %d", record.id, record.extension, record.job,
                     record.attempts + 1)
            threading.Thread(target=resume, args=(record,), name=f"capengine-resume-{record.id}", daemon=True).start()

    # control interface ------------------------------------------------------------------------------
    def handle(self, method: str, params: dict) -> object:
        if method == "jobs.run":
            return self.run_job(param(params, "extension", str), param(params, "job", str, what="the job's name"),
                                param(params, "input", dict, {}), self._wait(params),
                                param(params, "detach", bool, False, "return the job id at once"))
        if method == "jobs.status":
            return self.job_status(self._job_id(params))
        if method == "jobs.cancel":
            return self.cancel_job(self._job_id(params))
        if method == "jobs.resume":
            return self.resume_job(self._job_id(params), self._wait(params),
                                   param(params, "detach", bool, False, "return the job id at once"))
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

    @staticmethod
    def _wait(params: dict) -> float | None:
        wait_ms = param(params, "wait_ms", int, None, "how long to wait for a job slot")
        return None if wait_ms is None else max(0, wait_ms) / 1000

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
        if self.pool is not None and len(self.pool.live()) < self.pool.size:
            degraded.append(f"{len(self.pool.live())} of {self.pool.size} worker processes running")
        if status.last_error:
            degraded.append("the last policy reload was rejected")
        server = self._server
        return {
            "status": "stopping" if self._stopping else ("degraded" if degraded else "ok"),
            "problems": degraded,
            "policy": {"revision": status.revision, "files": status.files, "root": status.root,
                       "loaded_at": rfc3339(status.loaded_at), "age_seconds": round(time.time() - status.loaded_at, 3),
                       "last_reload_error": list(status.last_error), "reload_retry": status.retrying,
                       "reloads_ok": self.policies.reloads_ok,
                       "reloads_failed": self.policies.reloads_failed},
            "decision_log": attrs.asdict(log_state),
            "threads": threads,
            "jobs": self.admission.counts(),
            **({"workers": self.pool.state()} if self.pool is not None else {}),
            "connections": server.connections if server else 0,
            "extensions": {"loaded": len(self.extensions), "broken": len(self.broken_extensions)},
        }

    def answer(self, line: bytes) -> bytes | None:
        return rpc.answer(line, self.handle)

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the 0600 socket, start the supervised threads, and tell systemd we are ready. A start that fails
        leaves no process behind (workers, the decision-log writer) and never touches another daemon's socket."""
        try:
            self._bring_up()
        except BaseException:
            if self.pool is not None:
                self.pool.stop(5.0)
                self.pool = None
            self.decisions.close()
            raise

    def _bring_up(self) -> None:
        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.parent != self.config.data_dir:  # two starts on one socket: the probe and the unlink are atomic
            self._locks.append(InstanceLock(path.with_name(path.name + ".lock"), f"the socket {path}"))
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISSOCK(mode):  # connect() to it fails like a stale socket: never unlink
            raise DaemonError(f"{path} exists and is not a socket; move it away or choose another --socket")
        if mode is not None:
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
        if self.config.workers > 0 and self.pool is None:  # before the socket: clients find a daemon that can run
            self._start_pool()
        server = self._listen(path)
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
        self._prune_jobs()
        if self.config.resume_interrupted:
            self._resume_interrupted()

    def _listen(self, path: Path) -> ControlServer:
        """The metrics port (if any), then the bound control socket; DaemonError naming what is in the way."""
        if self.config.metrics_port is not None:  # before the socket: a busy port must not leave a socket behind
            try:
                self.metrics.serve_http(self.config.metrics_port)
            except OSError as exc:
                raise DaemonError(f"cannot serve metrics on 127.0.0.1:{self.config.metrics_port}: {exc}") from None
        server = ControlServer(path, self.answer, is_job=lambda line: any(m in line for m in JOB_METHODS),
                               max_connections=self.config.max_connections, max_line=self.config.max_line_bytes,
                               idle_timeout=self.config.idle_timeout, control_workers=self.config.control_workers,
                               job_workers=self.config.job_workers)
        try:
            server.bind()
        except OSError as exc:
            raise DaemonError(f"cannot listen on {path}: {exc}") from None
        return server

    def _start_pool(self) -> None:
        """The worker processes, each on the active revision; DaemonError when they cannot all start."""
        good = self.policies.good
        setup = WorkerSetup(self.config.data_dir, self.config.limits, good.outcome.policy_set.revision,
                            _files(good.outcome.load.files), os.getpid(), self.decisions.mask)
        pool = WorkerPool(self.config.workers, setup, self.decisions, self.metrics)
        pool.outage_timeout = self.config.queue_timeout
        pool.start()
        self.pool = pool
        self.metrics.worker_gauge(lambda: len(pool.live()))

    def _interrupt_all(self) -> None:
        """Stop every running guest now (after the shutdown grace)."""
        self.host.runtime.interrupt_all()
        if self.pool is not None:
            self.pool.interrupt_all()

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
        with self._jobs_lock:  # first ask: a guest that checks job.interrupted checkpoints and returns
            runs = [run for run, _ in self._runs.values()]
        for run in runs:
            run.interrupt()
            if self.pool is not None:
                self.pool.interrupt(run.run_id)
        grace = time.monotonic() + self.config.shutdown_grace
        while self._running and time.monotonic() < grace:
            time.sleep(0.01)
        self._interrupt_all()
        deadline = time.monotonic() + self.config.drain_timeout
        while self._running and time.monotonic() < deadline:
            self._interrupt_all()
            time.sleep(0.01)
        if server is not None:
            server.shutdown(max(0.1, deadline - time.monotonic()))
        if self.pool is not None:  # before the log closes: every record a worker sent is read first
            self.pool.stop(max(1.0, deadline - time.monotonic()))
        self._stopped.set()
        self.supervisor.join()
        if server is not None:
            server.close()
        self.decisions.close()
        self.metrics.close()
        self.host.close()
        with contextlib.suppress(OSError):
            self.config.socket.unlink(missing_ok=True)
        self._release()
        log.info("stopped")

    def _release(self) -> None:
        for lock in self._locks:
            lock.release()


def _files(files: list) -> tuple[tuple[str, str], ...]:
    """(path, text) of each loaded policy file: what a worker compiles the same set from."""
    return tuple((f.path, f.text) for f in files)


def check_policies(directory: Path, operations: list[str]) -> tuple[PolicySet | None, list[str], int]:
    """The same findings `capengine check` reports; a set only when none is an error (start-up benchmark)."""
    outcome = run_check([directory], operations=operations)
    errors = [str(f) for f in outcome.findings if f.severity == "error"]
    files = sum(1 for f in outcome.load.files if f.policies)
    return (None if errors else outcome.policy_set), errors, files
