"""`capengine test`: the PolicyTest runner with --run, -v, JSON/JUnit output, and rule + branch coverage."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import policy_yaml, write

from capengine import bundled
from capengine.cli import main
from capengine.policy.branches import operands

RULES = """
    - id: read-docs
      effect: allow
      operations: [vdfs.read_file]
      condition: 'path.under("/docs") && (library == "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6" || path == "/docs/x")'
    - id: no-secret
      effect: deny
      operations: [vdfs.read_file]
      condition: 'path.under("/docs/secret")'
"""
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def suite(cases: str) -> str:
    return ("apiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: docs}\ncases:\n"
            + cases.strip("\n") + "\n")


def case(name: str, path: str, expect: str, rule: str | None = None, library: str = LIB) -> str:
    text = (f"  - name: {name}\n    request: {{extension: com.example.app, operation: vdfs.read_file, "
            f"path: '{path}', library: '{library}'}}\n    expect: {expect}\n")
    return text + (f"    rule: {rule}\n" if rule else "")


def make(tmp_path: Path, *cases: str) -> Path:
    write(tmp_path, "p.yaml", policy_yaml("p", RULES))
    write(tmp_path, "p.test.yaml", suite("".join(cases)))
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["test", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_passing_suite_exits_0_and_names_uncovered_branches(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow", "p/read-docs"),
             case("secret", "/docs/secret/k", "deny", "p/no-secret"))
    code, out, _ = run(capsys, str(d))
    assert code == 0
    assert "2/2 test cases passed" in out
    # path.under("/docs") was never false, the library test never false, the path test never true
    assert 'operand `path.under("/docs")` never false' in out
    assert "operand `path == \"/docs/x\"` never true" in out
    assert "rule coverage 100.0% (2/2)" in out


def test_failing_case_exits_1_with_expected_and_got(tmp_path, capsys):
    d = make(tmp_path, case("wrong", "/docs/secret/k", "allow"))
    code, out, _ = run(capsys, str(d))
    assert code == 1
    assert "FAIL docs / wrong: expected allow, got deny; decision deny by p/no-secret" in out
    assert "p.test.yaml:" in out


def test_a_case_naming_a_rule_the_set_lacks_says_so_with_a_suggestion(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow", "p/read-doc"), case("ok", "/docs/b", "allow", "p/read-docs"))
    code, out, _ = run(capsys, str(d))
    assert code == 1
    assert ("expected deciding rule p/read-doc (the set has no rule p/read-doc; did you mean 'p/read-docs'?), "
            "got p/read-docs") in out
    assert out.count("the set has no rule") == 1  # a rule that exists is not called missing


def test_verbose_lists_every_case_with_its_deciding_rule(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow"), case("other", "/etc/x", "deny"))
    code, out, _ = run(capsys, str(d), "-v")
    assert code == 0
    assert "PASS  docs / reads: allow by p/read-docs" in out
    assert "PASS  docs / other: deny by default deny" in out


def test_run_filters_by_suite_and_case_name(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow"), case("broken", "/docs/a", "deny"))
    code, out, _ = run(capsys, str(d), "--run", "docs / re", "-v")
    assert code == 0 and "1/1 test cases passed" in out and "broken" not in out
    code, out, _ = run(capsys, str(d), "--run", "^docs / broken$")
    assert code == 1


@pytest.mark.parametrize("argv, message", [
    (["--run", "("], "is not a regular expression"),
    (["--run", "nothing-matches-this"], "matches none of the 1 test cases"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    d = make(tmp_path, case("reads", "/docs/a", "allow"))
    code, _, err = run(capsys, str(d), *argv)
    assert code == 2 and message in err


def test_policy_errors_and_missing_suites_exit_2_without_testing(tmp_path, capsys):
    write(tmp_path, "p.yaml", policy_yaml("p", RULES))
    code, _, err = run(capsys, str(tmp_path))
    assert code == 2 and "no PolicyTest file" in err
    write(tmp_path, "bad.yaml", policy_yaml("q", "- id: x\n  effect: allow\n  operations: [vdfs.read_file]\n"
                                                 "  condition: 'path.nope()'\n"))
    write(tmp_path, "p.test.yaml", suite(case("reads", "/docs/a", "allow")))
    code, out, err = run(capsys, str(tmp_path))
    assert code == 2 and "bad.yaml:" in err and "nothing was tested" in err and out == ""
    code, _, err = run(capsys, str(tmp_path / "absent"))
    assert code == 2 and "no such file" in err


def test_json_has_per_rule_and_per_branch_coverage(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow"), case("x", "/docs/x", "allow", library=""),
             case("other lib", "/docs/b", "deny", library="00000000-0000-4000-8000-000000000000"),
             case("outside", "/etc/x", "deny"))
    code, out, _ = run(capsys, str(d), "--format", "json")
    assert code == 0
    data = json.loads(out)
    rules = {r["rule"]: r for r in data["coverage"]["rules"]}
    read = rules["p/read-docs"]
    assert read["decided_cases"] == 2 and read["covered"]
    assert [(b["operand"], b["true"] > 0, b["false"] > 0) for b in read["branches"]] == [
        ('path.under("/docs")', True, True),
        ('library == "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"', True, True),
        ('path == "/docs/x"', True, True)]
    assert all(b["covered"] for b in read["branches"])
    assert rules["p/no-secret"]["covered"] is False
    assert rules["p/no-secret"]["branches"][0]["true"] == 0  # never true: the deny was never exercised
    summary = data["summary"]
    assert summary["branches"] == 4 and summary["branches_covered"] == 3 and summary["failed"] == 0
    assert [c["case"] for c in data["cases"]] == ["reads", "x", "other lib", "outside"]


def test_junit_parses_with_one_suite_per_policytest_and_failures(tmp_path, capsys):
    d = make(tmp_path, case("reads", "/docs/a", "allow"), case('"wrong \\u0001 <&>"', "/docs/a", "deny"))
    write(tmp_path, "q.test.yaml", suite(case("second", "/etc/x", "deny")).replace("name: docs", "name: other"))
    code, out, _ = run(capsys, str(d), "--format", "junit")
    assert code == 1
    root = ET.fromstring(out.encode())
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"docs", "other"}
    cases = {c.get("name"): c for c in suites["docs"].iter("testcase")}
    assert cases["reads"].find("failure") is None
    failure = cases["wrong \ufffd <&>"].find("failure")  # a control character XML cannot hold
    assert failure is not None and failure.get("message") == "expected deny, got allow"
    assert "decision allow by p/read-docs" in (failure.text or "")


def test_bundled_policies_pass(tmp_path, capsys):
    d = tmp_path / "policies"
    shutil.copytree(bundled.policies(), d)
    code, out, _ = run(capsys, str(d))
    assert code == 0 and "test cases passed" in out and "branch coverage" in out


@pytest.mark.parametrize("condition, expected", [
    ("a", ["a"]),
    ("a && b", ["a", "b"]),
    ("(a || b) && c", ["a", "b", "c"]),
    ("a && b || c", ["a", "b", "c"]),
    ("a || b && !(c || d)", ["a", "b", "!(c || d)"]),
    ("a ? b && c : d", ["a ? b && c : d"]),
    ("a && b ? c : d", ["a && b ? c : d"]),
    ("'x && y' == path || f(a || b)", ["'x && y' == path", "f(a || b)"]),
    ('"\\" || " == path && r\'\\\' == library', ['"\\" || " == path', "r'\\' == library"]),
    ("'''a ' && b''' == path && [a || b][0]", ["'''a ' && b''' == path", "[a || b][0]"]),
    ("((a && b))", ["a", "b"]),
    ("(a) && (b)", ["a", "b"]),
])
def test_operands_follow_the_parsed_structure(condition, expected):
    assert operands(condition) == expected
