"""Policy lint: rules that are legal but probably wrong. Warnings (errors under --strict)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from capengine.cel.ast import Literal, parse
from capengine.policy import globs
from capengine.policy.codes import Code
from capengine.policy.model import Finding, Policy, Rule


def lint(policies: list[Policy], operations: Iterable[str] | None = None,
         extension_ids: Iterable[str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    ops = sorted(operations) if operations is not None else None
    exts = sorted(extension_ids) if extension_ids is not None else None
    unconditional_denies = [(p, r) for p in policies for r in p.rules if r.effect == "deny" and r.condition is None]
    for policy in policies:
        if exts is not None:
            for pattern in policy.extensions:
                if not any(globs.glob_match(pattern, e) for e in exts):
                    findings.append(Finding(policy.location, "warning", Code.UNUSED_EXTENSION_GLOB,
                                            f"policy '{policy.name}': extensions pattern '{pattern}' matches no "
                                            "extension in the extensions directory"))
        for rule in policy.rules:
            findings.extend(_rule_findings(policy, rule, ops, unconditional_denies))
    return findings


def _rule_findings(policy: Policy, rule: Rule, ops: list[str] | None, denies) -> list[Finding]:
    out = []
    where, rid = rule.location, rule.qualified_id
    if rule.effect == "allow" and rule.condition is None and any(
            all(seg in ("*", "**") for seg in op.split(".")) for op in rule.operations):
        out.append(Finding(where, "warning", Code.BROAD_ALLOW,
                           f"rule {rid} allows every operation ({', '.join(rule.operations)}) with no condition; "
                           "list the operations it needs or add a condition"))
    if _literally_false(rule.condition):
        out.append(Finding(where, "warning", Code.NEVER_MATCHES, f"rule {rid} has condition 'false' and never matches"))
    if ops is not None:
        dead = [p for p in rule.operations if not any(globs.glob_match(p, op) for op in ops)]
        if dead:
            out.append(Finding(where, "warning", Code.NEVER_MATCHES,
                               f"rule {rid}: operation pattern(s) {', '.join(dead)} match no registered operation"))
    if rule.effect == "allow":
        for deny_policy, deny in denies:
            if _covers(deny_policy, deny, policy, rule):
                out.append(Finding(where, "warning", Code.SHADOWED_ALLOW,
                                   f"allow rule {rid} can never take effect: unconditional deny "
                                   f"{deny.qualified_id} covers all its operations and extensions"))
                break
    return out


def _literally_false(condition: str | None) -> bool:
    if condition is None:
        return False
    try:
        node = parse(condition)
    except Exception:  # syntax errors are the loader's to report
        return False
    return isinstance(node, Literal) and node.value is False


def _pattern_covers(general: str, specific: str) -> bool:
    """Does glob `general` match every name glob `specific` matches? Exact for literal `specific`; for
    patterns, checked by treating the specific pattern's text as a name (sound for '*'/'**' over it)."""
    if general == "**":
        return True
    if "**" in specific and "**" not in general:
        return False
    return globs.glob_match(general, specific)


def _covers(deny_policy: Policy, deny: Rule, policy: Policy, rule: Rule) -> bool:
    ops_covered = all(any(_pattern_covers(d, op) for d in deny.operations) for op in rule.operations)
    exts_covered = all(any(_pattern_covers(d, e) for d in deny_policy.extensions) for e in policy.extensions)
    return ops_covered and exts_covered


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
