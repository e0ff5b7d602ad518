"""The decision engine: a compiled, immutable policy set that answers `decide(request)`.

Semantics: default deny; any matching deny beats every allow whatever the order of files or rules; a
condition that errors or yields a non-bool counts as matched for deny rules and unmatched for allow rules
(fail closed), and is reported in the decision. A rule's operations are globs over names or operation classes
(`class:reveals-content`, resolved against the operation catalog; an operation that declares nothing is in
every class for a deny and in none for an allow). Rules are indexed by exact operation name and by pattern,
and the candidate list per (extension, operation) is computed once and cached, so deciding a call never
scans unrelated rules; where many rules share one (extension, operation), a RuleIndex over their literal
path/library/args guards picks the few that can match (rule_index.py), through a function generated for
that index (select_codegen.py). What a rule decides, and the default deny of each (extension, operation), are
Decisions made once per revision: a call that reports no error returns one of them. A PolicySet is never
mutated after construction: hot reload builds a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from capengine.cel import ast
from capengine.cel.checker import did_you_mean
from capengine.cel.compiler import Program
from capengine.cel.values import CelError
from capengine.policy import globs, operations, select_codegen
from capengine.policy.model import Decision, EvalError, Policy, Request, RequestError, Rule
from capengine.policy.operations import Catalog
from capengine.policy.rule_index import RuleIndex

if TYPE_CHECKING:  # the engine needs only the loader's result, never the YAML loader itself
    from capengine.policy.loader import LoadResult

_CACHE_LIMIT = 65536
INDEX_THRESHOLD = 8  # rules per (extension, operation) above which decide() selects candidates by index


@attrs.frozen
class CompiledRule:
    rule: Rule
    program: Program | None
    extension_patterns: tuple[str, ...]
    qualified_id: str
    deny: bool
    order: int  # position in the set: candidates are evaluated in this order
    # what deciding a call by this rule returns when no earlier rule reported an error: a Decision is
    # immutable, so one is made per rule and revision rather than one per call
    decision: Decision = attrs.field(eq=False, repr=False)

    @property
    def guard_node(self) -> ast.Node | None:
        return self.program.node if self.program is not None else None


@attrs.frozen
class Plan:
    """How one (extension, operation) is decided: its rules in policy order, an index over them when there
    are enough to make one pay, and `select`, the request's candidates as (deny rules, allow rules) in policy
    order: the index's generated selector (select_codegen.py), or every rule."""

    denies: tuple[CompiledRule, ...]
    allows: tuple[CompiledRule, ...]
    index: RuleIndex | None
    select: Callable[[Request], tuple[Sequence[CompiledRule], Sequence[CompiledRule]]] = attrs.field(eq=False)
    refusal: Decision = attrs.field(eq=False)  # the default deny, when no rule reported an error


@attrs.frozen
class RuleTrace:
    """How one candidate rule fared, for `explain`."""

    rule: str
    effect: str
    result: str  # "matched" | "not matched" | "error"
    value: object
    error: str | None
    condition: str | None = None  # the condition's source text (None: unconditional)


@attrs.frozen
class Explanation:
    decision: Decision
    trace: tuple[RuleTrace, ...]
    reason: str
    # rules of the set that did not apply to this request, and why (extension or operation mismatch)
    skipped: tuple[tuple[str, str], ...] = ()


class PolicySet:
    def __init__(self, policies: Iterable[Policy], programs: Mapping[str, Program], revision: str = "",
                 catalog: Catalog | None = None, index_threshold: int = INDEX_THRESHOLD) -> None:
        self.policies = tuple(policies)
        self.index_threshold = index_threshold
        self.revision = revision
        self.catalog = catalog or operations.builtin()
        self.rules: list[CompiledRule] = []
        # Rules by the extensions they apply to: policies naming literal ids are found by id (a set with one
        # policy per extension stays cheap to plan for however many there are), the rest by glob.
        self._by_extension: dict[str, list[CompiledRule]] = {}
        self._any_extension: list[CompiledRule] = []
        for policy in self.policies:
            literal = all(globs.is_literal(p) for p in policy.extensions)
            for rule in policy.rules:
                deny = rule.effect == "deny"
                decision = Decision(False, (rule.qualified_id,), rule.message or f"denied by {rule.qualified_id}",
                                    (), revision) if deny else Decision(True, (rule.qualified_id,), "", (), revision)
                compiled = CompiledRule(rule, programs.get(rule.qualified_id), policy.extensions,
                                        rule.qualified_id, deny, len(self.rules), decision)
                self.rules.append(compiled)
                if literal:
                    for pattern in dict.fromkeys(policy.extensions):
                        self._by_extension.setdefault(pattern, []).append(compiled)
                else:
                    self._any_extension.append(compiled)
        self._plans: dict[tuple[str, str], Plan] = {}
        fields: set[str] | None = set()
        for program in programs.values():
            if fields is None or program.arg_fields is None:
                fields = None
            else:
                fields |= program.arg_fields
        self.arg_fields: frozenset[str] | None = None if fields is None else frozenset(fields)

    def args_seen(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a call's args that some condition of this set can read: what a log keeps to re-decide
        the call, without copying payloads no rule looks at."""
        if self.arg_fields is None:
            return dict(args)
        if not self.arg_fields:
            return {}
        return {k: v for k, v in args.items() if k in self.arg_fields}

    @classmethod
    def from_load(cls, result: LoadResult) -> PolicySet:
        return cls(result.policies, result.programs, result.revision, result.catalog)

    def candidates(self, extension: str, operation: str) -> tuple[tuple[CompiledRule, ...], tuple[CompiledRule, ...]]:
        """(deny rules, allow rules) that apply to this extension and operation, in policy order."""
        plan = self.plan(extension, operation)
        return plan.denies, plan.allows

    def plan(self, extension: str, operation: str) -> Plan:
        key = (extension, operation)
        found = self._plans.get(key)
        if found is not None:
            return found
        pool = self._by_extension.get(extension, []) + [
            r for r in self._any_extension if any(globs.glob_match(p, extension) for p in r.extension_patterns)]
        applicable = sorted((r for r in pool if self._names(r, operation)), key=lambda r: r.order)
        denies, allows = select_codegen.split(applicable)
        refusal = Decision(False, (), f"no policy allows {operation} for {extension}", (), self.revision)
        if len(applicable) > self.index_threshold:
            index = RuleIndex(applicable)
            found = Plan(denies, allows, index, select_codegen.generate(index), refusal)
        else:
            found = Plan(denies, allows, None, select_codegen.constant((denies, allows)), refusal)
        if len(self._plans) >= _CACHE_LIMIT:
            self._plans.clear()  # bounded: a hostile stream of operation names cannot grow memory
        self._plans[key] = found
        return found

    def _names(self, rule: CompiledRule, operation: str) -> bool:
        """Does one of the rule's operation selectors (a glob or a `class:` selector) name `operation`?"""
        for selector in rule.rule.operations:
            if operations.is_class_selector(selector):
                if self.catalog.in_class(selector[len(operations.CLASS_PREFIX):], operation, rule.deny):
                    return True
            elif globs.glob_match(selector, operation):
                return True
        return False

    def decide(self, request: Request) -> Decision:
        """RequestError for anything but a Request (build one with Request.from_mapping, or use decide_raw)."""
        if not isinstance(request, Request):
            raise RequestError(f"decide() takes a Request, not {type(request).__name__}; build one with "
                               "Request.from_mapping(...) or call decide_raw(...)")
        plan = self._plans.get((request.extension, request.operation)) or self.plan(request.extension,
                                                                                      request.operation)
        denies, allows = plan.select(request)
        if not denies and not allows:
            return plan.refusal
        activation = request.activation()
        errors: list[EvalError] = []
        for rule in denies:
            if rule.program is None:
                return self._decided(rule, errors)
            try:
                value = rule.program.evaluate(activation)
            except CelError as exc:
                errors.append(EvalError(rule.qualified_id, f"{exc} (deny rule treated as matched)"))
                return self._decided(rule, errors)
            if value is True:
                return self._decided(rule, errors)
            if value is not False:
                errors.append(EvalError(rule.qualified_id, f"condition returned {value!r}, not bool "
                                                           "(deny rule treated as matched)"))
                return self._decided(rule, errors)
        for rule in allows:
            if rule.program is None:
                return self._decided(rule, errors)
            try:
                value = rule.program.evaluate(activation)
            except CelError as exc:
                errors.append(EvalError(rule.qualified_id, f"{exc} (allow rule treated as not matched)"))
                continue
            if value is True:
                return self._decided(rule, errors)
            if value is not False:
                errors.append(EvalError(rule.qualified_id, f"condition returned {value!r}, not bool "
                                                           "(allow rule treated as not matched)"))
        return attrs.evolve(plan.refusal, errors=tuple(errors)) if errors else plan.refusal

    @staticmethod
    def _decided(rule: CompiledRule, errors: list[EvalError]) -> Decision:
        """The rule's decision, with the errors reported by the rules evaluated before it."""
        return attrs.evolve(rule.decision, errors=tuple(errors)) if errors else rule.decision

    def decide_raw(self, raw: object) -> Decision:
        """Decide a request given as JSON; anything malformed (not an object, a path escaping the root, a NaN
        in args) is denied with an "invalid request" reason, never raised."""
        try:
            request = Request.from_mapping(raw)  # type: ignore[arg-type]  # checked there: RequestError
        except RequestError as exc:
            return self._invalid(exc)
        return self.decide(request)

    def _invalid(self, exc: RequestError) -> Decision:
        return Decision(False, (), f"invalid request: {exc}", (EvalError("request", str(exc)),), self.revision)

    def explain(self, raw: Request | Mapping[str, Any]) -> Explanation:
        """Evaluate every candidate rule (no short-circuit) and say why the decision came out as it did. Takes
        a Request or its JSON form; a malformed one is explained as denied before any rule."""
        try:
            request = raw if isinstance(raw, Request) else Request.from_mapping(raw)
        except RequestError as exc:
            return Explanation(self._invalid(exc), (), f"the request is invalid and is denied before any rule: {exc}")
        denies, allows = self.candidates(request.extension, request.operation)
        activation = request.activation()
        trace = []
        for rule in denies + allows:
            condition = rule.rule.condition
            if rule.program is None:
                trace.append(RuleTrace(rule.qualified_id, rule.rule.effect, "matched", True, None, condition))
                continue
            try:
                value = rule.program.evaluate(activation)
            except CelError as exc:
                trace.append(RuleTrace(rule.qualified_id, rule.rule.effect, "error", None, str(exc), condition))
                continue
            result = "matched" if value is True else "not matched" if value is False else "error"
            error = None if value in (True, False) and type(value) is bool else f"non-bool result {value!r}"
            trace.append(RuleTrace(rule.qualified_id, rule.rule.effect, result, value, error, condition))
        decision = self.decide(request)
        candidates = {id(r) for r in denies + allows}
        skipped = tuple((r.qualified_id, self._why_not(r, request)) for r in self.rules if id(r) not in candidates)
        errored = {t.rule for t in trace if t.result == "error"}
        if self.catalog.operations and self.catalog.get(request.operation) is None:
            hint = did_you_mean(request.operation, self.catalog.names())
            reason = f"unknown operation '{request.operation}'{hint}"
            reason += ": no rule applies, default deny" if not denies and not allows else ""
            if decision.rules:
                reason += f"; denied by {decision.rules[0]}"
        elif not denies and not allows:
            reason = f"no rule applies to {request.operation} for {request.extension}: default deny"
        elif decision.allowed:
            reason = f"allowed by {decision.rules[0]}; no deny rule matched"
        elif decision.rules and decision.rules[0] in errored:
            reason = (f"denied by {decision.rules[0]}: its condition errored, which counts as matched for a deny "
                      "(fail closed)")
        elif decision.rules:
            reason = f"denied by {decision.rules[0]}: deny rules override every allow"
        else:
            reason = "no allow rule matched (rules whose condition errored count as not matched): default deny"
        return Explanation(decision, tuple(trace), reason, skipped)

    def _why_not(self, rule: CompiledRule, request: Request) -> str:
        if not any(globs.glob_match(p, request.extension) for p in rule.extension_patterns):
            return f"extension {request.extension} is not in {', '.join(rule.extension_patterns)}"
        return f"operation {request.operation} is not in {', '.join(rule.rule.operations)}"
