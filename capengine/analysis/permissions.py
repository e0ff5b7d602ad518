"""`analyze permissions EXT`: the page a reviewer reads before approving an extension.

For each operation, candidate regions are taken from the literals of the applicable rules (directories of
`under`, `glob` patterns, `startsWith` prefixes, library ids, argument values) and the solver classifies each:
*always* allowed (proved: no request there is denied), *sometimes* (a confirmed allowed request and a proved
or confirmed denied one), or *never* (proved). Argument constraints are found the same way: an int bound that
no allowed request exceeds, a string field whose allowed values are all among the literals, a required prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml
import z3

from capengine.analysis.can import AnalysisError, CanAnswer, can
from capengine.analysis.decision import DecisionFormula, decision_formula, rules_for
from capengine.analysis.domain import SymRequest, build_request, operation_names
from capengine.analysis.literals import collect
from capengine.analysis.regex import path_glob_language
from capengine.analysis.solve import DEFAULT_TIMEOUT_MS, Witness, solve
from capengine.analysis.zstrings import NotAnalysable, zstr
from capengine.policy import globs
from capengine.policy.engine import PolicySet

Verdict = Literal["always", "sometimes", "never", "unknown"]
_RE = z3.ReSort(z3.StringSort())
_ANY = z3.Full(_RE)


@attrs.frozen
class Finding:
    subject: str  # "path under /photos", "library 6c1f...", "args.length"
    verdict: Verdict | str
    example: Witness | None = None

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "verdict": self.verdict,
                "example": self.example.to_json() if self.example else None}


@attrs.frozen
class OperationSummary:
    operation: str
    overall: CanAnswer
    regions: tuple[Finding, ...]
    libraries: tuple[Finding, ...]
    args: tuple[Finding, ...]

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "allowed": self.overall.answer,
                "example": self.overall.witness.to_json() if self.overall.witness else None,
                "regions": [f.to_json() for f in self.regions], "libraries": [f.to_json() for f in self.libraries],
                "args": [f.to_json() for f in self.args],
                "unanalysable": {k: list(v) for k, v in self.overall.unanalysable.items()}}

    def text(self) -> str:
        head = {"never": "never allowed (proved)", "yes": "allowed in part", "unknown": "unknown"}[self.overall.answer]
        lines = [f"{self.operation}: {head}"]
        if self.overall.answer == "unknown":
            lines.append(f"  {self.overall.reason}")
        for title, findings in (("paths", self.regions), ("libraries", self.libraries), ("arguments", self.args)):
            if findings:
                lines.append(f"  {title}:")
                for f in findings:
                    example = ""
                    if f.example is not None and f.verdict != "never":
                        example = f" (e.g. {json.dumps(f.example.to_json(), ensure_ascii=False)})"
                    lines.append(f"    {f.subject}: {f.verdict}{example}")
        for rule, reasons in self.overall.unanalysable.items():
            lines += [f"  note: {rule} approximated ({r})" for r in reasons]
        return "\n".join(lines)


class _Asker:
    def __init__(self, policy_set: PolicySet, extension: str, operation: str, timeout_ms: int) -> None:
        self.policy_set = policy_set
        self.request: SymRequest = build_request(operation, extension)
        self.formula: DecisionFormula = decision_formula(policy_set, self.request)
        self.timeout_ms = timeout_ms

    def exists(self, region: z3.BoolRef, allowed: bool) -> tuple[str, Witness | None]:
        """("sat", witness) when a request in `region` is decided `allowed` (engine-confirmed), else
        ("unsat", None) proved, or ("unknown", None)."""
        goal = self.formula.allowed if allowed else z3.Not(self.formula.allowed)

        def confirm(ws: tuple[Witness, ...]) -> bool:
            r = ws[0].request()
            return r is not None and self.policy_set.decide(r).allowed == allowed

        outcome = solve([self.request], [region, goal], confirm, self.timeout_ms)
        return outcome.status, (outcome.witnesses[0] if outcome.witnesses else None)

    def classify(self, subject: str, region: z3.BoolRef) -> Finding:
        yes, example = self.exists(region, True)
        if yes == "unsat":
            return Finding(subject, "never")
        no, _ = self.exists(region, False)
        if yes == "sat" and no == "unsat":
            return Finding(subject, "always", example)
        if yes == "sat" and no == "sat":
            return Finding(subject, "sometimes (depends on other fields)", example)
        return Finding(subject, "unknown", example)


def summarise(policy_set: PolicySet, extension: str, operation: str,
              timeout_ms: int = DEFAULT_TIMEOUT_MS) -> OperationSummary:
    overall = can(policy_set, extension, operation, timeout_ms=timeout_ms)
    if overall.answer == "never":
        return OperationSummary(operation, overall, (), (), ())
    asker = _Asker(policy_set, extension, operation, timeout_ms)
    req = asker.request
    lits = collect(rules_for(policy_set, operation, extension))
    regions: list[Finding] = []
    if req.args.get("path") is not None or lits.directories or lits.globs:
        candidates: list[tuple[str, z3.ReRef]] = []
        for d in sorted(lits.directories):
            base = d.rstrip("/") or "/"
            lang = z3.Concat(z3.Re(zstr("/")), _ANY) if base == "/" else z3.Union(
                z3.Re(zstr(base)), z3.Concat(z3.Re(zstr(base + "/")), _ANY))
            candidates.append((f"under {base}", lang))
        for g in sorted(lits.globs):
            try:
                candidates.append((f"glob {g}", path_glob_language(g)))
            except NotAnalysable:
                continue
        for p in sorted(lits.prefixes):
            candidates.append((f"starting with {p}", z3.Concat(z3.Re(zstr(p)), _ANY)))
        for subject, lang in candidates:
            regions.append(asker.classify(f"path {subject}", z3.InRe(req.path, lang)))
        regions = _refine(asker, candidates, regions, sorted(lits.libraries))
        if candidates:
            outside = z3.Not(z3.Or([z3.InRe(req.path, lang) for _, lang in candidates]))
            regions.append(asker.classify("path anywhere else", outside))
    libraries: list[Finding] = []
    for lib in sorted(lits.libraries):
        libraries.append(asker.classify(f"library {lib or '(none)'}", z3.InRe(req.library, z3.Re(zstr(lib)))))
    if lits.libraries:
        others = z3.Not(z3.InRe(req.library, z3.Union([z3.Re(zstr(lib)) for lib in lits.libraries]
                                                       + [z3.Empty(_RE)])))
        libraries.append(asker.classify("any other library", others))
    return OperationSummary(operation, overall, tuple(regions), tuple(libraries), tuple(_arg_findings(asker, lits)))


def _overlap(a: z3.ReRef, b: z3.ReRef) -> bool:
    solver = z3.Solver()
    solver.set(timeout=2000)
    solver.add(z3.InRe(z3.String("p"), z3.Intersect(a, b)))
    return solver.check() != z3.unsat  # unknown: keep it, the listing only narrows a claim that is re-proved


def _refine(asker: _Asker, candidates: list[tuple[str, z3.ReRef]], regions: list[Finding],
            libraries: list[str]) -> list[Finding]:
    """Say more about a region that is only sometimes allowed: the never-allowed regions inside it that
    explain why, and whether the rest is always allowed (possibly only in one library). Each claim is
    re-proved by the solver; an unprovable refinement leaves the plain "sometimes"."""
    path, out = asker.request.path, []
    never = [(c, f) for c, f in zip(candidates, regions) if f.verdict == "never"]
    for (subject, lang), finding in zip(candidates, regions):
        if not finding.verdict.startswith("sometimes"):
            out.append(finding)
            continue
        holes = [(s, lg) for (s, lg), _ in never if s != subject and _overlap(lang, lg)]
        rest = z3.And(z3.InRe(path, lang), *[z3.Not(z3.InRe(path, lg)) for _, lg in holes])
        but = f" except {', '.join(s for s, _ in holes)}" if holes else ""
        verdict = finding.verdict
        if asker.classify("", rest).verdict == "always":
            verdict = f"always{but} (proved)"
        else:
            for lib in libraries:
                in_lib = z3.And(rest, z3.InRe(asker.request.library, z3.Re(zstr(lib))))
                if asker.classify("", in_lib).verdict == "always":
                    verdict = f"always in library {lib}{but}, never elsewhere" if asker.classify(
                        "", z3.And(rest, z3.Not(z3.InRe(asker.request.library, z3.Re(zstr(lib)))))).verdict == \
                        "never" else f"always in library {lib}{but}"
                    verdict += " (proved)"
                    break
        out.append(attrs.evolve(finding, verdict=verdict))
    return out


def _arg_findings(asker: _Asker, lits: Any) -> list[Finding]:
    req = asker.request
    out: list[Finding] = []
    for name in sorted(set(lits.fields) | set(lits.ints) | set(lits.strings)):
        f = req.args.get(name)
        if f is None or f.hidden or f.kind == "opaque" or name == "path":
            continue
        if f.kind == "int":
            for bound in sorted(lits.ints.get(name, ())):
                status, _ = asker.exists(z3.And(f.present, f.value > bound), True)
                if status == "unsat":
                    out.append(Finding(f"args.{name}", f"at most {bound} when present (proved)"))
                    break
        if f.kind == "string" and lits.strings.get(name):
            values = sorted(lits.strings[name])
            others = z3.Not(z3.InRe(f.value, z3.Union([z3.Re(zstr(v)) for v in values] + [z3.Empty(_RE)])))
            status, _ = asker.exists(z3.And(f.present, others), True)
            if status == "unsat":
                out.append(Finding(f"args.{name}", "one of " + ", ".join(repr(v) for v in values) + " (proved)"))
            else:
                for v in values:
                    prefixed = z3.InRe(f.value, z3.Concat(z3.Re(zstr(v)), _ANY))
                    status, _ = asker.exists(z3.And(f.present, z3.Not(prefixed)), True)
                    if status == "unsat":
                        out.append(Finding(f"args.{name}", f"starts with {v!r} (proved)"))
        if not f.required:
            status, _ = asker.exists(z3.Not(f.present), True)
            if status == "unsat":
                out.append(Finding(f"args.{name}", "required by the policies (absent: never allowed)"))
    return out


def permissions(policy_set: PolicySet, extension: str, operations: list[str],
                timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[OperationSummary]:
    return [summarise(policy_set, extension, op, timeout_ms) for op in operations]


def policy_operations(policy_set: PolicySet, extension: str, known: tuple[str, ...]) -> list[str]:
    """Operations some rule applicable to `extension` names (when no manifest lists them)."""
    out = []
    for op in known:
        if any(not r.deny for r in rules_for(policy_set, op, extension)):
            out.append(op)
    return out


def declared_operations(extensions_dir: str, extension: str) -> list[str]:
    """The registered operations the extension's manifest (DIR/*/manifest.yaml, `operations:` globs) declares.
    Read here with yaml, not through capengine.host (the analysis layer sits beside the host, not above it)."""
    for manifest in sorted(Path(extensions_dir).glob("*/manifest.yaml")):
        try:
            data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise AnalysisError(f"{manifest}: cannot read the manifest: {exc}") from None
        if not isinstance(data, dict) or data.get("id") != extension:
            continue
        patterns = data.get("operations")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise AnalysisError(f"{manifest}: 'operations' must be a list of operation globs")
        return [op for op in operation_names() if any(globs.glob_match(p, op) for p in patterns)]
    raise AnalysisError(f"no manifest under {extensions_dir} has id {extension!r}")
