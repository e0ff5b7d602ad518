"""Render findings as text, JSON or SARIF 2.1.0 (for CI code-scanning upload)."""

from __future__ import annotations

import json

from capengine.policy.model import Finding
from capengine.version import __version__

_SARIF_LEVEL = {"error": "error", "warning": "warning", "note": "note"}
RULE_HELP = {
    "yaml-syntax": "The file is not valid YAML.",
    "duplicate-key": "A mapping repeats a key; YAML loaders would silently keep one of them.",
    "unknown-kind": "Documents must be kind Policy or PolicyTest.",
    "schema": "The document does not match the JSON Schema in schemas/.",
    "duplicate-rule-id": "Rule ids must be unique within a policy.",
    "duplicate-policy": "Policy names must be unique across the policy set.",
    "duplicate-case": "Test case names must be unique within a suite.",
    "bad-limit": "A rate limit can never be satisfied.",
    "bad-glob": "A glob is malformed ('**' must be a whole segment).",
    "cel-syntax": "A condition is not valid CEL.",
    "cel-type": "A condition does not type-check against the policy variables and functions.",
    "cel-invalid": "A condition has an invalid literal argument (regex, glob or directory).",
    "broad-allow": "An allow rule grants every operation without a condition.",
    "never-matches": "A rule can never match.",
    "shadowed-allow": "An allow rule is fully overridden by an unconditional deny.",
    "unused-extension-glob": "A policy's extensions pattern matches no known extension.",
    "test-failed": "A policy test case did not get the expected decision.",
    "uncovered-rule": "No policy test case was decided by this rule.",
    "coverage": "Rule coverage of the policy tests is below the required minimum.",
    "io": "A file could not be read.",
    "empty-file": "A policy file holds no document.",
}


def as_text(findings: list[Finding], summary: str) -> str:
    lines = [str(f) for f in findings]
    lines.append(summary)
    return "\n".join(lines) + "\n"


def as_json(findings: list[Finding], summary: dict) -> str:
    return json.dumps({
        "findings": [{"file": f.location.file, "line": f.location.line, "column": f.location.column,
                      "severity": f.severity, "code": f.code, "message": f.message} for f in findings],
        "summary": summary,
    }, indent=2) + "\n"


def as_sarif(findings: list[Finding]) -> str:
    codes = sorted({f.code for f in findings})
    results = []
    for f in findings:
        region = {"startLine": max(f.location.line, 1), "startColumn": max(f.location.column, 1)}
        results.append({
            "ruleId": f.code,
            "ruleIndex": codes.index(f.code),
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.location.file},
                                                "region": region}}],
        })
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "capengine", "version": __version__, "informationUri": "https://capengine.dev",
                "rules": [{"id": c, "shortDescription": {"text": RULE_HELP.get(c, c)}} for c in codes],
            }},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2) + "\n"
