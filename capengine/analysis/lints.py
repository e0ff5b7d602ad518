"""Proven lints: findings the solver establishes for every possible request, not from the rule text alone.

- `never-matches`: the rule fires for no request of any operation it names (for an allow, also when its
  condition errors on every request: fail closed makes it dead).
- `shadowed-allow`: whenever the allow matches, some deny fires too.
- `redundant-allow`: whenever the allow matches and no deny fires, another allow matches as well.
- `deny-only-on-error`: the deny's condition is never true; it fires only when the condition errors, i.e. only
  through fail-closed evaluation (usually a missing `has()` guard).
- `content-around-deny`: a request for a content-revealing operation carrying only its required fields is
  denied by a deny rule, while the same path, library and extension is allowed for another content-revealing
  operation.

Each finding names its evidence: "proved" for an unsat answer, or engine-confirmed witness requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import z3

from capengine.analysis.decision import DecisionFormula, decision_formula, rules_for
from capengine.analysis.domain import build_request, operation_names
from capengine.analysis.solve import DEFAULT_TIMEOUT_MS, Witness, solve
from capengine.cel.values import CelError
from capengine.policy.engine import CompiledRule, PolicySet
from capengine.policy.model import Finding, Location, Severity

CONTENT_OPERATIONS = ("vdfs.read_file", "ai.ocr", "vdfs.read_sidecar")


@attrs.frozen
class ProvenFinding:
    code: str
    rule: str
    location: Location
    message: str
    witnesses: tuple[Witness, ...] = ()

    def to_finding(self, severity: Severity = "warning") -> Finding:
        return Finding(self.location, severity, self.code, f"{self.rule}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "rule": self.rule, "location": str(self.location), "message": self.message,
                "witnesses": [w.to_json() for w in self.witnesses]}


class _Sets:
    """Decision formulas per operation, built once (with the extension left open)."""

    def __init__(self, policy_set: PolicySet, timeout_ms: int) -> None:
        self.policy_set = policy_set
        self.timeout_ms = timeout_ms
        self._formulas: dict[str, DecisionFormula] = {}

    def formula(self, op: str) -> DecisionFormula:
        if op not in self._formulas:
            self._formulas[op] = decision_formula(self.policy_set, build_request(op, None))
        return self._formulas[op]

    def ask(self, op: str, goal: list[z3.BoolRef], check: Callable[[Any], bool] | None = None) -> str:
        """sat (with an engine-confirmed witness when `check` is given) / unsat / unknown."""
        f = self.formula(op)

        def confirm(ws: tuple[Witness, ...]) -> bool:
            if check is None:
                return True
            r = ws[0].request()
            return r is not None and check(self.policy_set.decide(r))

        return solve([f.request], goal, confirm, self.timeout_ms).status


def lint(policy_set: PolicySet, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[ProvenFinding]:
    sets = _Sets(policy_set, timeout_ms)
    ops = operation_names()
    out: list[ProvenFinding] = []
    for rule in policy_set.rules:
        applicable = [op for op in ops if rule in rules_for(policy_set, op)]
        if not applicable:
            continue  # the syntactic lint already reports operations that match no registered operation
        out += _rule_findings(sets, rule, applicable)
    out += content_around_deny(policy_set, timeout_ms)
    return out


def _formula_of(f: DecisionFormula, rule: CompiledRule):
    return next(r for r in f.rules if r.rule is rule)


def _rule_findings(sets: _Sets, rule: CompiledRule, ops: list[str]) -> list[ProvenFinding]:
    loc, rid = rule.rule.location, rule.qualified_id
    statuses = {op: sets.ask(op, [_formula_of(sets.formula(op), rule).fires]) for op in ops}
    if all(s == "unsat" for s in statuses.values()):
        if not rule.deny and any(sets.ask(op, [_formula_of(sets.formula(op), rule).error]) == "sat" for op in ops):
            why = "its condition errors or is false on every request (fail closed: an error never allows)"
        else:
            why = "its condition is false on every request"
        return [ProvenFinding("never-matches", rid, loc, f"can never match: {why} (proved)")]
    if any(s != "sat" for s in statuses.values()):
        return []  # undecided somewhere: claim nothing
    if rule.deny:
        true_somewhere = [sets.ask(op, [_formula_of(sets.formula(op), rule).true]) for op in ops]
        if all(s == "unsat" for s in true_somewhere):
            return [ProvenFinding("deny-only-on-error", rid, loc,
                                  "the condition is never true; the deny fires only when the condition errors "
                                  "(fail closed) - add has() guards or fix the condition (proved)")]
        return []
    unshadowed = {op: sets.ask(op, [_formula_of(sets.formula(op), rule).fires,
                                    z3.Not(sets.formula(op).denied_by_rule)]) for op in ops}
    if all(s == "unsat" for s in unshadowed.values()):
        return [ProvenFinding("shadowed-allow", rid, loc, "whenever it matches, a deny rule fires too (proved)")]
    sole = []
    for op in ops:
        f = sets.formula(op)
        mine = _formula_of(f, rule)
        others = [a.fires for a in f.allows if a is not mine]
        goal = [mine.fires, z3.Not(f.denied_by_rule)] + ([z3.Not(z3.Or(others))] if others else [])
        sole.append(sets.ask(op, goal))
    if all(s == "unsat" for s in sole):
        return [ProvenFinding("redundant-allow", rid, loc,
                              "every request it allows is also allowed by another allow rule (proved)")]
    return []


def content_around_deny(policy_set: PolicySet, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[ProvenFinding]:
    """A deny on a content-revealing operation, sidestepped by another content-revealing operation on the same
    path (same extension and library): e.g. read_file denied under /private but ai.ocr allowed there."""
    out: list[ProvenFinding] = []
    for denied_op in CONTENT_OPERATIONS:
        for deny in [r for r in rules_for(policy_set, denied_op) if r.deny and r.program is not None]:
            for other_op in CONTENT_OPERATIONS:
                if other_op == denied_op:
                    continue
                a = build_request(denied_op, None, prefix="a.")
                b = build_request(other_op, None, prefix="b.")
                fa, fb = decision_formula(policy_set, a), decision_formula(policy_set, b)
                mine = next(r for r in fa.denies if r.rule is deny)
                shared = [a.extension == b.extension, a.path == b.path, a.library == b.library]
                # the denied request carries only required fields: a deny about an optional argument (a size
                # limit) is not a deny of the content itself
                bare = [z3.Not(f.present) for f in a.args.values() if not f.required]
                goal = [mine.true, fb.allowed] + shared + bare

                def confirm(ws: tuple[Witness, ...], rule: CompiledRule = deny) -> bool:
                    ra, rb = ws[0].request(), ws[1].request()
                    if ra is None or rb is None or rule.program is None:
                        return False
                    try:  # the engine names only the first firing deny; this one must be true here too
                        fires = rule.program.evaluate(ra.activation()) is True
                    except CelError:
                        return False
                    return fires and not policy_set.decide(ra).allowed and policy_set.decide(rb).allowed

                outcome = solve([a, b], goal, confirm, timeout_ms)
                if outcome.status == "sat":
                    w = outcome.witnesses
                    out.append(ProvenFinding(
                        "content-around-deny", deny.qualified_id, deny.rule.location,
                        f"denies {denied_op} on {w[0].path!r} but {other_op} on the same path is allowed "
                        f"(for {w[1].extension}); the content is reachable around the deny", w))
    return out
