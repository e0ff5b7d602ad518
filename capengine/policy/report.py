"""Render findings as text, JSON or SARIF 2.1.0 (for CI code-scanning upload)."""

from __future__ import annotations

import json
from pathlib import Path

from capengine.policy.codes import Code
from capengine.policy.model import Finding
from capengine.version import __version__

_SARIF_LEVEL = {"error": "error", "warning": "warning", "note": "note"}


def terminal_safe(text: str) -> str:
    """`text` with every character that is not printable (ESC and the other controls, bidi overrides, zero
    width characters) shown as its escape: a file name, a case name or a message in a hostile policy tree
    must not clear, retitle or reorder the terminal of whoever checks it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def as_text(findings: list[Finding], summary: str, source: bool = True) -> str:
    """One line per finding, followed (when `source` and the file can be read) by the source line and a caret
    under the column, as compilers print them."""
    files: dict[str, list[str] | None] = {}
    lines = []
    for f in findings:
        lines.append(terminal_safe(str(f)))
        if source and f.location.line > 0:
            lines.extend(_excerpt(f, files))
    lines.append(terminal_safe(summary))
    return "\n".join(lines) + "\n"


def _excerpt(f: Finding, files: dict[str, list[str] | None]) -> list[str]:
    if f.location.file not in files:
        try:
            files[f.location.file] = Path(f.location.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            files[f.location.file] = None
    text = files[f.location.file]
    if text is None or f.location.line > len(text):
        return []
    line = text[f.location.line - 1].replace("\t", " ")
    gutter = str(f.location.line)
    shown = "".join(c if c.isprintable() else "?" for c in line)
    column = max(f.location.column, 1)
    return [f"  {gutter} | {shown}", f"  {' ' * len(gutter)} | {' ' * (column - 1)}^"]


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
                "rules": [{"id": c, "shortDescription": {"text": Code(c).help}} for c in codes],
            }},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2) + "\n"
