"""Shadow testing: re-decide every logged call under a candidate policy set and list the decisions that flip.

Input is one or more decision-log files or directories; a directory means its `decisions.jsonl` and every
rotated `decisions.jsonl.N`, and all files are read oldest first (`.5` ... `.1`, then the current file), so a
rotation never hides records. A file that is not a decision log (no decision records, or more garbage than
records) is refused with NotADecisionLog rather than "passing" with nothing replayed.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from pathlib import Path

import attrs

from capengine.daemon.decision_log import read_records
from capengine.errors import CapengineError
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request, RequestError

LOG_NAME = "decisions.jsonl"
_ROTATED = re.compile(r"^(?P<base>.*?)(?:\.(?P<n>\d+))?$")


class NotADecisionLog(CapengineError):
    """An input that is not a decision log (or cannot be read): bad input, not a replay result."""


@attrs.frozen
class Flip:
    file: str
    line: int
    record: dict
    was: str  # "allow" | "deny"
    now: str
    rules: tuple[str, ...]  # the deciding rules under the candidate set


@attrs.frozen
class ReplayReport:
    decided: int  # logged calls that reached a decision and were re-decided
    flips: tuple[Flip, ...]
    skipped: int  # calls that failed before the policy (unknown op, bad input): nothing to re-decide
    unreadable: tuple[tuple[str, int], ...]  # (file, line) of lines that are not records (e.g. a torn line)
    files: tuple[str, ...] = ()


def log_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand directories and glob patterns; order oldest first (higher rotation number first)."""
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in path.iterdir() if p.is_file() and _base(p.name)[0] == LOG_NAME)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(str(raw)):
            found.extend(Path(p) for p in sorted(glob.glob(str(raw))) if Path(p).is_file())
        else:
            raise NotADecisionLog(f"{raw}: no such file or directory")
    if not found:
        raise NotADecisionLog(f"no decision-log files in {', '.join(map(str, inputs))}")

    def age(p: Path) -> tuple[str, int]:
        base, number = _base(p.name)
        return str(p.parent / base), -number

    return sorted(dict.fromkeys(found), key=age)


def _base(name: str) -> tuple[str, int]:
    """("decisions.jsonl", 3) for "decisions.jsonl.3"; rotation 0 for the current file."""
    m = _ROTATED.match(name)
    return (m["base"], int(m["n"] or 0)) if m else (name, 0)


def is_decision_record(record: object) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("extension"), str)
            and isinstance(record.get("operation"), str) and record.get("decision") in ("allow", "deny", "error"))


def replay(policy_set: PolicySet, inputs: Path | str | Iterable[Path | str]) -> ReplayReport:
    paths = log_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    flips: list[Flip] = []
    unreadable: list[tuple[str, int]] = []
    decided = skipped = 0
    for path in paths:
        records = garbage = 0
        try:
            for line, record in read_records(path):
                if not is_decision_record(record):
                    garbage += 1
                    unreadable.append((str(path), line))
                    continue
                assert record is not None
                records += 1
                if record["decision"] == "error":
                    skipped += 1
                    continue
                try:
                    request = Request.parse(record["extension"], record["operation"], record.get("path", ""),
                                            record.get("library", ""), record.get("args") or {})
                except RequestError:
                    unreadable.append((str(path), line))
                    continue
                decided += 1
                decision = policy_set.decide(request)
                now = "allow" if decision.allowed else "deny"
                if now != record["decision"]:
                    flips.append(Flip(str(path), line, record, record["decision"], now, decision.rules))
        except OSError as exc:
            raise NotADecisionLog(f"{path}: cannot read: {exc.strerror or exc}") from None
        if garbage > records:
            raise NotADecisionLog(f"{path}: not a decision log ({garbage} of {garbage + records} non-empty lines "
                                  "are not decision records); pass DATA_DIR or DATA_DIR/decisions.jsonl*")
    return ReplayReport(decided, tuple(flips), skipped, tuple(unreadable), tuple(map(str, paths)))
