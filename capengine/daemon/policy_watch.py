"""Watching the policy directory: inotify through `watchfiles`, debounced, with the directory itself watched too.

Why not polling: walking and stat-ing 10,000 files every second cost 20-31% of a core, and a change waited up
to a second. inotify reports writes, atomic renames (editors), deletions and the ConfigMap/`current` symlink
flips as they happen; a burst of them within `quiet` seconds becomes one request (the reloader coalesces
further). Where inotify is unavailable (WATCHFILES_FORCE_POLLING set, WSL, or the kernel refusing an inotify
instance), watchfiles polls every `interval` seconds instead, and the log says so.

An inotify watch belongs to the directory's inode: when the directory is removed or replaced (`rm -r` and
recreate, `mv new policies`), the old watch sees nothing more. So every `interval` seconds (and after every
batch of events) the directory's identity (device, inode, and the effective root it resolves to) is compared
with the one watched; on a change the watch is rebuilt and a reload requested, and while the directory is
missing the watcher waits for it to come back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles

from capengine.daemon.policy_source import effective_root, fingerprint
from capengine.policy.loader import POLICY_SUFFIXES

log = logging.getLogger("capengine.daemon.reload")

Identity = tuple[int, int, str]


def identity(directory: Path) -> Identity | None:
    """What the watch is attached to: the directory's (device, inode) and the effective root (symlink layouts)
    it resolves to now; None while it does not exist."""
    try:
        st = os.stat(directory)
        return st.st_dev, st.st_ino, str(effective_root(directory))
    except OSError:
        return None


def relevant(changes: set[tuple[watchfiles.Change, str]]) -> bool:
    """Any change that can alter the policy set: a policy file, a directory, a symlink like `..data` (no
    suffix). An editor's swap and backup files (`.swp`, `~`, `4913`) created or written are not. Any deletion
    is: a directory moved out of the tree (`mv policies/team.v2 /attic`) is reported as one deleted path, and
    once gone nothing tells it from a file, so its name (any suffix) cannot decide."""
    for change, path in changes:
        suffix = os.path.splitext(path)[1]
        if suffix in POLICY_SUFFIXES or suffix == "" or change == watchfiles.Change.deleted or os.path.isdir(path):
            return True
    return False


def watch(directory: Path, request: Callable[[], object], stopped: threading.Event, interval: float,
          quiet: float = 0.05, seen: tuple | None = None) -> None:
    """Call `request()` after every settled burst of changes under `directory` until `stopped` is set.
    `seen`: policy_source.fingerprint() taken before the first load: a change made between that load and the
    watch starting is requested too. Never raises (the supervisor restarts a watcher that dies, but a watcher
    that keeps dying would only spin)."""
    period = max(interval, 0.01)
    watched: Identity | None = None
    first = True
    fallback = False  # set once inotify was refused: poll from then on
    while not stopped.is_set():
        current = identity(directory)
        if current is None:
            if watched is not None or first:
                log.warning("policy directory %s is missing; waiting for it to come back", directory)
            watched, first = None, False
            stopped.wait(period)
            continue
        if not first and current != watched:
            request()  # replaced, or back after being removed: whatever is there now is new
        watched = current
        paths = [str(directory)]
        root = Path(current[2])
        if not root.is_relative_to(directory.resolve()):  # a `current` symlink pointing elsewhere
            paths.append(str(root))
        forced = os.environ.get("WATCHFILES_FORCE_POLLING", "").strip().lower() not in ("", "false", "disable",
                                                                                       "disabled")
        polling = fallback or forced
        how = "inotify" if not polling else f"polling every {period:g} s (" + (
            "inotify unavailable)" if fallback else "WATCHFILES_FORCE_POLLING is set)")
        log.info("watching %s for policy changes with %s", ", ".join(paths), how)
        try:
            for changes in watchfiles.watch(*paths, watch_filter=None, step=max(1, int(quiet * 1000)),
                                            debounce=max(1000, int(quiet * 20000)), stop_event=stopped,
                                            rust_timeout=max(10, int(period * 1000)), yield_on_timeout=True,
                                            raise_interrupt=False, poll_delay_ms=max(1, int(period * 1000)),
                                            force_polling=True if fallback else None, ignore_permission_denied=True):
                if first:  # the watch is in place now: catch what changed since the first load
                    first = False
                    if seen is not None and fingerprint(directory) != seen:
                        request()
                if changes and relevant(changes):
                    request()
                if identity(directory) != watched:
                    break  # rebuild the watch on what is there now
        except FileNotFoundError:
            continue  # vanished while the watch was set up: wait for it above
        except OSError as exc:  # no inotify instance or watch left (EMFILE, ENOSPC): poll instead
            if polling:
                log.error("cannot watch %s: %s; retrying in %g s", directory, exc, period)
                stopped.wait(period)
            else:
                log.warning("inotify unavailable for %s (%s): falling back to polling every %g s",
                            directory, exc, period)
                fallback = True
