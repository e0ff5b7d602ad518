"""Reading the policy directory for a reload: which directory, settled content, and what the reload would lose.

Why: editors and deployers write policy files in place. A reload that reads a file just after it was
truncated, or half-written, must not activate a set with a deny rule missing. So:
- the directory loaded is `DIR/..data` when present (the Kubernetes ConfigMap layout: `..data` -> a
  timestamped directory, flipped atomically), else `DIR/current` when it is a symlink (the same idea for any
  deployer), else DIR itself; the symlink is resolved once, so one reload sees one version;
- the files are read, the set is checked, and the files are read again: the reload goes ahead only when all
  reads agree (content hashes), retrying until the content stays put;
- compared with the last-known-good set, a file that held policies and is now missing, empty or cut short,
  a policy or a rule that disappeared, is an error unless the operator says the removal is meant
  (`policies.reload {"accept_removals": true}`) or the deployer flipped the directory symlink.

Whatever the directory holds, a read ends, in bounded memory, or raises OSError naming the file: a file is
opened without blocking and must still be a regular file once open (a FIFO or device can be renamed over a
policy file after the walk listed it: opening a FIFO would wait for a writer for ever), at most
MAX_FILE_BYTES + 1 bytes of it are read (a sparse terabyte is refused by the loader as too large, not read),
and a symlink loop is an OSError (ELOOP), not the RuntimeError pathlib raises for it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from functools import cached_property
from pathlib import Path

import attrs

from capengine.policy.check import CheckOutcome, run_check
from capengine.policy.loader import MAX_FILE_BYTES, LoadedFile, walk

SWAP_LINKS = ("..data", "current")


class UnsettledError(Exception):
    """The files kept changing while they were read."""


def effective_root(directory: Path) -> Path:
    """The real directory a reload reads now (symlink layouts resolved once)."""
    for name in SWAP_LINKS:
        link = directory / name
        if link.is_symlink():
            return _resolve(link)
    return _resolve(directory)


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a symlink loop; 3.13 raises OSError (ELOOP) itself
        raise OSError(errno.ELOOP, "too many levels of symbolic links (a symlink loop); point it at a "
                      "directory", str(path)) from None


class TreeReader:
    """Reads the policy files under a root, remembering each file's bytes with its stat signature (device,
    inode, size, mtime, ctime): a file whose signature is unchanged and whose ctime is older than QUIET_NS is
    not read again. Why that is safe: every write, truncation, rename or chmod sets ctime to the current time
    (no caller can set it back), so an unchanged old ctime means no write since the remembered read; the quiet
    margin covers file systems whose timestamps are coarser than the clock. A file changed recently is always
    read again, so the reload's "read, check, read again" keeps comparing real contents where it matters."""

    QUIET_NS = 2_000_000_000

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, ...], bytes, str]] = {}

    def read(self, root: Path) -> dict[str, tuple[bytes, str]]:
        """Relative path -> (bytes, sha256 hex) for every policy file under root, in walk order. Raises OSError
        on races (a file or directory vanishing mid-walk)."""
        old_before = time.time_ns() - self.QUIET_NS
        known: dict[str, tuple[tuple[int, ...], bytes, str]] = {}
        tree = {}
        base = str(root) + os.sep
        for name in walk(root):
            path = base + name
            st = os.stat(path)
            entry = self._known.get(path)
            if entry is None or entry[0] != _signature(st) or st.st_ctime_ns >= old_before:
                signature, data = read_file(path)
                entry = (signature, data, hashlib.sha256(data).hexdigest())
            known[path] = entry
            tree[name] = entry[1:]
        self._known = known
        return tree


def read_file(path: str) -> tuple[tuple[int, ...], bytes]:
    """The file's stat signature (taken before the read: a later write changes it) and at most MAX_FILE_BYTES + 1
    of its bytes; never blocks on a FIFO or device swapped in for a policy file (OSError naming it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device was put in the place of a "
                          "policy file); replace it with the YAML file", path)
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))  # a regular file never blocks; O_NONBLOCK: /proc's that do
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return _signature(st), b"".join(chunks)
    finally:
        os.close(fd)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def fingerprint(directory: Path) -> tuple:
    """Cheap change detection (the watcher's start, to catch what changed since the first load): names, sizes,
    mtimes, inodes, and where the symlinks point."""
    entries: list[tuple] = []
    for name in SWAP_LINKS:
        link = directory / name
        if link.is_symlink():
            entries.append((name, str(link.readlink())))
    try:
        root = effective_root(directory)
        for name in walk(root):
            st = os.stat(os.path.join(root, name))
            entries.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError as exc:
        entries.append(("error", str(exc)))
    return tuple(entries)


@attrs.frozen
class Settled:
    root: Path
    hashes: dict[str, str]
    outcome: CheckOutcome

    @cached_property
    def files(self) -> dict[str, LoadedFile]:
        """Relative path -> loaded file. The loader hands out the same LoadedFile for the same path and content,
        so `old.files[name] is new.files[name]` says the file did not change without comparing texts."""
        prefix = len(str(self.root)) + 1
        return {f.path[prefix:]: f for f in self.outcome.load.files}

    @cached_property
    def digest(self) -> str:
        """What the content is, independent of where it lives (a ConfigMap's timestamped directory)."""
        h = hashlib.sha256()
        for name, value in sorted(self.hashes.items()):
            h.update(f"{name}\0{value}\0".encode())
        return h.hexdigest()[:16]


def read_settled(directory: Path, operations: list[str], settle: float = 0.05, timeout: float = 10.0,
                 reader: TreeReader | None = None) -> Settled:
    """Read, check, read again; retry until the files stop changing (UnsettledError after `timeout`). The
    files are read once for the check (the loader is handed those bytes) and once more to compare; the second
    read is at least `settle` seconds after the first (the check's own time counts). `reader`: one kept
    between reloads skips reading files that provably did not change (TreeReader)."""
    reader = reader or TreeReader()
    deadline = time.monotonic() + timeout
    while True:
        root = effective_root(directory)
        started = time.monotonic()
        tree = reader.read(root)
        base = str(root) + os.sep
        outcome = run_check([root], operations=operations, contents={base + name: data for name, (data, _) in
                                                                     tree.items()})
        time.sleep(max(0.0, settle - (time.monotonic() - started)))
        after_root = effective_root(directory)
        before = {name: digest for name, (_, digest) in tree.items()}
        if after_root == root and {name: digest for name, (_, digest) in reader.read(root).items()} == before:
            return Settled(root, before, outcome)
        if time.monotonic() > deadline:
            raise UnsettledError(f"the policy files under {directory} kept changing for {timeout:g} s; "
                                 "reload again once they are written")


def losses(old: Settled, new: Settled) -> list[str]:
    """What `new` lost compared with the last-known-good `old`, each as one sentence naming file and fix. Files
    and policies that are the very same objects in both sets (unchanged) are skipped without a look."""
    found = []
    new_files = new.files
    for name, before in old.files.items():
        after = new_files.get(name)
        if after is before or not before.policies:
            continue
        where = new.root / name
        policies = ", ".join(p.name for p in before.policies)
        if name not in new.hashes:
            found.append(f"{where}: the file held policies {policies} and is gone")
        elif after is None or not after.policies:
            found.append(f"{where}: the file held policies {policies} and now holds none (empty or cut short?)")
        elif len(after.text) < len(before.text) and before.text.startswith(after.text):
            found.append(f"{where}: the file is a truncated copy of its previous content (a write in progress?)")
    new_policies = {p.name: p for p in new.outcome.load.policies}
    for policy in old.outcome.load.policies:
        now = new_policies.get(policy.name)
        if now is policy:
            continue
        if now is None:
            found.append(f"{new.root}: policy {policy.name} (was at {policy.location}) is gone")
            continue
        ids = {r.id for r in now.rules}
        for rule in policy.rules:
            if rule.id not in ids:
                found.append(f"{new.root}: rule {rule.qualified_id} (was at {rule.location}) is gone")
    return found
