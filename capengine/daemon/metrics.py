"""Prometheus metrics (prometheus-client, a private registry per daemon), served opt-in.

Exposed on a loopback HTTP port (`--metrics-port`) or written atomically to a node_exporter textfile
(`--metrics-textfile`, every `TEXTFILE_INTERVAL` seconds). Label values come from the loaded extensions
and registered operations only (a guest inventing operation names cannot blow up the series count).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile

from capengine.host.envelope import CallRecord, ErrorCode

TEXTFILE_INTERVAL = 15.0
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class Metrics:
    def __init__(self, operations: set[str], extensions: set[str]) -> None:
        self.operations, self.extensions = operations, extensions
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter("capengine_decisions", "Host calls by extension, operation and outcome "
                                 "(allow, deny, error)", ["extension", "operation", "outcome"], registry=r)
        self.latency = Histogram("capengine_decision_duration_seconds", "Time a host call took in the host",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.rate_limited = Counter("capengine_rate_limited", "Calls refused by a rate limit",
                                    ["extension", "operation"], registry=r)
        self.jobs = Counter("capengine_jobs", "Finished jobs by status", ["status"], registry=r)
        self.jobs_rejected = Counter("capengine_jobs_rejected", "jobs.run refused (overload, log unavailable)",
                                     ["reason"], registry=r)
        self.reloads = Counter("capengine_policy_reloads", "Policy reloads by result", ["result"], registry=r)
        self.in_flight = Gauge("capengine_jobs_in_flight", "Jobs running", registry=r)
        self.queued = Gauge("capengine_jobs_queued", "jobs.run calls waiting for a slot", registry=r)
        self.log_backlog = Gauge("capengine_decision_log_backlog", "Decision records waiting to be written",
                                 registry=r)
        self.log_up = Gauge("capengine_decision_log_writable", "1 when the decision log can be written",
                            registry=r)
        self.policy_age = Gauge("capengine_policy_loaded_timestamp_seconds", "When the active set was loaded",
                                registry=r)
        self.workers = Gauge("capengine_worker_processes", "Job worker processes running (workers = N)", registry=r)
        self.worker_restarts = Counter("capengine_worker_restarts", "Job worker processes that died and were "
                                       "replaced", registry=r)
        self._server: object | None = None

    def observe(self, call: CallRecord) -> None:
        operation = call.operation if call.operation in self.operations else "other"
        extension = call.extension if call.extension in self.extensions else "other"
        outcome = ("allow" if call.allowed else "deny") if call.decided else "error"
        self.decisions.labels(extension, operation, outcome).inc()
        self.latency.observe(call.duration_us / 1e6)
        if call.code == ErrorCode.RATE_LIMITED:
            self.rate_limited.labels(extension, operation).inc()

    def observe_many(self, counts: dict[tuple[str, str, str, bool], int], durations: list[int]) -> None:
        """What observe() does, for a batch of calls a worker process made: counts by (extension, operation,
        outcome, rate-limited) and their durations in microseconds."""
        for (extension, operation, outcome, limited), count in counts.items():
            operation = operation if operation in self.operations else "other"
            extension = extension if extension in self.extensions else "other"
            self.decisions.labels(extension, operation, outcome).inc(count)
            if limited:
                self.rate_limited.labels(extension, operation).inc(count)
        for duration in durations:
            self.latency.observe(duration / 1e6)

    def gauges(self, running: Callable[[], int], queued: Callable[[], int], backlog: Callable[[], int],
               writable: Callable[[], bool], loaded_at: Callable[[], float]) -> None:
        self.in_flight.set_function(running)
        self.queued.set_function(queued)
        self.log_backlog.set_function(backlog)
        self.log_up.set_function(lambda: 1.0 if writable() else 0.0)
        self.policy_age.set_function(loaded_at)

    def worker_gauge(self, alive: Callable[[], int]) -> None:
        self.workers.set_function(alive)

    def serve_http(self, port: int) -> None:
        """Loopback only: metrics name files and extensions; they are not for the network."""
        self._server = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def run_textfile(self, path: Path, stopped: threading.Event) -> None:
        while True:
            write_to_textfile(str(path), self.registry)  # temp file + rename: never a torn read
            if stopped.wait(TEXTFILE_INTERVAL):
                write_to_textfile(str(path), self.registry)
                return

    def close(self) -> None:
        server = self._server
        if isinstance(server, tuple):
            server[0].shutdown()
