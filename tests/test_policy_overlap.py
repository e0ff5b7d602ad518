"""Lints `partial-shadow` (a deny overriding an allow for some requests) and `unused-rule` (no test case is
decided by the rule)."""

from __future__ import annotations

from helpers import policy_yaml, write

from capengine.policy import operations, overlap
from capengine.policy.check import run_check
from capengine.policy.model import Location, Policy, Rule

OPS = operations.builtin().names()
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def check(tmp_path, rules: str, cases: str = "", extensions: str = '["com.example.app"]', **policies: str):
    write(tmp_path, "p.yaml", policy_yaml("p", rules, extensions))
    for name, text in policies.items():
        write(tmp_path, f"{name}.yaml", text)
    if cases:
        write(tmp_path, "p.test.yaml", "apiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: t}\ncases:\n"
              + cases)
    return run_check([tmp_path], operations=OPS).findings


def codes(found, code):
    return [f for f in found if f.code == code]


def case(name: str, path: str, expect: str, op: str = "vdfs.read_file") -> str:
    return (f"  - name: {name}\n    request: {{extension: com.example.app, operation: {op}, path: '{path}', "
            f"library: {LIB}}}\n    expect: {expect}\n")


READ_DOCS = """
    - {id: read, effect: allow, operations: [vdfs.read_file, vdfs.stat], condition: 'path.under("/docs")'}
    - {id: secret, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/docs/secret")'}
"""


def test_overlapping_deny_is_reported_at_the_allow_with_a_confirmed_example(tmp_path):
    (f,) = codes(check(tmp_path, READ_DOCS), "partial-shadow")
    assert f.severity == "warning" and f.location.line == 7
    assert "deny p/secret overrides allow p/read" in f.message
    assert "path: '/docs/secret'" in f.message and "operation: 'vdfs.read_file'" in f.message
    assert "both conditions match it" in f.message


def test_glob_deny_inside_an_allowed_tree_gets_a_matching_example(tmp_path):
    found = check(tmp_path, """
        - {id: read, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/photos")'}
        - {id: git, effect: deny, operations: ["**"], condition: 'path.glob("/**/.git/**")'}
    """)
    (f,) = codes(found, "partial-shadow")
    assert "path: '/photos/x/.git/x'" in f.message and "both conditions match it" in f.message


def test_provably_disjoint_paths_and_operations_are_not_reported(tmp_path):
    found = check(tmp_path, """
        - {id: read, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/docs")'}
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/docs2") || path == "/x"'}
        - {id: b, effect: deny, operations: [vdfs.stat]}
        - {id: c, effect: deny, operations: [vdfs.read_file], condition: 'path.glob("/etc/**")'}
        - {id: ping, effect: allow, operations: [test.ping]}
        - {id: d, effect: deny, operations: [test.ping], condition: 'path.under("/secrets")'}
    """)
    assert codes(found, "partial-shadow") == []  # test.ping carries no path: d can never match it


def test_other_extension_is_not_an_overlap(tmp_path):
    other = policy_yaml("q", "- {id: never, effect: deny, operations: [vdfs.read_file]}\n", '["com.other.*"]')
    found = check(tmp_path, "- {id: read, effect: allow, operations: [vdfs.read_file]}\n", q=other)
    assert codes(found, "partial-shadow") == []
    baseline = policy_yaml("b", "- {id: nolib, effect: deny, operations: [vdfs.read_file], "
                                "condition: 'library == \"\"'}\n", '["**"]')
    (f,) = codes(check(tmp_path, "- {id: read, effect: allow, operations: [vdfs.read_file]}\n", b=baseline),
                 "partial-shadow")
    assert "deny b/nolib overrides allow p/read" in f.message and "extension: 'com.example.app'" in f.message


def test_a_test_case_exercising_the_overlap_marks_it_intended(tmp_path):
    untested = check(tmp_path, READ_DOCS, case("secret elsewhere", "/etc/secret", "deny"))
    assert len(codes(untested, "partial-shadow")) == 1
    # decided by the deny, but the allow would not have allowed it either: not the overlap
    not_overlap = check(tmp_path, READ_DOCS, case("x", "/etc/x", "deny") + case("docs", "/docs/a", "allow"))
    assert len(codes(not_overlap, "partial-shadow")) == 1
    tested = check(tmp_path, READ_DOCS, case("secret", "/docs/secret/k", "deny") + case("docs", "/docs/a", "allow"))
    assert codes(tested, "partial-shadow") == []


def test_unused_rule_only_when_suites_exist(tmp_path):
    assert codes(check(tmp_path, READ_DOCS), "unused-rule") == []
    found = check(tmp_path, READ_DOCS, case("docs", "/docs/a", "allow"))
    (f,) = codes(found, "unused-rule")
    assert f.severity == "warning" and "rule p/secret decides no case" in f.message and f.location.line == 8
    strict = run_check([tmp_path], operations=OPS, strict=True)
    assert any(f.code == "unused-rule" and f.severity == "error" for f in strict.findings)


def test_partial_shadow_is_linear_on_10000_single_extension_policies(monkeypatch):
    """Each deny meets only the allows of policies sharing its extension (plus the wildcard ones): the number of
    (deny, allow) pairs examined grows with the set, not with its square."""
    calls = []
    real = overlap._example
    monkeypatch.setattr(overlap, "_example", lambda d, a: calls.append(1) or real(d, a))
    n = 10_000
    policies = []
    for i in range(n):
        loc = Location(f"p{i}.yaml", 1, 1)
        rules = (Rule(f"p{i}", "read", "allow", ("vdfs.read_file",), 'path.under("/docs")', None, loc),
                 Rule(f"p{i}", "no", "deny", ("vdfs.read_file",), 'path.under("/docs/secret")', None, loc))
        policies.append(Policy(f"p{i}", "", (f"com.example.e{i}",), rules, (), loc))
    base_loc = Location("base.yaml", 1, 1)
    policies.append(Policy("base", "", ("**",), (Rule("base", "git", "deny", ("**",), 'path.glob("/**/.git/**")',
                                                      None, base_loc),), (), base_loc))
    found = overlap.find(policies, operations.builtin(), OPS, {})
    assert len(found) == n  # one per allow: the first overlapping deny
    assert len(calls) <= 2 * n + 1
