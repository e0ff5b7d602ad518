"""Policy lint: rules that are legal but probably wrong. Warnings (errors under --strict)."""

from __future__ import annotations

import json
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

import attrs

from capengine.cel import ast
from capengine.cel.ast import Literal, parse
from capengine.cel.checker import did_you_mean
from capengine.cel.compiler import Program
from capengine.policy import globs, review
from capengine.policy.codes import Code
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.memo import IdentityMemo, PerPolicy
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


_PER_POLICY: PerPolicy[list[Finding]] = PerPolicy()


def lint(policies: list[Policy], operations: Iterable[str] | None = None,
         extension_ids: Iterable[str] | None = None, catalog: Catalog | None = None,
         programs: Mapping[str, Program] | None = None) -> list[Finding]:
    """`programs`: the compiled conditions by qualified rule id, whose ASTs lint reads instead of parsing
    every condition again (parsing dominates a large check). Each policy's findings depend only on it, the
    policies it can meet (sharing an extension) and the operation names, so they are remembered per policy
    (memo.py): a reload after one edited file lints that file's policies and their neighbours only."""
    catalog = catalog or builtin()
    ops = sorted(operations) if operations is not None else None
    exts = sorted(extension_ids) if extension_ids is not None else None
    names = ops if ops is not None else catalog.names()
    context = (tuple(names), None if exts is None else tuple(exts))
    selectors = _Selectors.of(names, catalog)
    revealing = [op for op in names if (info := catalog.get(op)) is not None and CONTENT in info.classes]
    denies_of: dict[int, list[Rule]] = {}
    grants_of: dict[int, dict[str, str]] = {}
    indexes: list[_ByExtension] = []  # (deny holders, granting policies)
    asts: list[_Asts] = []

    def prepare() -> None:
        """The whole-set facts, only when some policy is to be linted (none are after an edit elsewhere)."""
        asts.append(_Asts(programs or {}))
        for p in policies:
            denies = [r for r in p.rules if r.effect == "deny" and r.condition is None]
            if denies:
                denies_of[id(p)] = denies
            grants = _GRANTS.get(context, (catalog, p), partial(_grants, p, revealing, selectors))
            if grants:
                grants_of[id(p)] = grants
        indexes.append(_ByExtension(p for p in policies if id(p) in denies_of))
        indexes.append(_ByExtension(p for p in policies if id(p) in grants_of))

    def compute(policy: Policy) -> list[Finding]:
        if not indexes:
            prepare()
        unconditional = [(d, r) for d in indexes[0].candidates(policy) for r in denies_of[id(d)]]
        out = _content_around_deny(policy, indexes[1].candidates(policy), grants_of, revealing, selectors, asts[0])
        out.extend(_nfd_literals(policy, asts[0]))
        out.extend(_policy_findings(policy, unconditional, exts, names, selectors, asts[0]))
        return out
    findings: list[Finding] = []
    for found in _PER_POLICY.run(context, catalog, policies, compute):
        findings.extend(found)
    findings.extend(review.set_findings(policies, programs or {}))
    return findings


def _policy_findings(policy: Policy, unconditional: list[tuple[Policy, Rule]], exts: list[str] | None,
                     names: list[str], selectors: _Selectors, asts: _Asts) -> list[Finding]:
    findings: list[Finding] = []
    if exts is not None:
        for i, pattern in enumerate(policy.extensions):
            if not any(globs.glob_match(pattern, e) for e in exts):
                at = policy.extension_locations[i] if i < len(policy.extension_locations) else policy.location
                findings.append(Finding(at, "warning", Code.UNUSED_EXTENSION_GLOB,
                                        f"policy '{policy.name}': extensions pattern '{pattern}' matches no "
                                        "extension in the extensions directory"))
    for rule in policy.rules:
        findings.extend(_rule_findings(policy, rule, unconditional, selectors, asts))
    findings.extend(_limit_findings(policy, names))
    return findings


def _rule_findings(policy: Policy, rule: Rule, denies: list[tuple[Policy, Rule]], selectors: _Selectors,
                   asts: _Asts) -> list[Finding]:
    out = []
    where, rid = rule.location, rule.qualified_id
    names = selectors.names
    is_deny = rule.effect == "deny"
    dead = {p for p in rule.operations if not selectors.ops((p,), is_deny)}
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
                               f"{did_you_mean(pattern, names) or _glob_hint(pattern)}; see `capengine ops` "
                               "(operations an embedding registers are declared with their schema directory)"))
    if rule.effect == "allow" and denies:
        granted = selectors.ops(rule.operations, False)
        allowed = [op for op in names if op in granted]
        order = {id(r): i for i, (_, r) in enumerate(denies)}
        for deny_policy, deny in sorted(denies, key=lambda pr: (_where(pr[0]), order[id(pr[1])])):
            if _covers(deny_policy, deny, policy, rule, allowed, selectors):
                out.append(Finding(where, "warning", Code.SHADOWED_ALLOW,
                                   f"allow rule {rid} can never take effect: unconditional deny "
                                   f"{deny.qualified_id} covers all its operations and extensions"))
                break
    return out


def _glob_hint(pattern: str) -> str:
    """Why a glob such as `*` or `vdfs*` matches nothing: `*` stays within one dot-separated segment."""
    if "*" in pattern and "**" not in pattern:
        return ("; '*' matches within one dot-separated segment, so it never crosses a '.': write 'vdfs.*' for "
                "one namespace or list the operations ('**', every operation, also grants those registered later)")
    return ""


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


class _Selectors:
    """Which registered operations a rule's operation selectors name (globs or `class:` selectors, which
    depend on the rule's effect), computed once per (selectors, effect) in a lint run: the same few selectors
    recur across thousands of rules."""

    def __init__(self, names: list[str], catalog: Catalog) -> None:
        self.names, self.catalog = names, catalog
        self._memo: dict[tuple[tuple[str, ...], bool], frozenset[str]] = {}

    @classmethod
    def of(cls, names: list[str], catalog: Catalog) -> _Selectors:
        """The one instance for these operation names and catalog, kept across runs (reloads)."""
        return _SELECTORS.get(tuple(names), (catalog,), lambda: cls(list(names), catalog))

    def ops(self, selectors: Iterable[str], deny: bool) -> frozenset[str]:
        key = (tuple(selectors), deny)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = frozenset(op for op in self.names if any(
                selector_matches(s, op, deny, self.catalog) for s in key[0]))
        return found


_SELECTORS: IdentityMemo[_Selectors] = IdentityMemo(64)
_GRANTS: IdentityMemo[dict[str, str]] = IdentityMemo()


@attrs.frozen
class _Facts:
    """What lint needs to know of one condition's text: which variables it reads, its first string literal
    not in NFC, whether it is the literal `false`."""

    idents: frozenset[str]
    non_nfc: str | None
    literally_false: bool


_FACTS_KEPT = 65536
_facts: OrderedDict[str, _Facts | None] = OrderedDict()  # by condition text, across lint runs (reloads)
_facts_lock = threading.Lock()


class _Asts:
    """Condition text -> facts for lint: from the compiled programs' trees (else parsed once), remembered by
    text across runs, so a reload after one edited file walks only that file's conditions."""

    def __init__(self, programs: Mapping[str, Program]) -> None:
        self._trees: dict[str, ast.Node] = {p.source: p.node for p in programs.values() if p.node is not None}

    def facts(self, condition: str | None) -> _Facts | None:
        """None for no condition, and for one that does not parse (the loader reports that)."""
        if condition is None:
            return None
        with _facts_lock:
            if condition in _facts:
                _facts.move_to_end(condition)
                return _facts[condition]
        found = self._compute(condition)
        with _facts_lock:
            _facts[condition] = found
            while len(_facts) > _FACTS_KEPT:
                _facts.popitem(last=False)
        return found

    def _compute(self, condition: str) -> _Facts | None:
        root = self._trees.get(condition)
        if root is None:
            try:
                root = parse(condition, POLICY_ENVIRONMENT.namespaced)
            except Exception:
                return None
        idents: set[str] = set()
        non_nfc = None
        for n in ast.walk(root):
            if isinstance(n, ast.Ident):
                idents.add(n.name)
            elif isinstance(n, Literal) and isinstance(n.value, str) and non_nfc is None \
                    and unicodedata.normalize("NFC", n.value) != n.value:
                non_nfc = n.value
        return _Facts(frozenset(idents), non_nfc, isinstance(root, Literal) and root.value is False)

    def reads_variable(self, condition: str | None, name: str) -> bool:
        facts = self.facts(condition)
        return facts is not None and name in facts.idents

    def literally_false(self, condition: str | None) -> bool:
        facts = self.facts(condition)
        return facts is not None and facts.literally_false


def _pattern_covers(general: str, specific: str) -> bool:
    """Does glob `general` match every name glob `specific` matches? Exact for literal `specific`; for
    patterns, checked by treating the specific pattern's text as a name (sound for '*'/'**' over it)."""
    if general == "**":
        return True
    if "**" in specific and "**" not in general:
        return False
    return globs.glob_match(general, specific)


def _covers(deny_policy: Policy, deny: Rule, policy: Policy, rule: Rule, allowed: list[str],
            selectors: _Selectors) -> bool:
    """`allowed`: the operations `rule` grants (computed once per rule by the caller)."""
    if any(s.startswith("class:") for s in rule.operations + deny.operations):  # compare what they name
        denied = selectors.ops(deny.operations, True)
        ops_covered = bool(allowed) and all(op in denied for op in allowed)
    else:
        ops_covered = all(any(_pattern_covers(d, op) for d in deny.operations) for op in rule.operations)
    exts_covered = all(any(_pattern_covers(d, e) for d in deny_policy.extensions) for e in policy.extensions)
    return ops_covered and exts_covered


def _extensions_overlap(a: Policy, b: Policy) -> bool:
    """Could some extension id fall under both policies? (Each pattern's text tried as a name of the other.)"""
    return any(globs.glob_match(x, y) or globs.glob_match(y, x) or "**" in (x, y)
               for x in a.extensions for y in b.extensions)


def _where(policy: Policy) -> tuple[str, int, int]:
    """A policy's location as a plain tuple: the same order as sorting by Location, without attrs' comparison
    methods building tuples on every compare (a wildcard policy meets thousands)."""
    at = policy.location
    return at.file, at.line, at.column


def _grants(policy: Policy, revealing: list[str], selectors: _Selectors) -> dict[str, str]:
    """Which content-revealing operations some allow rule of the policy grants, and the first rule that does."""
    grants: dict[str, str] = {}
    for allow in policy.rules:
        if allow.effect == "allow":
            granted = selectors.ops(allow.operations, False)
            for op in revealing:
                if op not in grants and op in granted:
                    grants[op] = allow.qualified_id
    return grants


def _content_around_deny(policy: Policy, granting: list[Policy], grants_of: Mapping[int, dict[str, str]],
                         revealing: list[str], selectors: _Selectors, asts: _Asts) -> list[Finding]:
    """A deny that hides some files from one content-revealing operation while an allow still lets another
    content-revealing operation (OCR, sidecars of the file) read them: the deny protects nothing.
    `granting`: the policies that may share an extension with `policy` and grant such an operation."""
    out: list[Finding] = []
    for deny in policy.rules:
        if deny.effect != "deny" or not (deny.condition is None or asts.reads_variable(deny.condition, "path")):
            continue
        denied_ops = selectors.ops(deny.operations, True)
        denied = [op for op in revealing if op in denied_ops]
        if not denied:
            continue
        leaks: dict[str, str] = {}
        for other in sorted(granting, key=_where):
            if _extensions_overlap(policy, other):
                for op, rule in grants_of[id(other)].items():
                    if op not in denied:
                        leaks.setdefault(op, rule)
        if leaks:
            shown = ", ".join(f"{op} (allowed by {rule})" for op, rule in sorted(leaks.items()))
            out.append(Finding(deny.location, "warning", Code.CONTENT_REACHABLE,
                               f"deny {deny.qualified_id} hides these paths from {', '.join(denied)}, but "
                               f"{shown} also reveal file content; deny every operation that reveals it "
                               f'with operations: ["class:{CONTENT}"]'))
    return out


def _nfd_literals(policy: Policy, asts: _Asts) -> list[Finding]:
    """Request paths are NFC-normalised before any rule sees them: a string literal in another normal form
    (typed on macOS, pasted from a decomposed file name) can never be equal to a path."""
    out: list[Finding] = []
    for rule in policy.rules:
        facts = asts.facts(rule.condition)
        if facts is not None and facts.non_nfc is not None:
            out.append(Finding(rule.location, "warning", Code.NFD_LITERAL,
                               f"rule {rule.qualified_id}: string {facts.non_nfc!r} is not in Unicode NFC, but "
                               "every request path is; write it precomposed (path.under and path.glob "
                               "normalise their literal themselves)"))
    return out


def test_findings(suites: list[TestSuite], policies: list[Policy], ops: list[str],
                  catalog: Catalog | None = None) -> list[Finding]:
    """Test cases that cannot test what they claim: an operation nothing registers (`vdfs.stats` with
    `expect: deny` passes by default deny), an extension no policy applies to, an argument the operation's
    schema does not have (`args: {lenght: 5}`: the deny on `length` is never exercised)."""
    out = _test_args(suites, catalog) if catalog is not None else []
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


_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                            "boolean": (bool,), "array": (list,), "object": (dict,)}


def _test_args(suites: list[TestSuite], catalog: Catalog) -> list[Finding]:
    out = []
    for suite in suites:
        for case in suite.cases:
            op, args = case.request.get("operation"), case.request.get("args")
            info = catalog.get(op) if isinstance(op, str) else None
            props = info.schema.get("properties") if info is not None else None
            if not isinstance(args, dict) or not isinstance(props, dict):
                continue
            closed = info is not None and info.schema.get("additionalProperties") is False
            for name, value in args.items():
                spec = props.get(name)
                if spec is None and closed:
                    problem = (f"args.{name} is not an argument of {op} (arguments: {', '.join(sorted(props))})"
                               f"{did_you_mean(name, props)}")
                elif isinstance(spec, dict) and isinstance(spec.get("type"), str) and spec["type"] in _JSON_TYPES \
                        and (not isinstance(value, _JSON_TYPES[spec["type"]])
                             or isinstance(value, bool) and spec["type"] != "boolean"):
                    kind = spec["type"]
                    problem = (f"args.{name} is {json.dumps(value, default=str, ensure_ascii=False)}, but {op} "
                               f"takes {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
                else:
                    continue
                out.append(Finding(case.location, "warning", Code.TEST_INVALID_ARGS,
                                   f"{suite.name} / {case.name}: {problem}; no real call carries it (the operation's "
                                   "schema rejects it), so the case does not test the rules that read it"))
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
