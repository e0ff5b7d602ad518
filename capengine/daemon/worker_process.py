"""One job worker process of the daemon's pool (`workers = N`): runs jobs with its own wasmtime Engine and its
own copy of the policy set, and sends every decision record, its metrics and results to the daemon.

Why a separate interpreter per worker: jobs on threads share one GIL, so the daemon used one core. Why it is
started with `python -m capengine.daemon.worker_process` (a fresh exec, not a fork): a wasmtime Engine, its
epoch thread and the daemon's own threads (and the locks they may hold) are never inherited; nothing but the
socket given on the command line crosses over (see docs/daemon.md, "Worker processes").

The daemon stays the one authority for everything that must be exact or single across workers:
- rate limits: the buckets are in shared memory every worker maps (shared_buckets), taken under one lock;
- the per-extension in-flight limit: admission happens in the daemon before a job reaches a worker;
- the decision log: each record is written to the socket before the call returns to the guest, so it is in
  the kernel (and reaches the one writer) even if this process is killed the next instant;
- reloads: a new set is loaded and acknowledged ("prepare"), and activated at the commit, which is the epoch
  word in the shared table (WorkerHost.active): one instant for every worker;
- effects: an allowed action's record (without its outcome) is sent before its handler runs ("begin"), so a
  worker killed after the effect and before the record leaves the call recorded (OUTCOME_UNKNOWN) by the daemon;
  and the guest goes on only once the daemon says the call's own record is written (a daemon killed then has it).
The process dies with the daemon (PR_SET_PDEATHSIG, and EOF on the socket) and ignores SIGTERM/SIGINT: the
daemon drains it (systemd sends SIGTERM to the whole control group).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import logging
import operator
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import attrs

from capengine.daemon.decision_log import SYNC_WAIT, encode_call, refused_by_log
from capengine.daemon.gil_sharing import sharing_the_gil
from capengine.daemon.shared_buckets import Entry, SharedBuckets
from capengine.host.checkpoints import CheckpointStore
from capengine.host.dispatcher import ActivePolicies
from capengine.host.envelope import CallRecord, ErrorCode
from capengine.host.extension_host import MAX_CALL_RECORDS, Host
from capengine.host.job_run import JobRun
from capengine.host.manifests import Extension
from capengine.host.rate_limiter import RateLimiter
from capengine.host.runtime import JobResult, Limits
from capengine.policy.engine import PolicySet
from capengine.policy.loader import LoadResult, load_paths, load_text_cached

log = logging.getLogger("capengine.daemon.worker")
PROGRESS_INTERVAL = 0.05  # seconds between progress reports of one job (jobs.status reads them)
METRICS_INTERVAL = 1.0  # seconds between metrics reports of a long job (otherwise sent when it ends)
HEARTBEAT = 1.0  # seconds between "still loading" messages while a reload's set compiles
PR_SET_PDEATHSIG = 1
record_fields = operator.attrgetter(*(a.name for a in attrs.fields(CallRecord)))  # CallRecord(*fields) rebuilds it


@attrs.frozen
class WorkerSetup:
    """What a worker is told when it starts (the first message on its socket)."""

    data_dir: Path
    limits: Limits
    revision: str
    files: tuple[tuple[str, str], ...]  # (path, text) of every policy file of the active set
    parent: int  # the daemon's pid: a worker whose parent is gone exits
    mask: frozenset[str] = frozenset()  # the decision log's: records are encoded here, as the log would
    epoch: int = 0  # the reload commit `files` belong to (the epoch word of the shared table, WorkerHost)


def policy_set_from_texts(files: tuple[tuple[str, str], ...], revision: str) -> PolicySet:
    """The set the daemon checked, compiled here from the same texts (compiled closures cannot be sent). The
    revision is a hash of the texts, so a mismatch means the texts were not the checked ones: refused."""
    catalog = load_paths([]).catalog  # the built-in operations plus $CAPENGINE_OPERATION_SCHEMAS, as the daemon
    result = LoadResult([], [], catalog)
    for path, text in files:
        loaded, findings = load_text_cached(path, text, catalog)  # a reload recompiles changed files only
        errors = [str(f) for f in findings if f.severity == "error"]
        if errors:
            raise ValueError("; ".join(errors))
        result.files.append(loaded)
    policy_set = PolicySet.from_load(result)
    if policy_set.revision != revision:
        raise ValueError(f"the texts compile to revision {policy_set.revision}, not {revision}")
    return policy_set


class SharedLimiter(RateLimiter):
    """The policy set's limits, with the buckets in shared memory (shared_buckets): which limits apply is
    known here; the tokens are taken under the lock every worker takes, so the counts stay exact."""

    def __init__(self, policy_set: PolicySet, buckets: SharedBuckets) -> None:
        super().__init__(policy_set.policies)
        self.buckets = buckets
        self.entries = tuple(Entry.of(s) for s in self.limits)

    def acquire(self, extension: str, operation: str, namespace: str | None = None) -> tuple[float, str | None]:
        which = self._which(extension, operation)
        if not which:
            return 0.0, None
        return self.buckets.acquire([self.entries[i] for i in which], extension if namespace is None else namespace,
                                    self.clock())


class WorkerHost(Host):
    """A Host whose rate-limit buckets are shared by every worker (see SharedLimiter), and whose policy set
    follows the daemon's commit instant: the epoch word in the shared table.

    Why the epoch and not only the "commit" message: messages reach N workers at N different moments (a busy
    reader thread, a stopped process), so after a reload returned a worker could still decide calls under the
    old set. The daemon commits by writing the reload's ticket into the table (one write); every call reads it
    first (about 0.2 us) and a worker that sees a newer ticket swaps in the set it prepared for it before
    deciding. So no call read the set after the commit and was decided under the old one, in any worker."""

    def __init__(self, buckets: SharedBuckets, epoch: int, *args: Any, **kwargs: Any) -> None:
        self.buckets = buckets  # before Host.__init__ builds the first limiter
        self.epoch = epoch  # the commit (reload ticket) the active set belongs to
        self.pending: dict[int, PolicySet] = {}  # prepared, not yet committed, by the reload's ticket
        self._switch_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _activate(self, policy_set: PolicySet) -> ActivePolicies:
        return ActivePolicies(policy_set, SharedLimiter(policy_set, self.buckets))

    def active(self) -> ActivePolicies:
        if self.buckets.epoch() != self.epoch:
            self.commit(self.buckets.epoch())
        return self._active

    def commit(self, ticket: int) -> None:
        """Switch to the set prepared for `ticket` (the daemon's commit), once, from whichever thread sees it
        first. A commit this worker did not prepare cannot be (the daemon commits only after every live worker
        said prepared): if it ever is, deciding under either set would be wrong, so the worker exits and the
        daemon fails its job and replaces it with one on the committed set."""
        with self._switch_lock:
            if ticket <= self.epoch:
                return
            policy_set = self.pending.get(ticket)
            if policy_set is None:
                log.critical("reload %d was committed but this worker never prepared it; exiting", ticket)
                os._exit(70)
            self._active = self._activate(policy_set)  # no buckets here to inherit: they are shared
            self.epoch = ticket
            for old in [t for t in self.pending if t <= ticket]:
                del self.pending[old]

    def abort(self, ticket: int) -> None:
        with self._switch_lock:
            self.pending.pop(ticket, None)

    def swap_policies(self, policy_set: PolicySet) -> None:
        self._active = self._activate(policy_set)


class Worker:
    def __init__(self, conn: Connection, buckets: SharedBuckets, setup: WorkerSetup) -> None:
        self.conn, self.setup = conn, setup
        self._send_lock = threading.Lock()
        self._jobs: queue.Queue[tuple | None] = queue.Queue()
        self._run: JobRun | None = None
        self._interrupted: set[str] = set()  # jobs asked to stop before (or while) they reached this worker
        self.refusal: str | None = None  # the daemon's decision log refusal, pushed when it changes
        self._calls = JobCalls()
        self._id_prefix = uuid.uuid4().hex[:24]  # call ids: unique per worker, like the log's own
        self._ids = itertools.count()
        policy_set = policy_set_from_texts(setup.files, setup.revision)
        self.host = WorkerHost(buckets, setup.epoch, policy_set, setup.data_dir, setup.limits, on_call=self._record,
                               require_installed=True, admit=lambda: self.refusal)
        self.host.before_effect = self._begin
        self._effects = self.host.registry.effects()
        self._written = threading.Event()  # the daemon's "written" for this worker's one effect in flight

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    # calls -------------------------------------------------------------------------------------------------
    def _record(self, record: CallRecord) -> None:
        """Before the call returns to the guest: its record line is in the socket (the kernel) when this returns.
        Metrics and the job's call list go with the job's end (or every METRICS_INTERVAL)."""
        if refused_by_log(record):  # the log counts these itself: sent whole (a tuple pickles in 1 us, attrs in 7)
            self.send(("call", record_fields(record)))
        else:
            call_id = f"{self._id_prefix}{next(self._ids):08x}"
            line = encode_call(time.time(), call_id, record, self.setup.mask)
            if record.allowed and record.operation in self._effects:
                self._written.clear()
                self.send(("line", line, "sync"))  # answered "written" once it is in the file (or the log fails)
                self._written.wait(SYNC_WAIT)
            else:
                self.send(("line", line))
            self._calls.observe(record)
            if self._calls.due():
                self.send(("metrics", *self._calls.take_metrics()))
        self._calls.keep(record)

    def _begin(self, record: dict[str, Any]) -> None:
        """An allowed action is about to run its handler: its record (without the outcome) is in the socket
        first. If this process dies before the call's own record is sent (even half-sent), the daemon records
        the call as OUTCOME_UNKNOWN: no effect without a record (docs/daemon.md)."""
        self.send(("begin", record))

    # the reader thread: everything the daemon sends ----------------------------------------------------------
    def read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "job":
                    self._jobs.put(message)
                elif kind == "interrupt":
                    self._interrupted.add(message[1])
                    run = self._run
                    if run is not None and run.run_id == message[1]:
                        run.interrupt()
                    if message[2]:  # force: the guest did not stop when asked (shutdown)
                        self.host.runtime.interrupt_all()
                elif kind == "admit":
                    self.refusal = message[1]
                elif kind == "written":
                    self._written.set()
                elif kind == "prepare":
                    threading.Thread(target=self._prepare, args=message[1:], daemon=True).start()
                elif kind == "commit":  # only ever after this worker said "prepared" for this ticket
                    self.host.commit(message[1])  # a worker between calls needs no call to notice
                elif kind == "abort":
                    self.host.abort(message[1])
                elif kind == "stop":
                    self._jobs.put(None)
        except (EOFError, OSError):  # the daemon is gone: nothing is left to report to
            os._exit(0)
        except BaseException:  # noqa: BLE001 - without its reader the worker would hang: die loudly instead
            log.exception("the worker's reader failed; exiting (the daemon fails the job and replaces the worker)")
            os._exit(70)

    def _prepare(self, ticket: int, revision: str, files: tuple[tuple[str, str], ...]) -> None:
        loading = threading.Event()
        threading.Thread(target=self._still_loading, args=(ticket, loading), daemon=True).start()
        try:
            with sharing_the_gil():  # the worker's job thread keeps getting the GIL while the set loads
                self.host.pending[ticket] = policy_set_from_texts(files, revision)
            error = None
        except Exception as exc:  # noqa: BLE001 - any failure is this worker's "no": the reload is aborted
            error = f"{type(exc).__name__}: {exc}"
        finally:
            loading.set()
        self.send(("prepared", ticket, error))

    def _still_loading(self, ticket: int, done: threading.Event) -> None:
        """Says "still loading" at once and every HEARTBEAT seconds until the prepare ends: the daemon kills a
        worker that does not answer a prepare in time only when it has been silent (stopped, hung), never one
        that is alive and slow to compile a large set."""
        while True:
            self.send(("preparing", ticket))
            if done.wait(HEARTBEAT):
                return

    # jobs (the main thread) -------------------------------------------------------------------------------
    def serve(self) -> None:
        self.send(("ready", self.host.policy_set.revision, os.getpid()))
        while True:
            message = self._jobs.get()
            if message is None:
                return
            self.run_one(*message[1:])

    def run_one(self, job_id: str, ext: Extension, job: str, input_json: bytes, namespace: str) -> None:
        run = JobRun(namespace, job, CheckpointStore(self.host.data_dir), job_id)
        run.on_change = _Progress(self.send)
        self._run = run
        self._calls = calls = JobCalls()
        if job_id in self._interrupted:  # a cancel that overtook the job
            run.interrupt()
        try:
            result, _ = self.host.run_job(ext, job, input_json, run)
        except Exception as exc:  # noqa: BLE001 - reported as the job's failure, the worker goes on
            log.exception("job %s failed inside the worker", job_id)
            result = JobResult(ext.id, job, "failed", None, f"internal error in the worker: {exc}", ())
        finally:
            self._run = None
            self._interrupted.discard(job_id)
        self.send(("done", job_id, result, calls.calls, calls.dropped, *calls.take_metrics(), _state(run)))


class JobCalls:
    """One job's calls as the daemon needs them besides the log: the summary its client gets (operation, path,
    code, rules; at most MAX_CALL_RECORDS) and the metrics (counts by extension, operation, outcome and whether
    rate-limited; durations), sent in bulk."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, tuple[str, ...]]] = []
        self.dropped = 0
        self.counts: collections.Counter[tuple[str, str, str, bool]] = collections.Counter()
        self.durations: list[int] = []
        self.sent = time.monotonic()

    def keep(self, record: CallRecord) -> None:
        if len(self.calls) < MAX_CALL_RECORDS:
            self.calls.append((record.operation, record.path, record.code, record.rules))
        else:
            self.dropped += 1

    def observe(self, record: CallRecord) -> None:
        outcome = ("allow" if record.allowed else "deny") if record.decided else "error"
        self.counts[(record.extension, record.operation, outcome, record.code == ErrorCode.RATE_LIMITED)] += 1
        self.durations.append(record.duration_us)

    def due(self) -> bool:
        return time.monotonic() - self.sent >= METRICS_INTERVAL

    def take_metrics(self) -> tuple[dict, list[int]]:
        counts, durations = dict(self.counts), self.durations
        self.counts, self.durations, self.sent = collections.Counter(), [], time.monotonic()
        return counts, durations


class _Progress:
    """Reports a job's progress to the daemon (for jobs.status), at most every PROGRESS_INTERVAL seconds."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self.send, self.last = send, 0.0

    def __call__(self, run: JobRun) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.send(("progress", run.run_id, _state(run)))


def _state(run: JobRun) -> dict:
    return {"progress": run.progress, "message": run.message, "items": run.items, "bytes": run.bytes,
            "warnings": list(run.warnings), "dropped_warnings": run.dropped_warnings,
            "checkpoints_saved": run.checkpoints_saved}


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon dies, however it dies (Linux); elsewhere the EOF on the socket does it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the daemon drains and stops its workers
    logging.basicConfig(level=logging.INFO, format="capengine worker %(process)d: %(levelname)s %(message)s")
    conn = Connection(socket.socket(fileno=int(argv[0])).detach())
    buckets = SharedBuckets(int(argv[1]))
    setup = conn.recv()
    _die_with_parent(setup.parent)
    try:
        worker = Worker(conn, buckets, setup)
    except Exception as exc:  # noqa: BLE001 - told to the daemon, which refuses to start or retries
        conn.send(("broken", f"{type(exc).__name__}: {exc}"))
        return 1
    threading.Thread(target=worker.read, name="capengine-worker-reader", daemon=True).start()
    worker.serve()
    worker.host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
