"""`capengine test`: run the PolicyTest suites with a case filter, and measure rule and branch coverage.

Rule coverage (a rule decided some case) comes from suites.run_suites; branch coverage evaluates each
`&&`/`||` operand of every rule's condition on each case the rule is a candidate for (see branches.py).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from capengine.policy import branches as branch_cov
from capengine.policy import suites
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request, RequestError, TestSuite


@attrs.frozen
class RuleCoverage:
    rule: str
    location: str
    decided: int  # cases this rule decided
    branches: tuple[branch_cov.Branch, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "location": self.location, "decided_cases": self.decided,
                "covered": self.decided > 0, "branches": [b.to_json() for b in self.branches]}


@attrs.frozen
class TestRun:
    report: suites.TestReport
    rules: tuple[RuleCoverage, ...]

    @property
    def branch_total(self) -> int:
        return sum(len(r.branches) for r in self.rules)

    @property
    def branch_covered(self) -> int:
        return sum(b.covered for r in self.rules for b in r.branches)

    @property
    def branch_coverage(self) -> float:
        return 100.0 * self.branch_covered / self.branch_total if self.branch_total else 100.0


def select(test_suites: list[TestSuite], pattern: re.Pattern[str] | None) -> list[TestSuite]:
    """The suites with only the cases whose "suite / case" name `pattern` finds (re.search, as `go test -run`);
    suites left without a case are dropped."""
    if pattern is None:
        return list(test_suites)
    out = []
    for suite in test_suites:
        cases = tuple(c for c in suite.cases if pattern.search(f"{suite.name} / {c.name}"))
        if cases:
            out.append(attrs.evolve(suite, cases=cases))
    return out


def run(policy_set: PolicySet, test_suites: list[TestSuite]) -> TestRun:
    report = suites.run_suites(policy_set, test_suites)
    rules = {r.qualified_id: (r, branch_cov.branches(r.rule.condition) if r.rule.condition else [])
             for r in policy_set.rules}
    for suite in test_suites:
        for case in suite.cases:
            try:
                request = Request.from_mapping(case.request)
            except RequestError:
                continue  # denied before any rule: no operand is evaluated
            activation = request.activation()
            denies, allows = policy_set.candidates(request.extension, request.operation)
            for candidate in denies + allows:
                for branch in rules[candidate.qualified_id][1]:
                    branch.observe(activation)
    decided: dict[str, int] = {}
    for result in report.results:
        for rid in result.decision.rules:
            decided[rid] = decided.get(rid, 0) + 1
    coverage = tuple(RuleCoverage(rid, str(rule.rule.location), decided.get(rid, 0), tuple(found))
                     for rid, (rule, found) in rules.items())
    return TestRun(report, coverage)
