"""The daemon's pool of job worker processes (`workers = N`): jobs run on all cores, guarantees stay single.

Each worker (worker_process) has its own Engine and policy set; what must be one stays one: the rate-limit
buckets (a table in shared memory every worker maps, shared_buckets), admission (before a job reaches a
worker), the decision log (every record a worker sends is handed to the one writer), and the revision (a reload
is two-phase: every live worker loads the new set and says so, then the daemon commits by one write to the
shared table that every call reads; any "no", death or timeout aborts it everywhere; a worker that did not
answer in time is killed and replaced, and a reload refused only for such worker trouble is retried by the
reloader once the pool is whole: WorkerTrouble).

A worker that dies (a crash, kill -9, the OOM killer) fails its job with the reason (resumable from its last
checkpoint, never hanging its client) and is replaced by the maintainer thread; records it sent before dying
are in the socket and are all read before the EOF that tells of its death; an action whose handler it was
running (its "begin" read, its record not) is recorded here as OUTCOME_UNKNOWN. A worker that is alive but
stuck (past its job's bound, or not reading its socket) is killed and replaced the same way: no daemon thread
ever waits on a worker without a bound.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from capengine.daemon.config import DaemonError
from capengine.daemon.decision_log import SYNC_WAIT, DecisionLog
from capengine.daemon.metrics import Metrics
from capengine.daemon.reload import RetryLater
from capengine.daemon.shared_buckets import SharedBuckets, TableError
from capengine.daemon.worker_process import HEARTBEAT, WorkerSetup
from capengine.host.envelope import CallRecord
from capengine.host.extension_host import CallRecords
from capengine.host.job_run import JobRun
from capengine.host.manifests import Extension
from capengine.host.runtime import JobResult

log = logging.getLogger("capengine.daemon.worker_pool")
TICK = 0.02  # seconds between the maintainer's checks (decision log admission, dead workers)
LINGER = 0.001  # seconds the reader waits after a record line: one wake-up per batch, not per record
RESTART_BACKOFF = 1.0  # seconds after a worker failed to start before the next attempt
SEND_TIMEOUT = 10.0  # seconds a message to a worker may wait for room in its socket before the worker is killed
HANG_GRACE = 30.0  # seconds past a job's wall-clock bound before its worker is taken for hung and killed
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"  # recorded (never sent) for an action whose worker died in its handler
PREPARE_TIMEOUT = 120.0  # seconds a worker may take to load a reload's set; then a silent one is killed
SILENT = 3 * HEARTBEAT  # seconds without a "still loading" after which a preparing worker is taken for stopped
_NO_ANSWER = object()


class WorkerTrouble(RetryLater):
    """A reload refused only because a worker process died, did not answer or was killed, never because one
    could not load the set: nothing is wrong with the set, so the reloader tries it again once the pool is
    whole (`ready`), instead of leaving the daemon on the old revision until an operator notices."""


@attrs.define(eq=False)
class _Job:
    run: JobRun
    ext: Extension
    calls: CallRecords = attrs.field(factory=CallRecords)
    done: threading.Event = attrs.field(factory=threading.Event)
    result: JobResult | None = None


class _Frames:
    """Messages from a worker, read in bulk: one read(2) takes every message waiting (a 100-call job sends 100
    record lines), where Connection.recv makes two system calls, and a wake-up, per message. The framing is
    Connection.send's: a 4-byte big-endian length (-1, then 8 bytes, above 2 GiB), then the pickle."""

    CHUNK = 1 << 18

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.at = fd, b"", 0

    def _need(self, count: int) -> None:
        while len(self.buffer) - self.at < count:
            chunk = os.read(self.fd, max(self.CHUNK, count))
            if not chunk:
                raise EOFError
            self.buffer = self.buffer[self.at:] + chunk
            self.at = 0

    def empty(self) -> bool:
        return self.at == len(self.buffer)

    def recv(self) -> Any:
        self._need(4)
        (size,) = struct.unpack_from("!i", self.buffer, self.at)
        self.at += 4
        if size == -1:
            self._need(8)
            (size,) = struct.unpack_from("!Q", self.buffer, self.at)
            self.at += 8
        self._need(size)
        message = pickle.loads(memoryview(self.buffer)[self.at:self.at + size])
        self.at += size
        return message


class CallSummary(NamedTuple):
    """A call as a job's reply lists it (the full record went to the decision log when the call was made)."""

    operation: str
    path: str
    code: str
    rules: tuple[str, ...]


def _frame(message: object) -> bytes:
    """A message as Connection.send frames it (what the worker's Connection.recv reads)."""
    payload = ForkingPickler.dumps(message)
    size = len(payload)
    header = struct.pack("!i", size) if size <= 0x7FFFFFFF else struct.pack("!iQ", -1, size)
    return header + bytes(payload)


class _Worker:
    def __init__(self, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.proc, self.sock = proc, sock
        self.alive = True
        self.job: _Job | None = None
        self.revision = ""
        self.broken: str | None = None
        self.ready = threading.Event()
        self.admitted = False  # taking jobs (a member of the pool), not only started
        self.heard = 0.0  # time.monotonic() of its last "still loading" during a reload's prepare
        self.prepared: dict[int, str | None] = {}  # reload ticket -> None (loaded) or why not
        self._send_lock = threading.Lock()
        self.reader: threading.Thread | None = None
        # The record of the action whose handler is running (its "begin"), until that call's own record arrives:
        # if the worker dies in between, the daemon records the call itself, its outcome unknown.
        self.in_effect: dict | None = None
        self.killed_because: str | None = None  # why the daemon killed it (hung past its job's bound, stuck)

    def send(self, message: object) -> None:
        """Best effort, and bounded: a dead worker's send fails (its reader thread reports the death); a worker
        that reads nothing for SEND_TIMEOUT seconds while its socket is full (SIGSTOP, a wedged reader) is
        killed, so that no daemon thread (a reload holding the reload lock, the maintainer, a stop) ever blocks
        on it. A message cut short by the timeout is never completed: the worker is dead by then."""
        data = memoryview(_frame(message))
        with self._send_lock:
            if self.killed_because is not None:
                return
            deadline = time.monotonic() + SEND_TIMEOUT
            poller = select.poll()
            with contextlib.suppress(OSError, ValueError):
                poller.register(self.sock, select.POLLOUT)
            while data:
                try:
                    data = data[self.sock.send(data, socket.MSG_DONTWAIT):]
                    deadline = time.monotonic() + SEND_TIMEOUT  # it reads: a large message may take long
                    continue
                except BlockingIOError:
                    pass
                except OSError:  # the worker is gone (EPIPE) or the socket closed: the reader reports it
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill(f"it took no message from the daemon for {SEND_TIMEOUT:g} s (stopped or wedged)")
                    return
                poller.poll(min(left, 1.0) * 1000)

    def kill(self, why: str) -> None:
        """SIGKILL, with the reason its job's failure and the log give."""
        self.killed_because = why
        log.error("worker process %d: %s; killing it", self.proc.pid, why)
        with contextlib.suppress(OSError):
            self.proc.kill()


def _apply(run: JobRun, state: dict) -> None:
    for name, value in state.items():
        setattr(run, name, value)


class WorkerPool:
    def __init__(self, size: int, setup: WorkerSetup, log: DecisionLog, metrics: Metrics,
                 startup_timeout: float = 120.0) -> None:
        self.size, self._setup = size, setup
        self._on_line, self._admit = log.record_line, log.admit
        self._log, self._metrics = log, metrics
        self._on_metrics, self._on_restart = metrics.observe_many, metrics.worker_restarts.inc
        self.buckets = SharedBuckets.create()
        self.startup_timeout = startup_timeout
        self.outage_timeout = 30.0  # seconds a job waits while no worker is alive at all, then fails
        self.hang_grace = HANG_GRACE
        self.prepare_timeout = PREPARE_TIMEOUT
        self._lock = threading.Condition()
        self._reload_lock = threading.Lock()  # spawning and switching revisions never interleave
        self._workers: list[_Worker] = []
        self._idle: collections.deque[_Worker] = collections.deque()
        self._starting: set[_Worker] = set()  # replacements started, not yet admitted (stop kills them)
        self._stopping = False
        self._refusal: str | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self._maintainer: threading.Thread | None = None
        self._tickets = itertools.count(1)  # one per reload attempt: a late answer never counts for another

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """All workers up and on the daemon's revision, or DaemonError (and none left running)."""
        starting: list[_Worker] = []
        try:
            with self._reload_lock:
                for _ in range(self.size):
                    starting.append(self._spawn())
                for worker in starting:
                    self._admit_worker(worker)
        except DaemonError:
            for worker in starting:  # also those spawned but not yet admitted
                self._kill(worker)
            self.stop(5.0)
            raise
        self._maintainer = threading.Thread(target=self._maintain, name="capengine-worker-pool", daemon=True)
        self._maintainer.start()

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        ours.set_inheritable(False)
        fds = (theirs.fileno(), self.buckets.fd)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "capengine.daemon.worker_process", *map(str, fds)],
                                    pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=_env())
        except OSError as exc:
            ours.close()
            raise DaemonError(f"cannot start a worker process: {exc}") from None
        finally:
            theirs.close()
        worker = _Worker(proc, ours)
        worker.send(self._setup)  # the first message is the setup itself; a failure shows as EOF
        worker.reader = threading.Thread(target=self._read, args=(worker,), name=f"capengine-worker-{proc.pid}",
                                         daemon=True)
        worker.reader.start()
        return worker

    def _admit_worker(self, worker: _Worker) -> None:
        """Wait for the worker to say it is ready, then give it jobs (caller holds the reload lock)."""
        self._wait_ready(worker)
        self._take(worker)

    def _wait_ready(self, worker: _Worker) -> None:
        if not worker.ready.wait(self.startup_timeout) or worker.broken is not None or not worker.alive:
            why = worker.broken or ("it exited with status " + str(worker.proc.poll()) if not worker.alive
                                    else f"not ready after {self.startup_timeout:g} s")
            self._kill(worker)
            raise DaemonError(f"worker process {worker.proc.pid} did not start: {why}")

    def _take(self, worker: _Worker) -> None:
        worker.send(("admit", self._refusal))
        with self._lock:
            if self._stopping:
                worker.send(("stop",))
                return
            worker.admitted = True
            self._workers.append(worker)
            self._idle.append(worker)
            self._lock.notify_all()

    def _replace(self) -> None:
        """Start one worker on the current revision. The reload lock is not held while it starts (up to
        startup_timeout): a replacement that hangs at start must not hold up every reload. It is admitted only
        if no reload committed meanwhile; otherwise it is on a set no longer active, so it is stopped and the
        next round starts one on the new revision. Starting one and reloading still never interleave."""
        with self._reload_lock:
            if self._stopping:
                return
            setup = self._setup
            worker = self._spawn()
        with self._lock:
            self._starting.add(worker)
        try:
            self._wait_ready(worker)
            with self._reload_lock:
                if self._setup is setup:
                    self._take(worker)
                    return
            log.info("worker process %d started on a revision a reload replaced meanwhile; starting another",
                     worker.proc.pid)
            worker.send(("stop",))
        finally:
            with self._lock:
                self._starting.discard(worker)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(10)

    def _maintain(self) -> None:
        """Replace dead workers (with the current revision) and push the decision log's admission to all."""
        while not self._stopping:
            refusal = self._admit()
            if refusal != self._refusal:
                self._refusal = refusal
                for worker in self.live():
                    worker.send(("admit", refusal))
            if len(self.live()) < self.size:
                try:
                    self._replace()
                except DaemonError as exc:
                    if self._stopping:  # killed by the stop while it started
                        return
                    self.last_error = str(exc)
                    log.error("%s; retrying in %g s", exc, RESTART_BACKOFF)
                    time.sleep(RESTART_BACKOFF)
                continue
            time.sleep(TICK)

    def live(self) -> list[_Worker]:
        with self._lock:
            return [w for w in self._workers if w.alive]

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: each worker finishes its job (the daemon has interrupted them) and exits; after `timeout`
        the rest are killed. Every record they sent has been read when this returns."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers)
            starting = list(self._starting)
            self._lock.notify_all()
        for worker in starting:  # not on the socket's last revision, and maybe hung: nothing to drain
            worker.kill("the daemon is stopping while it starts")
        for worker in workers:
            worker.send(("stop",))
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in %g s; killing it", worker.proc.pid, timeout)
                self._kill(worker)
            if worker.reader is not None:
                worker.reader.join(5.0)
        if self._maintainer is not None:
            self._maintainer.join(5.0)
        self.buckets.close()

    # the reader thread of one worker ---------------------------------------------------------------------------
    def _read(self, worker: _Worker) -> None:
        frames = _Frames(worker.sock.fileno())
        try:
            while True:
                message = frames.recv()
                kind = message[0]
                if kind == "line":
                    worker.in_effect = None
                    self._on_line(message[1])
                    if len(message) > 2:  # an allowed effect's: its guest waits until the record is in the file
                        self._log.flush(SYNC_WAIT, unless_failing=True)
                        worker.send(("written",))
                    elif frames.empty():  # a job is streaming records: let a few more arrive, read them at once
                        time.sleep(LINGER)
                elif kind == "begin":
                    worker.in_effect = message[1]
                elif kind == "call":  # refused because of the log: the log counts it, metrics observe it
                    worker.in_effect = None
                    record = CallRecord(*message[1])
                    self._metrics.observe(record)
                    self._log.record(record)
                elif kind == "metrics":
                    self._on_metrics(message[1], message[2])
                elif kind in ("progress", "done"):
                    job = worker.job
                    if job is not None and job.run.run_id == message[1]:
                        _apply(job.run, message[-1])
                        if kind == "done":
                            _, _, job.result, calls, job.calls.dropped, counts, durations, _ = message
                            job.calls.extend(CallSummary(*c) for c in calls)
                            self._on_metrics(counts, durations)
                            job.done.set()
                elif kind == "preparing":
                    worker.heard = time.monotonic()
                elif kind == "prepared":
                    with self._lock:
                        worker.prepared[message[1]] = message[2]
                        self._lock.notify_all()
                elif kind == "ready":
                    worker.revision = message[1]
                    worker.ready.set()
                elif kind == "broken":
                    worker.broken = message[1]
                    worker.ready.set()
        except (EOFError, OSError):
            pass
        if not frames.empty():
            log.error("worker process %d died in the middle of a message: %d bytes of it are dropped (a call "
                      "record cut short is the call whose handler had run, recorded as %s when it was an action)",
                      worker.proc.pid, len(frames.buffer) - frames.at, OUTCOME_UNKNOWN)
        self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        """The worker's socket closed: it exited or died. Its job (if any) fails with the reason."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(10)
        status = worker.proc.returncode
        with self._lock:
            worker.alive = False
            job, worker.job = worker.job, None
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            with contextlib.suppress(ValueError):
                self._workers.remove(worker)
            replaced = not self._stopping and worker.admitted
            if replaced:
                self.restarts += 1
            self._lock.notify_all()
        if replaced:
            self._on_restart()
        worker.ready.set()
        with worker._send_lock, contextlib.suppress(OSError):
            worker.sock.close()
        how = f"killed by signal {-status}" if status is not None and status < 0 else f"exit status {status}"
        if worker.killed_because is not None:
            how = f"{how}: {worker.killed_because}"
        unknown = self._record_unknown(worker, how)
        if job is not None and not job.done.is_set():
            log.error("worker process %d died (%s) while running job %s (%s/%s)", worker.proc.pid, how,
                      job.run.run_id, job.ext.id, job.run.job)
            during = "" if unknown is None else \
                f" during a call to {unknown.operation}, whose outcome is unknown (recorded as {OUTCOME_UNKNOWN})"
            job.result = JobResult(job.ext.id, job.run.job, "failed", None,
                                   f"the worker process running the job died ({how}){during}; the job can be "
                                   "resumed from its last checkpoint (jobs.resume)", ())
            if unknown is not None:
                job.calls.append(CallSummary(unknown.operation, unknown.path, unknown.code, unknown.rules))
            job.done.set()
        elif replaced:
            log.error("worker process %d died (%s); replacing it", worker.proc.pid, how)

    def _record_unknown(self, worker: _Worker, how: str) -> CallRecord | None:
        """The action whose handler was running when the worker died: allowed, and its effect may have happened,
        so it is recorded here (by the one writer), with the code OUTCOME_UNKNOWN, instead of being lost."""
        begun, worker.in_effect = worker.in_effect, None
        if begun is None:
            return None
        record = CallRecord(**begun, code=OUTCOME_UNKNOWN, message=f"the worker process died ({how}) while the "
                            "operation's handler ran: its effect may or may not have happened", duration_us=0)
        self._metrics.observe(record)
        self._log.record(record)
        return record

    # jobs -------------------------------------------------------------------------------------------------------
    def run(self, ext: Extension, run: JobRun, input_json: bytes, namespace: str) -> tuple[JobResult, CallRecords]:
        """Run one attempt on the next free worker (waiting for one); the result comes back even if the
        worker dies meanwhile."""
        job = _Job(run, ext)
        none_alive_since: float | None = None
        with self._lock:
            while True:
                if self._stopping:
                    return JobResult(ext.id, run.job, "interrupted", None, "the daemon is shutting down", ()), job.calls
                if self._idle:
                    worker = self._idle.popleft()
                    if worker.alive:
                        break
                if any(w.alive for w in self._workers):  # all busy: wait as long as it takes, as for a thread
                    none_alive_since = None
                elif none_alive_since is None:
                    none_alive_since = time.monotonic()
                elif time.monotonic() - none_alive_since > self.outage_timeout:  # never hang the client
                    return JobResult(ext.id, run.job, "failed", None, "no worker process could be started for "
                                     f"{self.outage_timeout:g} s (see health: workers.last_error)", ()), job.calls
                self._lock.wait(0.5)
            worker.job = job
        worker.send(("job", run.run_id, ext, run.job, input_json, namespace))
        if run.interrupted:  # cancelled (or the daemon stopping) while it waited for a worker
            worker.send(("interrupt", run.run_id, False))
        self._watch(worker, job)
        with self._lock:
            if worker.alive and worker.job is job:
                worker.job = None
                self._idle.append(worker)
                self._lock.notify_all()
        assert job.result is not None
        return job.result, job.calls

    def _watch(self, worker: _Worker, job: _Job) -> None:
        """Wait for the job; a worker that has not finished it within the job's wall-clock bound (the guest is
        interrupted at cpu_seconds, handlers included) plus `hang_grace` is stopped (SIGSTOP), wedged or
        starved: it is killed, so its job fails and its client gets an answer, and it is replaced."""
        bound = self._setup.limits.cpu_seconds + self.hang_grace
        if not job.done.wait(bound):
            worker.kill(f"it had not finished the job {bound:g} s after it started (the job's wall-clock bound "
                        f"is {self._setup.limits.cpu_seconds:g} s)")
            job.done.wait()

    def interrupt(self, job_id: str, force: bool = False) -> None:
        for worker in self.live():
            job = worker.job
            if job is not None and job.run.run_id == job_id:
                worker.send(("interrupt", job_id, force))

    def interrupt_all(self) -> None:
        """Shutdown, after the grace: every running guest is stopped now."""
        for worker in self.live():
            worker.send(("interrupt", "", True))

    # reload -------------------------------------------------------------------------------------------------------
    def switch(self, revision: str, files: tuple[tuple[str, str], ...], activate: Callable[[], None],
               keep: frozenset[int] = frozenset(), timeout: float | None = None) -> None:
        """Two-phase: every live worker loads the set and acknowledges; only then `activate()` (the daemon's own
        swap) and commit everywhere. Any refusal, death or timeout aborts it everywhere: DaemonError, or
        WorkerTrouble when no worker said "no" (one died or did not answer), which the reloader retries once the
        pool is whole again. A worker that has not answered within `timeout` (prepare_timeout) and has fallen
        silent (no "still loading" for SILENT seconds) is stopped (SIGSTOP) or hung: it is killed (its job fails
        as a dead worker's does) and replaced, so one stalled process cannot refuse every reload for ever; one
        still loading is alive and slow, a "no" (DaemonError): killing it, or retrying, would only repeat."""
        timeout = self.prepare_timeout if timeout is None else timeout
        with self._reload_lock:
            ticket = next(self._tickets)
            workers = self.live()
            for worker in workers:
                worker.send(("prepare", ticket, revision, files))
            deadline = time.monotonic() + timeout
            with self._lock:
                def answered() -> bool:
                    return all(ticket in w.prepared or not w.alive for w in workers)
                self._lock.wait_for(answered, max(0.0, deadline - time.monotonic()))
                if any(ticket not in w.prepared and w.alive and time.monotonic() - w.heard < SILENT for w in workers):
                    # stopped after its last word, or still loading: its silence (or not) will tell
                    self._lock.wait_for(answered, SILENT)
                answers = {w: w.prepared.get(ticket, _NO_ANSWER) for w in workers}
                for w in workers:
                    w.prepared.clear()
                stopping = self._stopping
            problems, refused = [], False
            for w, answer in answers.items():
                if answer is None:
                    continue
                if isinstance(answer, str):
                    refused = True
                    problems.append(f"worker {w.proc.pid}: {answer}")
                elif w.alive and time.monotonic() - w.heard < SILENT:  # alive, slow to compile: a "no"
                    refused = True
                    problems.append(f"worker {w.proc.pid}: still loading the set after {timeout:g} s (alive; the "
                                    "set takes longer to compile than a reload may wait)")
                elif w.alive and w.killed_because is None:
                    w.kill(f"it did not answer a reload's prepare in {timeout:g} s (stopped or hung)")
                    problems.append(f"worker {w.proc.pid}: no answer in {timeout:g} s (killed; it is being replaced)")
                else:
                    why = f" ({w.killed_because})" if w.killed_because else ""
                    problems.append(f"worker {w.proc.pid}: died{why}")
            if problems or stopping:
                for worker in workers:
                    worker.send(("abort", ticket))
                if stopping:
                    raise DaemonError("the daemon is stopping, so no worker switched")
                message = ("the worker processes could not all load the new set, so none switched: "
                           + "; ".join(problems))
                raise DaemonError(message) if refused else WorkerTrouble(message, self.whole)
            activate()
            self._setup = attrs.evolve(self._setup, revision=revision, files=files, epoch=ticket)  # replacements
            self.buckets.set_epoch(ticket)  # the commit instant: every worker's next call decides under the new set
            for worker in workers:
                worker.send(("commit", ticket))
                worker.revision = revision
            try:  # the limits of the new and the previous revision keep their buckets
                self.buckets.compact(keep)
            except TableError as exc:  # only memory is lost: the dropped limits' slots stay taken until next time
                log.error("could not drop the buckets of removed limits after the reload: %s", exc)

    def whole(self) -> bool:
        """Every worker up and taking jobs (no replacement pending): when a reload refused for worker trouble
        is worth trying again."""
        with self._lock:
            return not self._stopping and sum(w.alive for w in self._workers) >= self.size

    def state(self) -> dict:
        with self._lock:
            workers = [w for w in self._workers if w.alive]
            return {"size": self.size, "alive": len(workers), "busy": sum(w.job is not None for w in workers),
                    "restarts": self.restarts, "pids": [w.proc.pid for w in workers],
                    "revisions": sorted({w.revision for w in workers}), "last_error": self.last_error,
                    "running": {str(w.proc.pid): w.job.run.run_id for w in workers if w.job is not None}}


def _env() -> dict[str, str]:
    """The daemon's environment, with the directory this capengine was imported from first on the path: a
    worker runs exactly the daemon's code, whatever the working directory or the installed version."""
    import capengine

    root = str(Path(capengine.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}


def default_size() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
