"""`capengine diff OLD NEW`: every kind of request one policy set allows and the other does not, proved.

For each operation whose rules differ between the sets, and each class of extension ids the rules treat
alike (extension_classes.py; the id stays symbolic when a condition reads it), the two decisions are encoded
over one symbolic request. Widenings (NEW allows, OLD denies) are grouped by the NEW allow rule the engine
would name; narrowings (OLD allows, NEW denies) by the NEW deny rule that fires, or by "no allow rule"
(default deny). Each group gets one witness, confirmed by both engines. A group the solver cannot settle is
reported as unknown, never as "no difference".
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import z3

from capengine.analysis.decision import DecisionFormula, decision_formula, first_firing, rules_for
from capengine.analysis.domain import build_request, operation_names
from capengine.analysis.extension_classes import representatives
from capengine.analysis.solve import DEFAULT_TIMEOUT_MS, Witness, solve
from capengine.policy.engine import CompiledRule, PolicySet
from capengine.policy.model import Decision, Location

Direction = Literal["widened", "narrowed"]
DEFAULT_DENY = "(no allow rule: default deny)"


@attrs.frozen
class Difference:
    direction: Direction
    operation: str
    rule: str  # widened: the NEW allow rule; narrowed: the NEW deny rule or DEFAULT_DENY
    location: Location | None
    witness: Witness
    old: Decision
    new: Decision

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "operation": self.operation, "rule": self.rule,
                "location": str(self.location) if self.location else None, "witness": self.witness.to_json(),
                "old": _decision(self.old), "new": _decision(self.new)}


@attrs.frozen
class Unsettled:
    direction: Direction
    operation: str
    rule: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "operation": self.operation, "rule": self.rule, "reason": self.reason}


@attrs.frozen
class DiffReport:
    differences: tuple[Difference, ...]
    unsettled: tuple[Unsettled, ...]
    unanalysable: dict[str, tuple[str, ...]]  # "old:<rule>" / "new:<rule>" -> reasons
    operations: tuple[str, ...]

    @property
    def widened(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.direction == "widened")

    @property
    def narrowed(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.direction == "narrowed")

    @property
    def may_widen(self) -> bool:
        """True when NEW allows something OLD does not, or when that could not be ruled out."""
        return bool(self.widened) or any(u.direction == "widened" for u in self.unsettled)

    def to_json(self) -> dict[str, Any]:
        return {"differences": [d.to_json() for d in self.differences],
                "unsettled": [u.to_json() for u in self.unsettled],
                "unanalysable": {k: list(v) for k, v in self.unanalysable.items()},
                "summary": {"widened": len(self.widened), "narrowed": len(self.narrowed),
                            "unsettled": len(self.unsettled), "operations": len(self.operations)}}


def _decision(d: Decision) -> dict[str, Any]:
    return {"allowed": d.allowed, "rules": list(d.rules), "message": d.message}


def _key(rule: CompiledRule) -> tuple[str, str, tuple[str, ...], str, tuple[str, ...]]:
    r = rule.rule
    return (rule.qualified_id, r.effect, r.operations, r.condition or "", rule.extension_patterns)


def _groups(old: DecisionFormula, new: DecisionFormula) -> list[tuple[Direction, str, Location | None,
                                                                      z3.BoolRef]]:
    """(direction, rule, location, goal) for each way a decision can change, attributed as the engine would.

    Groups that cannot change by construction are left out (a proof by structure, no solver call): a rule
    present unchanged in both sets fires on the same requests in both, so
    - a widening through an unchanged allow needs an OLD deny that changed or went away;
    - a narrowing by an unchanged deny is impossible (it denied under OLD as well);
    - a narrowing to the default deny needs an OLD allow that changed or went away."""
    old_keys = {_key(r.rule) for r in old.rules}
    new_keys = {_key(r.rule) for r in new.rules}
    old_denies_changed = any(_key(d.rule) not in new_keys for d in old.denies)
    old_allows_changed = any(_key(a.rule) not in new_keys for a in old.allows)
    out: list[tuple[Direction, str, Location | None, z3.BoolRef]] = []
    for i, allow in enumerate(new.allows):
        if _key(allow.rule) in old_keys and not old_denies_changed:
            continue
        goal = z3.And(first_firing(new.allows, i), z3.Not(new.denied_by_rule), z3.Not(old.allowed))
        out.append(("widened", allow.id, allow.rule.rule.location, goal))
    for i, deny in enumerate(new.denies):
        if _key(deny.rule) in old_keys:
            continue
        out.append(("narrowed", deny.id, deny.rule.rule.location, z3.And(first_firing(new.denies, i), old.allowed)))
    if old_allows_changed:
        no_allow = z3.Not(z3.Or([a.fires for a in new.allows])) if new.allows else z3.BoolVal(True)
        out.append(("narrowed", DEFAULT_DENY, None, z3.And(z3.Not(new.denied_by_rule), no_allow, old.allowed)))
    return out


def diff(old_set: PolicySet, new_set: PolicySet, operations: tuple[str, ...] | None = None,
         timeout_ms: int = DEFAULT_TIMEOUT_MS) -> DiffReport:
    ops = operations if operations is not None else operation_names()
    differences: list[Difference] = []
    unsettled: list[Unsettled] = []
    unanalysable: dict[str, tuple[str, ...]] = {}
    # classes over every rule's extension globs, so that each class is decided alike by every rule
    classes = representatives(list(old_set.rules) + list(new_set.rules), timeout_ms)
    for op in ops:
        seen: set[tuple[str, str]] = set()
        for extension in (classes if classes is not None else [None]):
            old_rules, new_rules = rules_for(old_set, op, extension), rules_for(new_set, op, extension)
            if sorted(map(_key, old_rules)) == sorted(map(_key, new_rules)):
                continue  # the same rules decide these requests in both sets: no difference, by structure
            request = build_request(op, extension)
            old, new = decision_formula(old_set, request), decision_formula(new_set, request)
            for label, formula in (("old", old), ("new", new)):
                unanalysable.update({f"{label}:{k}": v for k, v in formula.unanalysable.items()})
            for direction, rule, location, goal in _groups(old, new):
                if (direction, rule) in seen:
                    continue  # already shown with a witness for another class of extensions
                found = _settle(old_set, new_set, request, goal, direction, rule, timeout_ms)
                if isinstance(found, Unsettled):
                    unsettled.append(attrs.evolve(found, operation=op))
                elif found is not None:
                    seen.add((direction, rule))
                    if location is None and found[1].rules:  # default deny: point at the OLD rule that allowed
                        location = _location(old_set, found[1].rules[0])
                    differences.append(Difference(direction, op, rule, location, *found))
        # a group settled with a witness in one class is a difference whatever another class could not settle
        unsettled = [u for u in unsettled if u.operation != op or (u.direction, u.rule) not in seen]
    return DiffReport(tuple(differences), tuple(unsettled), unanalysable, tuple(ops))


def _settle(old_set: PolicySet, new_set: PolicySet, request: Any, goal: z3.BoolRef, direction: Direction,
            rule: str, timeout_ms: int) -> tuple[Witness, Decision, Decision] | Unsettled | None:
    decisions: dict[str, Decision] = {}

    def confirm(ws: tuple[Witness, ...]) -> bool:
        engine_request = ws[0].request()
        if engine_request is None:
            return False
        before, after = old_set.decide(engine_request), new_set.decide(engine_request)
        decisions.update(old=before, new=after)
        if direction == "widened":
            return after.allowed and not before.allowed and after.rules[:1] == (rule,)
        expected = () if rule == DEFAULT_DENY else (rule,)
        return before.allowed and not after.allowed and after.rules[:1] == expected

    outcome = solve([request], [goal], confirm, timeout_ms)
    if outcome.status == "unsat":
        return None
    if outcome.status == "unknown":
        return Unsettled(direction, request.operation, rule, outcome.reason)
    return outcome.witnesses[0], decisions["old"], decisions["new"]


def _location(policy_set: PolicySet, qualified_id: str) -> Location | None:
    return next((r.rule.location for r in policy_set.rules if r.qualified_id == qualified_id), None)
