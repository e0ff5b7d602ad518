"""`capengine check` as a library call: load, lint, run policy tests, judge coverage.

The daemon and `load_policies` use the same function, so that "the daemon refuses to start", "the embedder's
load raises" and "check fails in CI" can never disagree about what an error is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from capengine.errors import CapengineError
from capengine.policy import lint, overlap
from capengine.policy import suites as policy_tests
from capengine.policy.codes import Code
from capengine.policy.engine import PolicySet
from capengine.policy.gc_pause import collector_paused
from capengine.policy.loader import LoadResult, load_contents, load_paths
from capengine.policy.model import Finding, Location, Rule


@attrs.frozen
class CheckOutcome:
    load: LoadResult
    findings: tuple[Finding, ...]
    tests: policy_tests.TestReport | None
    policy_set: PolicySet

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)


def run_check(paths: str | Path | Iterable[str | Path], *, strict: bool = False,
              operations: Iterable[str] | None = None, extensions_dir: str | Path | None = None,
              coverage: bool = False, min_coverage: float | None = None, run_tests: bool = True,
              schema_dirs: Iterable[str | Path] = (), contents: Mapping[str, bytes] | None = None,
              generate: bool = True, processes: int | None = 1) -> CheckOutcome:
    """`schema_dirs`: operation schemas an embedding registers besides the built-in ones (see loader).
    `operations`: names registered besides those the schemas declare; by default exactly the schemas' (the
    built-in catalogue), so a misspelled operation is an error here as in `capengine check`. `contents`: the
    files under `paths` already read (path -> bytes, in walk order): loaded instead of reading the disk again.
    `generate`: conditions get generated functions (loader.load_paths); off where the set only checks (the CLI).
    `processes`: load the files on that many processes (None: as many as pay off), without `generate` only
    (loader.load_paths, loader_parallel); the findings are the same."""
    paths = _path_list(paths)
    with collector_paused():
        return _check(paths, strict, operations, extensions_dir, coverage, min_coverage, run_tests, schema_dirs,
                      contents, generate, processes)


def _check(paths: list[str | Path], strict: bool, operations: Iterable[str] | None,
           extensions_dir: str | Path | None, coverage: bool, min_coverage: float | None, run_tests: bool,
           schema_dirs: Iterable[str | Path], contents: Mapping[str, bytes] | None, generate: bool,
           processes: int | None) -> CheckOutcome:
    load = (load_paths(paths, schema_dirs, generate, processes) if contents is None
            else load_contents(contents, schema_dirs, generate=generate, processes=processes))
    # operations declared by the built-in and extra schema directories count as registered
    operations = sorted(set(operations or ()) | set(load.catalog.names()))
    findings = list(load.findings)
    # a wrong path or a renamed suffix must not pass as an (empty) clean set; files that failed to load say why
    if paths and not load.policies and not any(f.severity == "error" for f in findings):
        findings.append(Finding(Location(str(paths[0])), "error", Code.NO_POLICIES,
                                f"no policies under {', '.join(map(str, paths))}: no .yaml/.yml file there holds a "
                                "'kind: Policy' document, and an empty set denies every call; check the path"))
    exts = lint.extension_ids(extensions_dir) if extensions_dir is not None else None
    programs = load.programs  # a property that builds a dict: once
    findings.extend(lint.lint(load.policies, operations, exts, load.catalog, programs))
    policy_set = PolicySet(load.policies, programs, load.revision, load.catalog)
    report = None
    findings.extend(lint.test_findings(load.suites, load.policies, operations, load.catalog))
    decided: dict[str, list[Mapping[str, Any]]] = {}
    if run_tests and load.suites:
        report = policy_tests.run_suites(policy_set, load.suites)
        findings.extend(policy_tests.findings(report))
        by_id = {r.qualified_id: r for p in load.policies for r in p.rules}
        findings.extend(Finding(by_id[rid].location, "warning", Code.UNUSED_RULE,
                                f"rule {rid} decides no case of the policy test suites; add a case it decides "
                                "(or remove the rule if it is dead)") for rid in report.uncovered)
        for result in report.results:
            for rid in result.decision.rules:
                decided.setdefault(rid, []).append(result.case.request)
        if coverage or min_coverage is not None:
            by_id = {r.qualified_id: r for p in load.policies for r in p.rules}
            findings.extend(Finding(by_id[rid].location, "note", Code.UNCOVERED_RULE,
                                    f"rule {rid} decided no test case") for rid in report.uncovered)
        if min_coverage is not None and report.coverage < min_coverage:
            findings.append(Finding(Location(str(paths[0]) if paths else "."), "error", Code.COVERAGE,
                                    f"rule coverage {report.coverage:.1f}% is below --min-coverage {min_coverage:g}%"))
    elif min_coverage is not None:
        findings.append(Finding(Location(str(paths[0]) if paths else "."), "error", Code.COVERAGE,
                                "--min-coverage given but no PolicyTest files were found"))
    if run_tests:  # partial-shadow: with the suites' results, as a tested overlap is an intended one
        def tested(deny: Rule, allow: Rule) -> bool:
            cases = decided.get(deny.qualified_id)
            return cases is not None and overlap.exercised(allow, cases, policy_set, programs)
        findings.extend(o.finding() for o in overlap.find(load.policies, load.catalog, operations, programs, tested))
    if strict:
        findings = [attrs.evolve(f, severity="error") if f.severity == "warning" else f for f in findings]
    findings.sort(key=lambda f: (f.location.file, f.location.line, f.location.column, f.code))
    return CheckOutcome(load, tuple(findings), report, policy_set)


def _path_list(paths: object) -> list[str | Path]:
    """The files and directories to load; PolicyLoadError (one finding) for anything that is not a path or a
    non-empty collection of paths (None, a number, bytes, a list holding them): never a TypeError."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if isinstance(items, (bytes, bytearray, Mapping)) or not isinstance(items, Iterable):
        raise PolicyLoadError([_usage(f"paths must be a path or a list of paths, not {type(paths).__name__}")])
    found: list[str | Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)) or isinstance(item, bytes):
            raise PolicyLoadError([_usage(f"paths holds {item!r}, which is not a path (str or pathlib.Path)")])
        found.append(item if isinstance(item, str) else Path(item))
    if not found:
        raise PolicyLoadError([_usage("no policy file or directory given")])
    return found


def _usage(message: str) -> Finding:
    return Finding(Location("<paths>"), "error", Code.IO, message)


class PolicyLoadError(CapengineError):
    """A policy set with errors: nothing of it may be used (fail closed). `findings` holds every error and
    warning, each with file:line:column, exactly as `capengine check` reports them."""

    def __init__(self, findings: Iterable[Finding]) -> None:
        self.findings = tuple(findings)
        errors = [str(f) for f in self.findings if f.severity == "error"]
        super().__init__(f"the policy set has {len(errors)} error(s):\n" + "\n".join(errors))


def load_policies(paths: str | Path | Iterable[str | Path], *, operations: Iterable[str] | None = None,
                  strict: bool = False) -> PolicySet:
    """Load, check and compile policy files or directories into a PolicySet, or raise PolicyLoadError.

    The verdict is `capengine check`'s: syntax, schema, CEL type errors, lint errors and failing PolicyTest
    cases all refuse the set. `operations`: operation names registered besides the built-in catalogue's (lint
    flags rules matching none). Paths that are not paths raise PolicyLoadError too.
    """
    outcome = run_check(paths, strict=strict, operations=operations)
    if outcome.errors:
        raise PolicyLoadError(outcome.findings)
    return outcome.policy_set
