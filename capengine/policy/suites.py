"""Run PolicyTest suites against a policy set, and measure which rules the suites exercise."""

from __future__ import annotations

import attrs

from capengine.cel.checker import did_you_mean
from capengine.policy.codes import Code
from capengine.policy.engine import PolicySet
from capengine.policy.model import Decision, Finding, TestCase, TestSuite


@attrs.frozen
class CaseResult:
    suite: str
    case: TestCase
    decision: Decision
    passed: bool
    problem: str


@attrs.frozen
class TestReport:
    results: tuple[CaseResult, ...]
    covered: frozenset[str]  # rules that decided at least one case
    all_rules: tuple[str, ...]

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def uncovered(self) -> list[str]:
        return [r for r in self.all_rules if r not in self.covered]

    @property
    def coverage(self) -> float:
        return 100.0 * len(self.covered & set(self.all_rules)) / len(self.all_rules) if self.all_rules else 100.0


def run_suites(policy_set: PolicySet, suites: list[TestSuite]) -> TestReport:
    results = []
    covered: set[str] = set()
    known = frozenset(r.qualified_id for r in policy_set.rules)
    for suite in suites:
        for case in suite.cases:
            decision = policy_set.decide_raw(case.request)
            covered.update(decision.rules)
            actual = "allow" if decision.allowed else "deny"
            problems = []
            if actual != case.expect:
                problems.append(f"expected {case.expect}, got {actual}")
            if case.rule is not None and case.rule not in decision.rules:
                missing = "" if case.rule in known else \
                    f" (the set has no rule {case.rule}{did_you_mean(case.rule, known)})"
                got = ", ".join(decision.rules) or "none"
                problems.append(f"expected deciding rule {case.rule}{missing}, got {got}")
            results.append(CaseResult(suite.name, case, decision, not problems, "; ".join(problems)))
    return TestReport(tuple(results), frozenset(covered), tuple(r.qualified_id for r in policy_set.rules))


def findings(report: TestReport) -> list[Finding]:
    out = []
    for r in report.failed:
        d = r.decision
        detail = f"decision {'allow' if d.allowed else 'deny'} by {', '.join(d.rules) or 'default deny'}"
        if d.message and not d.allowed:
            detail += f" ({d.message})"
        if d.errors:
            detail += "; errors: " + "; ".join(f"{e.rule}: {e.message}" for e in d.errors)
        out.append(Finding(r.case.location, "error", Code.TEST_FAILED,
                           f"{r.suite} / {r.case.name}: {r.problem}; {detail}"))
    return out
