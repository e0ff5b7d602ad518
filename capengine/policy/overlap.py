"""`partial-shadow`: a deny that overrides an allow for some requests, with one example request.

Full shadowing (an unconditional deny covering an allow) is lint's `shadowed-allow`; this finds the partial
case cheaply and syntactically: the two rules' extensions and operations overlap, and their conditions are not
provably disjoint. Only path literals are compared — `path.under("/a")`, `path.glob("/a/**")`,
`path == "/a"` as a top-level `&&` operand (or an `||` of them) — so `library == ...`, `args` tests and
everything else count as "may overlap" (documented limitation). Allows are indexed by operation and policies by
extension (lint's `_ByExtension`), so 10,000 single-extension files cost linear time, not quadratic.

The example request is checked against the compiled conditions: when both the deny and the allow match it the
message says so; otherwise it is a request of the overlapping shape. An overlap that some policy test exercises
(a case decided by the deny that the allow would have allowed) is intended and tested, and is not reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import attrs

from capengine.cel import ast
from capengine.cel.compiler import Program
from capengine.cel.values import CelError
from capengine.policy import globs, paths
from capengine.policy.codes import Code
from capengine.policy.engine import PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.lint import _ByExtension, _extensions_overlap, _Selectors
from capengine.policy.memo import PerPolicy
from capengine.policy.model import Finding, Policy, Request, RequestError, Rule
from capengine.policy.operations import Catalog

Region = tuple[str, str]  # ("under" | "glob" | "exact", literal)


@attrs.frozen
class Overlap:
    deny: Rule
    allow: Rule
    request: dict[str, Any]
    confirmed: bool

    @cached_property
    def _finding(self) -> Finding:  # once: an overlap remembered across reloads is reported on each of them
        return self._make_finding()

    def finding(self) -> Finding:
        return self._finding

    def _make_finding(self) -> Finding:
        shown = ", ".join(f"{k}: {v!r}" for k, v in self.request.items() if v not in ("", {}))
        how = "both conditions match it" if self.confirmed else \
            "a request of that shape: the conditions test more than the path, which this lint does not solve"
        return Finding(self.allow.location, "warning", Code.PARTIAL_SHADOW,
                       f"deny {self.deny.qualified_id} overrides allow {self.allow.qualified_id} for some requests, "
                       f"e.g. {{{shown}}} ({how}); if intended, add a policy test case that the deny decides, else "
                       "narrow one of the rules")


_PER_POLICY: PerPolicy[list[Overlap]] = PerPolicy()


def find(policies: list[Policy], catalog: Catalog, operations: list[str], programs: Mapping[str, Program],
         tested: Callable[[Rule, Rule], bool] = lambda deny, allow: False) -> list[Overlap]:
    """At most one overlap per allow rule (the first deny in policy order), so the output stays proportional
    to the policy set even when an org-wide deny overlaps every allow. Each allow meets only the denies of
    policies that can share an extension with it (by index), and operation sets are memoised per selector
    list. A policy's overlaps depend only on it and the deny-holding policies it meets, so they are remembered
    per policy (memo.py): a reload after one edited file looks at that file's neighbourhood only.
    `tested(deny, allow)`: the policy tests exercise that overlap (then it is intended, and not reported)."""
    selectors = _Selectors.of(operations, catalog)
    order: dict[int, int] = {}
    holders: list[_ByExtension] = []  # built only if some policy is looked at
    trees: dict[str, ast.Node] = {}

    def meets(policy: Policy) -> list[Policy]:
        if not holders:
            trees.update((p.source, p.node) for p in programs.values() if p.node is not None)
            order.update((id(p), i) for i, p in enumerate(policies))
            holders.append(_ByExtension(p for p in policies if any(r.effect == "deny" for r in p.rules)))
        return sorted(holders[0].candidates(policy), key=lambda p: order[id(p)])

    def untested(policy: Policy) -> list[Overlap]:
        if not any(r.effect == "allow" for r in policy.rules):
            return []
        return _overlaps(policy, meets(policy), catalog, selectors, programs, trees, lambda deny, allow: False)
    found: list[Overlap] = []
    for policy, overlaps in zip(policies, _PER_POLICY.run(tuple(operations), catalog, policies, untested),
                                strict=True):
        if any(tested(o.deny, o.allow) for o in overlaps):  # a tested overlap: look for the next deny
            overlaps = _overlaps(policy, meets(policy), catalog, selectors, programs, trees, tested)
        found.extend(overlaps)
    return found


def _overlaps(policy: Policy, meets: list[Policy], catalog: Catalog, selectors: _Selectors,
              programs: Mapping[str, Program], trees: Mapping[str, ast.Node],
              tested: Callable[[Rule, Rule], bool]) -> list[Overlap]:
    """The first overlapping deny (in policy order) of each allow rule of `policy`. `meets`: the policies with
    deny rules that may share an extension with it, in set order."""
    found: dict[str, Overlap] = {}
    allows = [r for r in policy.rules if r.effect == "allow"]
    for other in meets:
        if not _extensions_overlap(other, policy):
            continue
        for deny in other.rules:
            if deny.effect != "deny":
                continue
            denied = selectors.ops(deny.operations, True)
            for allow in allows:
                if allow.qualified_id in found:
                    continue
                common = sorted(denied & selectors.ops(allow.operations, False))
                deny_paths, allow_paths = _regions(deny, trees), _regions(allow, trees)
                if deny_paths is not None or allow_paths is not None:  # a path test: only ops with a path
                    common = [op for op in common if _takes_path(catalog, op)]
                if not common:
                    continue
                example = _example(deny_paths, allow_paths)
                if example is None or tested(deny, allow):
                    continue  # path literals provably disjoint, or the overlap is tested
                request = {"extension": _extension(other, policy), "operation": common[0], "path": example,
                           "library": _library(trees, deny, allow), "args": {}}
                # built from canonical literals: the activation is the request itself
                confirmed = _true(programs, deny, request) and _true(programs, allow, request)
                found[allow.qualified_id] = Overlap(deny, allow, request, confirmed)
        if len(found) == len(allows):
            break
    return list(found.values())


def _takes_path(catalog: Catalog, operation: str) -> bool:
    """Does a request of this operation carry a path (its schema has one; an undeclared schema may)?"""
    info = catalog.get(operation)
    if info is None or not info.declared:
        return True
    properties = info.schema.get("properties")
    return not isinstance(properties, Mapping) or "path" in properties


def exercised(allow: Rule, decided_by_deny: list[Mapping[str, Any]], policy_set: PolicySet,
              programs: Mapping[str, Program]) -> bool:
    """Some test request the deny decided would have been allowed by the allow: the overlap is intended and
    tested. `decided_by_deny`: the requests of the cases the deny decided."""
    for raw in decided_by_deny:
        try:
            request = Request.from_mapping(raw)
        except RequestError:
            continue
        _, allows = policy_set.candidates(request.extension, request.operation)
        if any(a.qualified_id == allow.qualified_id for a in allows) and _matches(programs, allow, raw):
            return True
    return False


def _matches(programs: Mapping[str, Program], rule: Rule, raw: Mapping[str, Any]) -> bool:
    try:
        activation = Request.from_mapping(raw).activation()
    except RequestError:
        return False
    return _true(programs, rule, activation)


def _true(programs: Mapping[str, Program], rule: Rule, activation: dict[str, Any]) -> bool:
    """Does the rule's condition hold for this activation (a condition that errors: no)?"""
    if rule.condition is None:
        return True
    program = programs.get(rule.qualified_id)
    if program is None:
        return False
    try:
        return program.evaluate(activation) is True
    except CelError:
        return False


def _extension(a: Policy, b: Policy) -> str:
    """An extension id both policies apply to (a literal one if either names one)."""
    for x in a.extensions + b.extensions:
        if globs.is_literal(x) and any(globs.glob_match(p, x) for p in a.extensions) \
                and any(globs.glob_match(p, x) for p in b.extensions):
            return x
    return "com.example.any"


def _library(trees: Mapping[str, ast.Node], *rules: Rule) -> str:
    for rule in rules:
        if rule.condition is not None and (found := _condition_facts(rule.condition, trees)[1]) is not None:
            return found
    return "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6" if any(r.condition and "library" in r.condition for r in rules) \
        else ""


def _is_var(node: ast.Node, name: str) -> bool:
    return isinstance(node, ast.Ident) and node.name == name


def _conjuncts(condition: str, trees: Mapping[str, ast.Node]) -> list[ast.Node]:
    """`trees`: the compiled programs' ASTs by source text (parsing again would miss the parse cache on a set
    with more distinct conditions than it holds)."""
    root = trees.get(condition)
    if root is None:
        try:
            root = ast.parse(condition, POLICY_ENVIRONMENT.namespaced)
        except ast.CelSyntaxError:
            return []
    return _flatten(root, "_&&_")


def _flatten(node: ast.Node, op: str) -> list[ast.Node]:
    if isinstance(node, ast.Call) and node.function == op and node.target is None:
        return [n for arg in node.args for n in _flatten(arg, op)]
    return [node]


def _region(node: ast.Node) -> Region | None:
    if isinstance(node, ast.Call) and node.function in ("under", "glob") and node.target is not None \
            and _is_var(node.target, "path") and len(node.args) == 1 and isinstance(node.args[0], ast.Literal) \
            and isinstance(node.args[0].value, str):
        literal = node.args[0].value
        if node.function == "glob":
            return ("glob", literal) if not globs.is_literal(literal) else ("exact", literal)
        try:
            return ("under", paths.canonical_path(literal))
        except paths.PathError:
            return None
    if isinstance(node, ast.Call) and node.function == "_==_" and _is_var(node.args[0], "path") \
            and isinstance(node.args[1], ast.Literal) and isinstance(node.args[1].value, str):
        return ("exact", node.args[1].value)
    return None


_KEPT = 65536
_facts: dict[str, tuple[list[Region] | None, str | None]] = {}  # condition text -> (regions, library literal)


def _condition_facts(condition: str, trees: Mapping[str, ast.Node]) -> tuple[list[Region] | None, str | None]:
    """The paths a condition can match as a union of regions (from its first path-constraining `&&` operand;
    None: unconstrained as far as this lint can tell), and the library it requires (`library == "..."`).
    Remembered by text across runs (bounded), so a reload after one edited file re-derives only that file's."""
    found = _facts.get(condition)
    if found is not None:
        return found
    regions: list[Region] | None = None
    library = None
    for conjunct in _conjuncts(condition, trees):
        if isinstance(conjunct, ast.Call) and conjunct.function == "_==_" and _is_var(conjunct.args[0], "library") \
                and isinstance(conjunct.args[1], ast.Literal) and isinstance(conjunct.args[1].value, str):
            library = library or conjunct.args[1].value
        if regions is None:
            parts = [_region(n) for n in _flatten(conjunct, "_||_")]
            if all(r is not None for r in parts):
                regions = [r for r in parts if r is not None]
    if len(_facts) >= _KEPT:
        _facts.clear()
    found = _facts[condition] = (regions, library)
    return found


def _regions(rule: Rule, trees: Mapping[str, ast.Node]) -> list[Region] | None:
    return _condition_facts(rule.condition, trees)[0] if rule.condition is not None else None


def _prefix(region: Region) -> str:
    """The literal directory every path of the region lies under."""
    kind, literal = region
    if kind != "glob":
        return literal
    segments = []
    for seg in literal.split("/"):
        if "*" in seg or "?" in seg:
            break
        segments.append(seg)
    return "/".join(segments) or "/"


def _instance(region: Region, under: str = "/") -> str:
    kind, literal = region
    if kind != "glob":
        return literal
    base = _prefix(region)
    rest = literal[len(base):].strip("/")
    if paths.is_under(under, base) and under != base:
        base = under
    text = "/".join("x" if seg == "**" else seg.replace("*", "x").replace("?", "x") for seg in rest.split("/") if seg)
    return base.rstrip("/") + "/" + text if text else base


def _contains(region: Region, path: str) -> bool:
    kind, literal = region
    if kind == "under":
        return paths.is_under(path, literal)
    if kind == "glob":
        return globs.compile_glob(literal, "/", True).fullmatch(path) is not None
    return path == literal


def _example(deny: list[Region] | None, allow: list[Region] | None) -> str | None:
    """A path in both regions; None only when they are provably disjoint."""
    if deny is None and allow is None:
        return "/example"
    if deny is None or allow is None:
        region = (deny or allow or [("under", "/")])[0]
        return _instance(region)
    for d in deny:
        for a in allow:
            if d[0] == "exact" or a[0] == "exact":  # decidable: is the one path in the other region?
                exact, other = (d, a) if d[0] == "exact" else (a, d)
                if _contains(other, exact[1]):
                    return exact[1]
                continue
            pd, pa = _prefix(d), _prefix(a)
            if not (paths.is_under(pd, pa) or paths.is_under(pa, pd)):
                continue  # different directories: disjoint
            deeper = pd if paths.is_under(pd, pa) else pa
            for candidate in (_instance(d, deeper), _instance(a, deeper), deeper):
                if _contains(d, candidate) and _contains(a, candidate):
                    return candidate
            return deeper  # same directory tree, no common path constructed: not provably disjoint
    return None
