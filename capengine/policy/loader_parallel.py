"""Load policy files on several cores: the per-file work of a large `capengine check` in forked processes.

Reading, YAML, schema, typed args and CEL parse/check of one file depend on nothing but that file (and the
operation catalogue, fixed before loading), and they are three quarters of a 10,000-file check. So the files
are cut into contiguous chunks: the calling process loads the first, one forked child each of the others, and
the children send their results back through a pipe, pickled, to be put together in file order: the same
findings in the same order as one process. Cross-file checks, lint and the policy tests stay in the caller.

Fork only: a child inherits the loaded catalogue, the memos and the hash seed (set orders, hence findings, are
those of the parent), and nothing has to be imported again. Never from a process with other threads (a lock
held by one of them at the fork would stay held in the child for ever); then, and where fork does not exist,
and for small sets (forking and shipping back cost more than they save), everything is loaded in the calling
process. A child that fails for any reason (killed, out of memory, an exception) costs time, never results:
its chunk is loaded again in the calling process. Children end with os._exit (no atexit handlers, no second
flush of the caller's buffered output) and are killed and reaped if the caller is interrupted.
"""

from __future__ import annotations

import contextlib
import gc
import io
import operator
import os
import pickle
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, TypeVar, cast

import attrs

T = TypeVar("T")
R = TypeVar("R")

PROCESSES_ENV = "CAPENGINE_CHECK_PROCESSES"
"""How many processes a check may load files with: 1 forces one process (e.g. to compare, or to debug)."""
MIN_FILES_PER_PROCESS = 500
"""Below this many files per process, the fork and the transfer back cost more than the work they share."""
MAX_PROCESSES = 64
"""However many are asked for (CAPENGINE_CHECK_PROCESSES=100000 must not fork a process per file)."""


def processes_for(files: int, requested: int | None) -> int:
    """How many processes to load `files` files with. `requested`: a number of processes, used as given (tests
    fork for tiny sets); None: ${PROCESSES_ENV} if set, else the idle usable cores, at most one per
    MIN_FILES_PER_PROCESS files. 1 wherever forking is impossible or unsafe."""
    if requested is None:
        wanted = os.environ.get(PROCESSES_ENV, "").strip()
        if wanted:
            requested = int(wanted) if wanted.isdigit() else 1  # a malformed value never fails a check
        else:
            requested = min(_idle_cores(), files // MIN_FILES_PER_PROCESS)
    if requested <= 1 or files < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
        return 1
    return min(requested, files, MAX_PROCESSES)


def _idle_cores() -> int:
    """The usable cores that other work leaves idle, this process's included. On a busy machine a second
    process gains little wall time and costs everyone CPU (two processes of the check competing with others
    for the same cores measured up to a third more CPU time in all)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity masks
        cores = os.cpu_count() or 1
    return max(1, cores - int(_busy()))


LOADAVG = "/proc/loadavg"


def _busy() -> float:
    """How many cores other processes keep busy: the processes running now besides this one (Linux's run
    queue, field 4 of /proc/loadavg: the 1-minute load average would still count the previous `check`), else
    the 1-minute load average, else none."""
    try:
        with open(LOADAVG, encoding="ascii") as file:
            return max(0, int(file.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (or none on this platform): count every core idle
        return 0.0


def map_chunks(work: Callable[[Sequence[T]], list[R]], items: Sequence[T], processes: int,
               reducers: Mapping[type, Callable[[Any], tuple[Any, ...]]]) -> list[R]:
    """`work(items)` computed on `processes` processes: the same list, in the same order. Each child runs
    `work` on its chunk and pickles the result with `reducers` (a pickle dispatch table: type -> reduction),
    which must make it picklable and should make it compact."""
    if processes <= 1 or len(items) < 2:
        return work(items)
    bounds = _bounds(len(items), processes)
    # The first item first, here: what every process would set up once (the parser's tables, the compiled
    # schema validators, memos) is then set up once, before the fork, and inherited.
    results = work(items[:1])
    children: list[_Child[T]] = []
    try:
        for start, end in bounds[1:]:
            children.append(_Child.fork(work, items[start:end], reducers))
        results.extend(work(items[1:bounds[0][1]]))
        for child in children:
            results.extend(child.collect(work))
        return results
    finally:
        for child in children:  # interrupted: no child outlives the call
            child.end()


@attrs.define
class _Child(Generic[T]):
    """One forked child loading `chunk` (pid 0: the fork failed, the caller loads the chunk itself)."""

    pid: int
    fd: int
    chunk: Sequence[T]

    @classmethod
    def fork(cls, work: Callable[[Sequence[T]], list[R]], chunk: Sequence[T],
             reducers: Mapping[type, Callable[[Any], tuple[Any, ...]]]) -> _Child[T]:
        try:
            read_end, write_end = os.pipe()
        except OSError:
            return cls(0, -1, chunk)
        try:
            pid = os.fork()
        except OSError:  # out of processes or memory: this chunk is loaded by the caller
            os.close(read_end)
            os.close(write_end)
            return cls(0, -1, chunk)
        if pid == 0:  # the child: never returns
            status = 1
            try:
                os.close(read_end)
                gc.disable()  # it exits right after; nothing it allocates needs collecting
                buffer = io.BytesIO()
                pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
                pickler.dispatch_table = dict(reducers)
                pickler.dump(work(chunk))
                with os.fdopen(write_end, "wb") as out:
                    out.write(buffer.getbuffer())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        return cls(pid, read_end, chunk)

    def collect(self, work: Callable[[Sequence[T]], list[R]]) -> list[R]:
        """The child's results, or its chunk loaded here when the child did not deliver them complete."""
        if not self.pid:
            return work(self.chunk)
        fd, self.fd = self.fd, -1
        with os.fdopen(fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if os.waitstatus_to_exitcode(status) == 0:
            try:
                return cast(list[R], pickle.loads(data))  # noqa: S301 - our own child's output, private pipe
            except Exception:  # noqa: BLE001 - anything short of complete results: the chunk is loaded here
                pass
        return work(self.chunk)

    def end(self) -> None:
        """Kill and reap the child if it is still there; close the pipe if still open."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0


def _bounds(count: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) chunks of (nearly) equal size, one per process, the caller's first. Even, not
    more for the caller: each child also pickles its results (~6% more), but the caller unpickles them and
    has lint and the tests still to run."""
    cuts = [count * i // processes for i in range(processes + 1)]
    return list(zip(cuts, cuts[1:]))


def attrs_reducer(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A pickle reduction of an attrs instance to (class, its init arguments): about half the bytes and time of
    attrs' own state dicts. For classes whose converters accept their own output and whose non-init fields
    __attrs_post_init__ derives."""
    names = [f.name for f in attrs.fields(cls) if f.init]
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (cls, (get(obj),))
    return lambda obj: (cls, get(obj))


def read_only_reducer(proxy: MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    """A pickle reduction of a read-only mapping (MappingProxyType cannot be pickled, not even by reference)."""
    return _read_only, (dict(proxy),)


def _read_only(data: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(data)
