"""`capengine test` output: text (failures, uncovered branches, a summary), JSON (every case and the per-rule
and per-branch coverage) and JUnit XML (one <testsuite> per PolicyTest suite, for CI systems)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from capengine.policy.report import terminal_safe
from capengine.policy.suites import CaseResult
from capengine.policy.testrun import TestRun


def _decided(r: CaseResult) -> str:
    d = r.decision
    verdict = "allow" if d.allowed else "deny"
    return f"{verdict} by {', '.join(d.rules) or 'default deny'}"


def _failure(r: CaseResult) -> str:
    text = f"{r.problem}; decision {_decided(r)}"
    if r.decision.message and not r.decision.allowed:
        text += f" ({r.decision.message})"
    if r.decision.errors:
        text += "; errors: " + "; ".join(f"{e.rule}: {e.message}" for e in r.decision.errors)
    return text


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """`text` without the characters XML 1.0 cannot hold (a control character in a case name would make the
    whole report unparseable for the CI system)."""
    return _NOT_XML.sub("\ufffd", text)


def summary(run: TestRun) -> dict[str, Any]:
    rep = run.report
    return {"cases": len(rep.results), "passed": len(rep.results) - len(rep.failed), "failed": len(rep.failed),
            "rule_coverage": round(rep.coverage, 1), "rules": len(rep.all_rules),
            "rules_covered": len(rep.covered & set(rep.all_rules)),
            "branch_coverage": round(run.branch_coverage, 1), "branches": run.branch_total,
            "branches_covered": run.branch_covered}


def as_text(run: TestRun, verbose: bool) -> str:
    lines = []
    for r in run.report.results:
        if verbose:
            status = "PASS" if r.passed else "FAIL"
            lines.append(f"{status}  {r.suite} / {r.case.name}: {_decided(r)}")
        if not r.passed:
            lines.append(f"{r.case.location}: FAIL {r.suite} / {r.case.name}: {_failure(r)}")
    for rule in run.rules:
        if not rule.decided:
            lines.append(f"{rule.location}: note: rule {rule.rule} decided no test case")
        for b in rule.branches:
            if not b.covered:
                lines.append(f"{rule.location}: note: rule {rule.rule}: operand `{b.text}` {b.missing()} "
                             f"in any case")
    s = summary(run)
    lines.append(f"{s['passed']}/{s['cases']} test cases passed; rule coverage {s['rule_coverage']:.1f}% "
                 f"({s['rules_covered']}/{s['rules']}); branch coverage {s['branch_coverage']:.1f}% "
                 f"({s['branches_covered']}/{s['branches']})")
    return "\n".join(map(terminal_safe, lines)) + "\n"


def as_json(run: TestRun) -> str:
    cases = [{"suite": r.suite, "case": r.case.name, "location": str(r.case.location), "expect": r.case.expect,
              "passed": r.passed, "problem": r.problem, "decision": r.decision.to_json()}
             for r in run.report.results]
    return json.dumps({"cases": cases, "coverage": {"rules": [c.to_json() for c in run.rules]},
                       "summary": summary(run)}, indent=2) + "\n"


def as_junit(run: TestRun) -> str:
    root = ET.Element("testsuites", name="capengine", tests=str(len(run.report.results)),
                      failures=str(len(run.report.failed)))
    by_suite: dict[str, list[CaseResult]] = {}
    for r in run.report.results:
        by_suite.setdefault(r.suite, []).append(r)
    for name, results in by_suite.items():
        suite = ET.SubElement(root, "testsuite", name=_x(name), tests=str(len(results)),
                              failures=str(sum(not r.passed for r in results)), errors="0", skipped="0")
        for r in results:
            case = ET.SubElement(suite, "testcase", name=_x(r.case.name), classname=_x(name),
                                 file=_x(r.case.location.file), line=str(r.case.location.line))
            if not r.passed:
                failure = ET.SubElement(case, "failure", message=_x(r.problem), type="policy-test")
                failure.text = _x(f"{r.case.location}: {_failure(r)}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
