"""Text, JSON and SARIF for `capengine diff` and `capengine analyze lint` (SARIF through policy.report, like
`capengine check`, so code-scanning shows analysis results next to the check's findings)."""

from __future__ import annotations

import json

from capengine.analysis.diff import DiffReport
from capengine.analysis.lints import ProvenFinding
from capengine.policy import report
from capengine.policy.codes import Code
from capengine.policy.model import Finding, Location, Severity


def _compact(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "))


def diff_findings(result: DiffReport, allow_widening: bool) -> list[Finding]:
    out = []
    for d in result.differences:
        widened = d.direction == "widened"
        severity: Severity = "warning" if not widened or allow_widening else "error"
        what = "now allows" if widened else "now denies"
        out.append(Finding(d.location or Location("(policies)"), severity,
                           Code.POLICY_WIDENED if widened else Code.POLICY_NARROWED,
                           f"{d.rule}: {what} {d.operation} requests such as {_compact(d.witness.to_json())} "
                           f"(before: {'allowed by ' + d.old.rules[0] if d.old.allowed else 'denied'})"))
    for u in result.unsettled:
        level: Severity = "error" if u.direction == "widened" and not allow_widening else "warning"
        out.append(Finding(Location("(policies)"), level, Code.ANALYSIS_UNKNOWN,
                           f"{u.rule}: could not decide whether {u.operation} is {u.direction}: {u.reason}"))
    for rule, reasons in result.unanalysable.items():
        for r in reasons:
            out.append(Finding(Location("(policies)"), "note", Code.NOT_ANALYSABLE,
                               f"{rule}: approximated conservatively: {r}"))
    return out


def diff_text(result: DiffReport) -> str:
    lines = []
    for direction in ("widened", "narrowed"):
        items = [d for d in result.differences if d.direction == direction]
        if not items:
            continue
        lines.append(f"{direction.upper()} (the new set {'allows' if direction == 'widened' else 'denies'} "
                     f"what the old set {'denied' if direction == 'widened' else 'allowed'}):")
        for d in items:
            before = f"allowed by {d.old.rules[0]}" if d.old.allowed else (
                f"denied by {d.old.rules[0]}" if d.old.rules else "denied (no allow rule)")
            after = f"allowed by {d.new.rules[0]}" if d.new.allowed else (
                f"denied by {d.new.rules[0]}" if d.new.rules else "denied (no allow rule)")
            lines.append(f"  {d.rule} [{d.operation}]" + (f" at {d.location}" if d.location else ""))
            lines.append(f"    e.g. {_compact(d.witness.to_json())}")
            lines.append(f"    old: {before}; new: {after}")
    for u in result.unsettled:
        lines.append(f"UNKNOWN {u.direction} {u.rule} [{u.operation}]: {u.reason}")
    for rule, reasons in result.unanalysable.items():
        lines += [f"note: {rule} is not fully analysable ({r}); approximated conservatively" for r in reasons]
    lines.append(f"{len(result.widened)} widening(s), {len(result.narrowed)} narrowing(s), "
                 f"{len(result.unsettled)} unknown, over {len(result.operations)} operation(s)")
    return "\n".join(lines) + "\n"


def diff_output(result: DiffReport, fmt: str, allow_widening: bool) -> str:
    if fmt == "json":
        return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "sarif":
        return report.as_sarif(diff_findings(result, allow_widening))
    return diff_text(result)


def lint_output(found: list[ProvenFinding], fmt: str, strict: bool) -> str:
    severity: Severity = "error" if strict else "warning"
    if fmt == "json":
        return json.dumps({"findings": [f.to_json() for f in found]}, indent=2, ensure_ascii=False) + "\n"
    findings = [f.to_finding(severity) for f in found]
    if fmt == "sarif":
        return report.as_sarif(findings)
    return report.as_text(findings, f"{len(found)} proven finding(s)")
