"""Policy lint: rules that are legal but probably wrong. Warnings (errors under --strict)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from capengine.cel import ast
from capengine.cel.ast import Literal, parse
from capengine.cel.checker import did_you_mean
from capengine.cel.compiler import Program
from capengine.policy import globs
from capengine.policy.codes import Code
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.model import Finding, Policy, Rule, TestSuite
from capengine.policy.operations import Catalog, builtin, selector_matches

CONTENT = "reveals-content"


class _ByExtension:
    """Which policies could apply to a common extension, without comparing every pair: policies whose
    extension patterns are all literal ids are found by id; the others (wildcards: org-wide baselines) are
    candidates for everything. Keeps the cross-policy lints linear in the common case (one policy per
    extension), not quadratic (10,000 files)."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.by_id: dict[str, list[Policy]] = {}
        self.wild: list[Policy] = []
        for policy in policies:
            if all(globs.is_literal(p) for p in policy.extensions):
                for pattern in dict.fromkeys(policy.extensions):
                    self.by_id.setdefault(pattern, []).append(policy)
            else:
                self.wild.append(policy)
        self.every = [p for group in self.by_id.values() for p in group] + self.wild

    def candidates(self, policy: Policy) -> list[Policy]:
        """A superset of the policies whose extension patterns can match an extension `policy` applies to,
        in no particular order and without duplicates."""
        if not all(globs.is_literal(p) for p in policy.extensions):
            return list({id(p): p for p in self.every}.values())
        found = {id(p): p for p in self.wild}
        for pattern in policy.extensions:
            for other in self.by_id.get(pattern, ()):
                found[id(other)] = other
        return list(found.values())


def lint(policies: list[Policy], operations: Iterable[str] | None = None,
         extension_ids: Iterable[str] | None = None, catalog: Catalog | None = None,
         programs: Mapping[str, Program] | None = None) -> list[Finding]:
    """`programs`: the compiled conditions by qualified rule id, whose ASTs lint reads instead of parsing
    every condition again (parsing dominates a large check)."""
    asts = _Asts(programs or {})
    findings: list[Finding] = []
    catalog = catalog or builtin()
    ops = sorted(operations) if operations is not None else None
    exts = sorted(extension_ids) if extension_ids is not None else None
    denies_of: dict[int, list[Rule]] = {}
    for p in policies:
        denies = [r for r in p.rules if r.effect == "deny" and r.condition is None]
        if denies:
            denies_of[id(p)] = denies
    deny_index = _ByExtension(p for p in policies if id(p) in denies_of)
    findings.extend(_content_around_deny(policies, catalog, ops, asts))
    findings.extend(_nfd_literals(policies, asts))
    for policy in policies:
        if exts is not None:
            for i, pattern in enumerate(policy.extensions):
                if not any(globs.glob_match(pattern, e) for e in exts):
                    at = policy.extension_locations[i] if i < len(policy.extension_locations) else policy.location
                    findings.append(Finding(at, "warning", Code.UNUSED_EXTENSION_GLOB,
                                            f"policy '{policy.name}': extensions pattern '{pattern}' matches no "
                                            "extension in the extensions directory"))
        for rule in policy.rules:
            unconditional = [(d, r) for d in deny_index.candidates(policy) for r in denies_of[id(d)]]
            findings.extend(_rule_findings(policy, rule, ops, unconditional, catalog, asts))
        findings.extend(_limit_findings(policy, ops if ops is not None else catalog.names()))
    return findings


def _rule_findings(policy: Policy, rule: Rule, ops: list[str] | None, denies: list[tuple[Policy, Rule]],
                   catalog: Catalog, asts: _Asts) -> list[Finding]:
    out = []
    where, rid = rule.location, rule.qualified_id
    names = ops if ops is not None else catalog.names()
    is_deny = rule.effect == "deny"
    dead = {p for p in rule.operations if not any(selector_matches(p, op, is_deny, catalog) for op in names)}
    if rule.effect == "allow" and rule.condition is None and any(
            p not in dead and all(seg in ("*", "**") for seg in p.split(".")) for p in rule.operations):
        out.append(Finding(where, "warning", Code.BROAD_ALLOW,
                           f"rule {rid} allows every operation ({', '.join(rule.operations)}) with no condition; "
                           "list the operations it needs or add a condition"))
    if asts.literally_false(rule.condition):
        out.append(Finding(where, "warning", Code.NEVER_MATCHES, f"rule {rid} has condition 'false' and never matches"))
    for i, pattern in enumerate(rule.operations):
        if pattern in dead:
            at = rule.operation_locations[i] if i < len(rule.operation_locations) else where
            out.append(Finding(at, "error", Code.UNKNOWN_OPERATION,
                               f"rule {rid}: operation pattern '{pattern}' matches no registered operation"
                               f"{did_you_mean(pattern, names)}; see `capengine ops` (operations an embedding "
                               "registers are declared with their schema directory)"))
    if rule.effect == "allow" and denies:
        allowed = [op for op in names if any(selector_matches(s, op, False, catalog) for s in rule.operations)]
        order = {id(r): i for i, (_, r) in enumerate(denies)}
        for deny_policy, deny in sorted(denies, key=lambda pr: (pr[0].location, order[id(pr[1])])):
            if _covers(deny_policy, deny, policy, rule, allowed, catalog):
                out.append(Finding(where, "warning", Code.SHADOWED_ALLOW,
                                   f"allow rule {rid} can never take effect: unconditional deny "
                                   f"{deny.qualified_id} covers all its operations and extensions"))
                break
    return out


def _limit_findings(policy: Policy, names: list[str]) -> list[Finding]:
    out = []
    for limit in policy.limits:
        for i, pattern in enumerate(limit.operations):
            if not any(globs.glob_match(pattern, op) for op in names):
                at = limit.operation_locations[i] if i < len(limit.operation_locations) else limit.location
                out.append(Finding(at, "warning", Code.UNKNOWN_LIMIT_OPERATION,
                                   f"policy '{policy.name}': limit on '{pattern}' matches no registered operation, "
                                   f"so it limits nothing{did_you_mean(pattern, names)}"))
    return out


class _Asts:
    """Condition text -> AST for one lint run: the compiled programs' trees, else parsed once."""

    def __init__(self, programs: Mapping[str, Program]) -> None:
        self._trees: dict[str, ast.Node | None] = {p.source: p.node for p in programs.values() if p.node is not None}

    def of(self, condition: str | None) -> ast.Node | None:
        """None for no condition, and for one that does not parse (the loader reports that)."""
        if condition is None:
            return None
        if condition not in self._trees:
            try:
                self._trees[condition] = parse(condition, POLICY_ENVIRONMENT.namespaced)
            except Exception:
                self._trees[condition] = None
        return self._trees[condition]

    def nodes(self, condition: str | None) -> Iterator[object]:
        """Every AST node of a condition."""
        root = self.of(condition)
        if root is None:
            return
        stack: list[object] = [root]
        while stack:
            n = stack.pop()
            if isinstance(n, tuple):
                stack.extend(n)
            elif attrs.has(type(n)) and not isinstance(n, ast.Pos):
                yield n
                node_type: type = type(n)  # an attrs class: attrs.has() said so
                stack.extend(getattr(n, f.name) for f in attrs.fields(node_type))

    def reads_variable(self, condition: str | None, name: str) -> bool:
        return any(isinstance(n, ast.Ident) and n.name == name for n in self.nodes(condition))

    def literally_false(self, condition: str | None) -> bool:
        node = self.of(condition)
        return isinstance(node, Literal) and node.value is False


def _pattern_covers(general: str, specific: str) -> bool:
    """Does glob `general` match every name glob `specific` matches? Exact for literal `specific`; for
    patterns, checked by treating the specific pattern's text as a name (sound for '*'/'**' over it)."""
    if general == "**":
        return True
    if "**" in specific and "**" not in general:
        return False
    return globs.glob_match(general, specific)


def _covers(deny_policy: Policy, deny: Rule, policy: Policy, rule: Rule, allowed: list[str],
            catalog: Catalog) -> bool:
    """`allowed`: the operations `rule` grants (computed once per rule by the caller)."""
    if any(s.startswith("class:") for s in rule.operations + deny.operations):  # compare what they name
        ops_covered = bool(allowed) and all(any(selector_matches(d, op, True, catalog) for d in deny.operations)
                                            for op in allowed)
    else:
        ops_covered = all(any(_pattern_covers(d, op) for d in deny.operations) for op in rule.operations)
    exts_covered = all(any(_pattern_covers(d, e) for d in deny_policy.extensions) for e in policy.extensions)
    return ops_covered and exts_covered


def _extensions_overlap(a: Policy, b: Policy) -> bool:
    """Could some extension id fall under both policies? (Each pattern's text tried as a name of the other.)"""
    return any(globs.glob_match(x, y) or globs.glob_match(y, x) or "**" in (x, y)
               for x in a.extensions for y in b.extensions)


def _content_around_deny(policies: list[Policy], catalog: Catalog, ops: list[str] | None,
                         asts: _Asts) -> list[Finding]:
    """A deny that hides some files from one content-revealing operation while an allow still lets another
    content-revealing operation (OCR, sidecars of the file) read them: the deny protects nothing."""
    names = ops if ops is not None else catalog.names()
    revealing = [op for op in names if (info := catalog.get(op)) is not None and CONTENT in info.classes]
    # per policy, once: which content-revealing operation some allow rule of it grants (and which rule)
    allowed: dict[int, dict[str, str]] = {}
    for other in policies:
        grants: dict[str, str] = {}
        for allow in other.rules:
            if allow.effect == "allow":
                for op in revealing:
                    if op not in grants and any(selector_matches(s, op, False, catalog) for s in allow.operations):
                        grants[op] = allow.qualified_id
        if grants:
            allowed[id(other)] = grants
    granting = _ByExtension(p for p in policies if id(p) in allowed)
    out: list[Finding] = []
    for policy in policies:
        for deny in policy.rules:
            if deny.effect != "deny" or not (deny.condition is None or asts.reads_variable(deny.condition, "path")):
                continue
            denied = [op for op in revealing if any(selector_matches(s, op, True, catalog) for s in deny.operations)]
            if not denied:
                continue
            leaks: dict[str, str] = {}
            for other in sorted(granting.candidates(policy), key=lambda p: p.location):
                if _extensions_overlap(policy, other):
                    for op, rule in allowed[id(other)].items():
                        if op not in denied:
                            leaks.setdefault(op, rule)
            if leaks:
                shown = ", ".join(f"{op} (allowed by {rule})" for op, rule in sorted(leaks.items()))
                out.append(Finding(deny.location, "warning", Code.CONTENT_REACHABLE,
                                   f"deny {deny.qualified_id} hides these paths from {', '.join(denied)}, but "
                                   f"{shown} also reveal file content; deny every operation that reveals it "
                                   f'with operations: ["class:{CONTENT}"]'))
    return out


def _nfd_literals(policies: list[Policy], asts: _Asts) -> list[Finding]:
    """Request paths are NFC-normalised before any rule sees them: a string literal in another normal form
    (typed on macOS, pasted from a decomposed file name) can never be equal to a path."""
    out: list[Finding] = []
    for policy in policies:
        for rule in policy.rules:
            for n in asts.nodes(rule.condition):
                if isinstance(n, Literal) and isinstance(n.value, str) \
                        and unicodedata.normalize("NFC", n.value) != n.value:
                    out.append(Finding(rule.location, "warning", Code.NFD_LITERAL,
                                       f"rule {rule.qualified_id}: string {n.value!r} is not in Unicode NFC, but "
                                       "every request path is; write it precomposed (path.under and path.glob "
                                       "normalise their literal themselves)"))
                    break
    return out


def test_findings(suites: list[TestSuite], policies: list[Policy], ops: list[str]) -> list[Finding]:
    """Test cases that cannot test what they claim: an operation nothing registers (`vdfs.stats` with
    `expect: deny` passes by default deny), an extension no policy applies to."""
    out = []
    literal = {p for pol in policies for p in pol.extensions if globs.is_literal(p)}
    wild = sorted({p for pol in policies for p in pol.extensions if not globs.is_literal(p)})
    for suite in suites:
        for case in suite.cases:
            op, ext = case.request.get("operation"), case.request.get("extension")
            if isinstance(op, str) and op not in ops:
                out.append(Finding(case.location, "warning", Code.TEST_UNKNOWN_OPERATION,
                                   f"{suite.name} / {case.name}: operation '{op}' is not registered"
                                   f"{did_you_mean(op, ops)}; the case tests only the default deny"))
            if isinstance(ext, str) and ext not in literal and not any(globs.glob_match(p, ext) for p in wild):
                exts = sorted(literal)
                out.append(Finding(case.location, "warning", Code.TEST_UNKNOWN_EXTENSION,
                                   f"{suite.name} / {case.name}: no policy applies to extension '{ext}'"
                                   f"{did_you_mean(ext, exts)}; the case tests only the default deny"))
    return out


def extension_ids(directory: str | Path) -> list[str]:
    """Extension ids declared by manifests in an extensions directory (one sub-directory per extension)."""
    import yaml

    ids = []
    for manifest in sorted(Path(directory).glob("*/manifest.yaml")):
        try:
            data = yaml.safe_load(manifest.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            ids.append(data["id"])
    return ids
