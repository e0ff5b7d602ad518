"""Shadow testing: re-decide every logged call under a candidate policy set and list the decisions that flip."""

from __future__ import annotations

from pathlib import Path

import attrs

from capengine.daemon.decision_log import read_records
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request, RequestError


@attrs.frozen
class Flip:
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
    unreadable: tuple[int, ...]  # line numbers that are not records (e.g. a torn last line)


def replay(policy_set: PolicySet, log_path: Path) -> ReplayReport:
    flips, unreadable = [], []
    decided = skipped = 0
    for line, record in read_records(log_path):
        if record is None:
            unreadable.append(line)
            continue
        if record.get("decision") not in ("allow", "deny"):
            skipped += 1
            continue
        try:
            request = Request.parse(record["extension"], record["operation"], record.get("path", ""),
                                    record.get("library", ""), record.get("args") or {})
        except (KeyError, RequestError):
            unreadable.append(line)
            continue
        decided += 1
        decision = policy_set.decide(request)
        now = "allow" if decision.allowed else "deny"
        if now != record["decision"]:
            flips.append(Flip(line, record, record["decision"], now, decision.rules))
    return ReplayReport(decided, tuple(flips), skipped, tuple(unreadable))
