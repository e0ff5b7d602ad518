"""Proven lints: findings the solver establishes for every possible request, not from the rule text alone.

- `never-matches`: the rule fires for no request of any operation it names (for an allow, also when its
  condition errors on every request: fail closed makes it dead).
- `shadowed-allow`: whenever the allow matches, some deny fires too.
- `redundant-allow`: whenever the allow matches and no deny fires, another allow matches as well.
- `deny-only-on-error`: the deny's condition is never true; it fires only when the condition errors, i.e. only
  through fail-closed evaluation (usually a missing `has()` guard).
- `content-reachable-around-deny`: a request for a content-revealing operation (the catalog's
  `reveals-content` class) carrying only its required fields is denied by a deny rule, while the same path,
  library and extension is allowed for another content-revealing operation.

Each finding names its evidence: "proved" for an unsat answer, or engine-confirmed witness requests.
"""

from __future__ import annotations

from typing import Any

import attrs
import z3

from capengine.analysis.decision import DecisionFormula, RuleFormula, decision_formula
from capengine.analysis.domain import build_request, operation_names
from capengine.analysis.extension_classes import representatives
from capengine.analysis.solve import DEFAULT_TIMEOUT_MS, Witness, solve
from capengine.cel.values import CelError
from capengine.policy.codes import Code
from capengine.policy.engine import CompiledRule, PolicySet
from capengine.policy.model import Finding, Location, Severity

CONTENT_CLASS = "reveals-content"


def content_operations(policy_set: PolicySet) -> list[str]:
    """The operations that declare they reveal file content, from the set's operation catalog (the schemas'
    x-capengine), as `class:reveals-content` resolves them; those with a schema the analysis can model."""
    known = set(operation_names())
    return [op for op in policy_set.catalog.members(CONTENT_CLASS) if op in known]


@attrs.frozen
class ProvenFinding:
    code: Code
    rule: str
    location: Location
    message: str
    witnesses: tuple[Witness, ...] = ()

    def to_finding(self, severity: Severity = "warning") -> Finding:
        return Finding(self.location, severity, self.code, f"{self.rule}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "rule": self.rule, "location": str(self.location), "message": self.message,
                "witnesses": [w.to_json() for w in self.witnesses]}


class _Cases:
    """Decision formulas per operation, one per class of extension ids (extension_classes.py), built once."""

    def __init__(self, policy_set: PolicySet, timeout_ms: int) -> None:
        self.policy_set = policy_set
        self.timeout_ms = timeout_ms
        self._formulas: dict[str, list[DecisionFormula]] = {}
        self.extensions = extension_cases(policy_set, timeout_ms)

    def formulas(self, op: str) -> list[DecisionFormula]:
        if op not in self._formulas:
            built = [decision_formula(self.policy_set, build_request(op, e)) for e in self.extensions]
            self._formulas[op] = [f for f in built if f.rules]
        return self._formulas[op]

    def ask(self, f: DecisionFormula, goal: list[z3.BoolRef]) -> str:
        """sat / unsat (proved) / unknown. Witnesses are not needed for these universal claims: only "unsat"
        answers become findings."""
        return solve([f.request], goal, lambda ws: True, self.timeout_ms).status


def lint(policy_set: PolicySet, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[ProvenFinding]:
    cases = _Cases(policy_set, timeout_ms)
    ops = operation_names()
    out: list[ProvenFinding] = []
    for rule in policy_set.rules:
        pairs = [(f, mine) for op in ops for f in cases.formulas(op) for mine in f.rules if mine.rule is rule]
        if pairs:  # else: no registered operation or extension id it applies to (the syntactic lint's job)
            out += _rule_findings(cases, rule, pairs)
    out += content_around_deny(policy_set, timeout_ms)
    return out


def extension_cases(policy_set: PolicySet, timeout_ms: int) -> list[str | None]:
    """A representative id per class of extension ids the rules treat alike, or [None]: the id left open."""
    reps = representatives(policy_set.rules, timeout_ms)
    return list(reps) if reps is not None else [None]


def _all(statuses: list[str]) -> str:
    """unsat when every case is unsat, unknown when any is unknown, else sat."""
    if "unknown" in statuses:
        return "unknown"
    return "unsat" if all(s == "unsat" for s in statuses) else "sat"


def _rule_findings(cases: _Cases, rule: CompiledRule, pairs: list[tuple[DecisionFormula, RuleFormula]]
                   ) -> list[ProvenFinding]:
    loc, rid = rule.rule.location, rule.qualified_id
    fires = [cases.ask(f, [mine.fires]) for f, mine in pairs]
    verdict = _all(fires)
    if verdict == "unknown":
        return []  # undecided somewhere: claim nothing
    if verdict == "unsat":
        errors = _all([cases.ask(f, [mine.error]) for f, mine in pairs])
        if not rule.deny and errors == "sat":
            why = "its condition errors or is false on every request (fail closed: an error never allows)"
        else:
            why = "its condition is false on every request"
        return [ProvenFinding(Code.NEVER_MATCHES, rid, loc, f"can never match: {why} (proved)")]
    live = [pair for pair, status in zip(pairs, fires) if status == "sat"]
    if rule.deny:
        if _all([cases.ask(f, [mine.true]) for f, mine in live]) == "unsat":
            return [ProvenFinding(Code.DENY_ONLY_ON_ERROR, rid, loc,
                                  "the condition is never true; the deny fires only when the condition errors "
                                  "(fail closed) - add has() guards or fix the condition (proved)")]
        return []
    if _all([cases.ask(f, [mine.fires, z3.Not(f.denied_by_rule)]) for f, mine in live]) == "unsat":
        return [ProvenFinding(Code.SHADOWED_ALLOW, rid, loc, "whenever it matches, a deny rule fires too (proved)")]
    sole = []
    for f, mine in live:
        others = [a.fires for a in f.allows if a is not mine]
        sole.append(cases.ask(f, [mine.fires, z3.Not(f.denied_by_rule)] + ([z3.Not(z3.Or(others))] if others else [])))
    if _all(sole) == "unsat":
        return [ProvenFinding(Code.REDUNDANT_ALLOW, rid, loc,
                              "every request it allows is also allowed by another allow rule (proved)")]
    return []


def content_around_deny(policy_set: PolicySet, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[ProvenFinding]:
    """A deny on a content-revealing operation, sidestepped by another content-revealing operation on the same
    path (same extension and library): e.g. read_file denied under /private but ai.ocr allowed there."""
    out: list[ProvenFinding] = []
    found: set[tuple[str, str]] = set()
    content = content_operations(policy_set)
    for extension in extension_cases(policy_set, timeout_ms):
        for denied_op in content:
            for other_op in content:
                if other_op == denied_op:
                    continue
                a = build_request(denied_op, extension, prefix="a.")
                b = build_request(other_op, extension, prefix="b.")
                fa, fb = decision_formula(policy_set, a), decision_formula(policy_set, b)
                for mine in fa.denies:
                    if mine.rule.program is None or (mine.id, other_op) in found:
                        continue
                    finding = _around(policy_set, mine, fa, fb, timeout_ms)
                    if finding is not None:
                        found.add((mine.id, other_op))
                        out.append(finding)
    return out


def _around(policy_set: PolicySet, mine: RuleFormula, fa: DecisionFormula, fb: DecisionFormula,
            timeout_ms: int) -> ProvenFinding | None:
    a, b = fa.request, fb.request
    deny = mine.rule
    shared = [a.path == b.path, a.library == b.library]
    if a.extension_name is None:
        shared.append(a.extension == b.extension)
    # the denied request carries only required fields: a deny about an optional argument (a size limit) is
    # not a deny of the content itself
    bare = [z3.Not(f.present) for f in a.args.values() if not f.required]
    goal = [mine.true, fb.allowed] + shared + bare

    def confirm(ws: tuple[Witness, ...]) -> bool:
        ra, rb = ws[0].request(), ws[1].request()
        if ra is None or rb is None or deny.program is None:
            return False
        try:  # the engine names only the first firing deny; this one must be true here too
            fires = deny.program.evaluate(ra.activation()) is True
        except CelError:
            return False
        return fires and not policy_set.decide(ra).allowed and policy_set.decide(rb).allowed

    outcome = solve([a, b], goal, confirm, timeout_ms)
    if outcome.status != "sat":
        return None
    w = outcome.witnesses
    return ProvenFinding(
        Code.CONTENT_REACHABLE, deny.qualified_id, deny.rule.location,
        f"denies {a.operation} on {w[0].path!r} but {b.operation} on the same path is allowed "
        f"(for {w[1].extension}); the content is reachable around the deny", w)
