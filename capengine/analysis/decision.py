"""The decision of a policy set for one operation, as a formula: the engine's semantics restated in Z3.

Default deny; any firing deny beats every allow; a deny fires when its condition is true *or errors* (or is not
a bool), an allow only when its condition is true (fail closed). Which rules apply is decided by the operation
name (concrete here) and the extension id (concrete or symbolic: then each policy's extension globs become
regular-language membership tests).
"""

from __future__ import annotations

from functools import cache

import attrs
import z3

from capengine.analysis import regex
from capengine.analysis.domain import SymRequest
from capengine.analysis.encode import FALSE, TRUE, Encoder, Val
from capengine.analysis.zstrings import NotAnalysable
from capengine.cel import ast
from capengine.policy import globs, operations
from capengine.policy.engine import CompiledRule, PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT


@attrs.frozen
class RuleFormula:
    rule: CompiledRule
    applies: z3.BoolRef  # the extension matches the policy's globs
    fires: z3.BoolRef  # applies and (deny: true or error; allow: true)
    true: z3.BoolRef  # applies and the condition is true (no error)
    error: z3.BoolRef  # applies and the condition errors or is not a bool
    unanalysable: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.rule.qualified_id


@attrs.frozen
class DecisionFormula:
    request: SymRequest
    denies: tuple[RuleFormula, ...]
    allows: tuple[RuleFormula, ...]
    allowed: z3.BoolRef
    denied_by_rule: z3.BoolRef

    @property
    def rules(self) -> tuple[RuleFormula, ...]:
        return self.denies + self.allows

    @property
    def unanalysable(self) -> dict[str, tuple[str, ...]]:
        return {r.id: r.unanalysable for r in self.rules if r.unanalysable}


@cache
def parse_condition(source: str) -> ast.Node:
    return ast.parse(source, POLICY_ENVIRONMENT.namespaced)


def rules_for(policy_set: PolicySet, operation: str, extension: str | None = None) -> list[CompiledRule]:
    """The rules that can decide `operation`, in policy order (the engine's candidate order). For a concrete
    extension this is the engine's own candidate list (whatever its selection rules); for an open one, the
    rules one of whose operation selectors takes `operation` as the engine's plan resolves them (name globs,
    and `class:` selectors through the set's catalog, where an undeclared operation is in every class for a
    deny and in none for an allow), each then guarded by its extension globs in the formula."""
    if extension is not None:
        denies, allows = policy_set.candidates(extension, operation)
        return sorted(denies + allows, key=lambda r: r.order)
    return [r for r in policy_set.rules
            if any(operations.selector_matches(p, operation, r.deny, policy_set.catalog) for p in r.rule.operations)]


def extension_test(patterns: tuple[str, ...], request: SymRequest) -> z3.BoolRef:
    if request.extension_name is not None:
        return z3.BoolVal(any(globs.glob_match(p, request.extension_name) for p in patterns))
    extension = request.extension
    tests = []
    for p in patterns:
        try:
            tests.append(z3.InRe(extension, regex.glob_language(p, ".")))
        except NotAnalysable:  # a malformed glob is a load error; it cannot reach a PolicySet
            continue
    return z3.Or(tests) if tests else FALSE


def rule_formula(rule: CompiledRule, request: SymRequest) -> RuleFormula:
    applies = extension_test(rule.extension_patterns, request)
    if rule.program is None:
        return RuleFormula(rule, applies, applies, applies, FALSE, ())
    encoder = Encoder(request)
    try:
        val = encoder.condition(parse_condition(rule.program.source))
    except ast.CelSyntaxError as exc:  # the loader compiled it, so this cannot happen; fail towards "unknown"
        raise NotAnalysable(f"condition does not parse: {exc}") from None
    true, error = _outcome(val)
    fires = z3.And(applies, z3.Or(true, error)) if rule.deny else z3.And(applies, true)
    return RuleFormula(rule, applies, fires, z3.And(applies, true), z3.And(applies, error),
                       tuple(dict.fromkeys(encoder.reasons)))


def _outcome(val: Val) -> tuple[z3.BoolRef, z3.BoolRef]:
    if val.kind != "bool":
        return FALSE, TRUE
    return z3.And(val.ok, val.v), val.err


def decision_formula(policy_set: PolicySet, request: SymRequest) -> DecisionFormula:
    rules = rules_for(policy_set, request.operation, request.extension_name)
    formulas = [rule_formula(r, request) for r in rules]
    formulas = [f for f in formulas if not z3.is_false(f.applies)]  # rules of other extensions: left out
    denies = tuple(f for f in formulas if f.rule.deny)
    allows = tuple(f for f in formulas if not f.rule.deny)
    denied = z3.Or([f.fires for f in denies]) if denies else FALSE
    allowed = z3.And(z3.Not(denied), z3.Or([f.fires for f in allows])) if allows else FALSE
    return DecisionFormula(request, denies, allows, allowed, denied)


def first_firing(formulas: tuple[RuleFormula, ...], index: int) -> z3.BoolRef:
    """The rule at `index` is the one the engine reports: it fires and no earlier one of its effect does."""
    earlier = [f.fires for f in formulas[:index]]
    return z3.And(formulas[index].fires, z3.Not(z3.Or(earlier))) if earlier else formulas[index].fires
