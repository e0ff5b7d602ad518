"""What the daemon is told at start, and the checks that make a bad start an error instead of a quiet failure."""

from __future__ import annotations

from pathlib import Path

import attrs

from capengine.daemon.decision_log import DEFAULT_MASK
from capengine.daemon.job_table import Retention
from capengine.errors import CapengineError
from capengine.host.runtime import Limits


class DaemonError(CapengineError):
    """The daemon cannot start (policy errors, socket in use, missing directory); the message says why."""


def _positive(_: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class DaemonConfig:
    policies: Path = attrs.field(converter=Path)
    extensions: Path = attrs.field(converter=Path)
    data_dir: Path = attrs.field(converter=Path)
    socket: Path = attrs.field(converter=Path)
    limits: Limits = Limits()
    max_jobs_per_extension: int = attrs.field(default=2, validator=_positive)
    # jobs.run beyond max_jobs_per_extension waits (up to queue_timeout seconds) among at most max_queued others
    max_queued_per_extension: int = attrs.field(default=64, validator=attrs.validators.ge(0))
    queue_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    watch_interval: float = 1.0  # inotify watch; seconds between identity checks (polls without inotify); 0: off
    settle_interval: float = attrs.field(default=0.05, validator=_positive)  # between the two reads of a reload
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    log_mask: tuple[str, ...] = DEFAULT_MASK  # arg names whose values the decision log replaces with "***"
    log_high_water: int = attrs.field(default=100_000, validator=_positive)
    log_fsync_interval: float = attrs.field(default=1.0, validator=_positive)
    max_connections: int = attrs.field(default=512, validator=_positive)
    max_line_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    control_workers: int = attrs.field(default=4, validator=_positive)  # threads for methods other than jobs.run
    job_workers: int = attrs.field(default=64, validator=_positive)  # threads running or queueing jobs.run
    drain_timeout: float = 10.0  # seconds a stop waits for in-flight replies
    metrics_port: int | None = None  # loopback HTTP port for Prometheus; None: off
    metrics_textfile: Path | None = None  # node_exporter textfile; None: off
    resume_interrupted: bool = False  # on start, resume the jobs a shutdown (or a crash) interrupted
    # seconds running jobs get at shutdown to see job.interrupted, checkpoint and return before they are stopped
    shutdown_grace: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    # 0: jobs run on threads in the daemon's process (one core: the GIL). N > 0: in N worker processes
    # (worker_pool), each with its own Engine and policy set; limits, the log and reloads stay single.
    workers: int = attrs.field(default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])
    # finished job records (and their checkpoints) kept: the newest `keep`, none older than `max_age` seconds
    job_retention: Retention = Retention()


def check_directories(config: DaemonConfig) -> None:
    """Refuse to serve from directories that are not there: a typo must not give a daemon with no extensions."""
    for flag, path in (("--policies", config.policies), ("--extensions", config.extensions)):
        if not path.is_dir():
            raise DaemonError(f"{flag} {path} is not a directory; pass the directory that holds them")
