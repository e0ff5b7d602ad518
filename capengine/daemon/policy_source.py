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
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import attrs

from capengine.policy.check import CheckOutcome, run_check

POLICY_SUFFIXES = (".yaml", ".yml")
SWAP_LINKS = ("..data", "current")


class UnsettledError(Exception):
    """The files kept changing while they were read."""


def effective_root(directory: Path) -> Path:
    """The real directory a reload reads now (symlink layouts resolved once)."""
    for name in SWAP_LINKS:
        link = directory / name
        if link.is_symlink():
            return link.resolve(strict=True)
    return directory.resolve(strict=True)


def content(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes, for every policy file under root. Raises OSError on races."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in POLICY_SUFFIXES and path.is_file():
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def fingerprint(directory: Path) -> tuple:
    """Cheap change detection for the watcher: names, sizes, mtimes, inodes, and where the symlinks point."""
    entries: list[tuple] = []
    for name in SWAP_LINKS:
        link = directory / name
        if link.is_symlink():
            entries.append((name, str(link.readlink())))
    try:
        root = effective_root(directory)
        for path in sorted(root.rglob("*")):
            if path.suffix in POLICY_SUFFIXES:
                st = path.stat()
                entries.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError as exc:
        entries.append(("error", str(exc)))
    return tuple(entries)


@attrs.frozen
class Settled:
    root: Path
    hashes: dict[str, str]
    outcome: CheckOutcome

    @property
    def texts(self) -> dict[str, str]:
        return {str(Path(f.path).relative_to(self.root)): f.text for f in self.outcome.load.files}

    @property
    def digest(self) -> str:
        """What the content is, independent of where it lives (a ConfigMap's timestamped directory)."""
        h = hashlib.sha256()
        for name, value in sorted(self.hashes.items()):
            h.update(f"{name}\0{value}\0".encode())
        return h.hexdigest()[:16]


def read_settled(directory: Path, operations: list[str], settle: float = 0.05, timeout: float = 10.0) -> Settled:
    """Read, check, read again; retry until the files stop changing (UnsettledError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        root = effective_root(directory)
        before = content(root)
        outcome = run_check([root], operations=operations)
        time.sleep(settle)
        after_root = effective_root(directory)
        after = content(after_root) if after_root == root else None
        loaded = {str(Path(f.path).relative_to(root)): hashlib.sha256(f.text.encode()).hexdigest()
                  for f in outcome.load.files}
        if after == before and all(before.get(name) == value for name, value in loaded.items()):
            return Settled(root, before, outcome)
        if time.monotonic() > deadline:
            raise UnsettledError(f"the policy files under {directory} kept changing for {timeout:g} s; "
                                 "reload again once they are written")


def losses(old: Settled, new: Settled) -> list[str]:
    """What `new` lost compared with the last-known-good `old`, each as one sentence naming file and fix."""
    found = []
    old_texts, new_texts = old.texts, new.texts
    old_policies = {f"{Path(f.path).relative_to(old.root)}": [p.name for p in f.policies]
                    for f in old.outcome.load.files}
    new_policies = {f"{Path(f.path).relative_to(new.root)}": [p.name for p in f.policies]
                    for f in new.outcome.load.files}
    for name, policies in old_policies.items():
        if not policies:
            continue
        where = new.root / name
        if name not in new.hashes:
            found.append(f"{where}: the file held policies {', '.join(policies)} and is gone")
        elif not new_policies.get(name):
            found.append(f"{where}: the file held policies {', '.join(policies)} and now holds none "
                         "(empty or cut short?)")
        elif len(new_texts.get(name, "")) < len(old_texts[name]) and old_texts[name].startswith(
                new_texts.get(name, "")):
            found.append(f"{where}: the file is a truncated copy of its previous content (a write in progress?)")
    new_rules = {p.name: {r.id for r in p.rules} for p in new.outcome.load.policies}
    for policy in old.outcome.load.policies:
        if policy.name not in new_rules:
            found.append(f"{new.root}: policy {policy.name} (was at {policy.location}) is gone")
            continue
        for rule in policy.rules:
            if rule.id not in new_rules[policy.name]:
                found.append(f"{new.root}: rule {rule.qualified_id} (was at {rule.location}) is gone")
    return found
