"""Loader errors: every problem reported, each with file, line, column and a message that says what to do."""

from __future__ import annotations

import pytest
from helpers import policy_yaml, write

from capengine.policy.loader import load_paths, load_text


def findings_of(text: str) -> list[tuple[int, int, str, str]]:
    _, findings = load_text("p.yaml", text)
    return [(f.location.line, f.location.column, f.code, f.message) for f in findings]


def test_bad_yaml_position():
    [(line, col, code, msg)] = findings_of("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: x\n")
    assert code == "yaml-syntax" and line == 4 and "fix the YAML syntax" in msg


def test_duplicate_yaml_key_is_an_error_not_last_wins():
    text = "apiVersion: capengine/v1\nkind: Policy\nkind: PolicyTest\nmetadata: {name: x}\n" \
           "spec: {extensions: ['a'], rules: []}\n"
    assert (3, 1, "duplicate-key") in [f[:3] for f in findings_of(text)]


def test_unknown_key_and_wrong_type():
    text = policy_yaml("p", """
        - id: r
          effect: permit
          operations: "vdfs.read_file"
          conditon: 'true'
    """)
    found = findings_of(text)
    codes = {(line, code) for line, _, code, _ in found}
    assert (10, "schema") in codes  # the misspelt key itself
    messages = " ".join(m for *_, m in found)
    assert "'conditon'" in messages and "allowed: condition" in messages
    assert "'permit' is not one of 'allow', 'deny'" in messages
    assert "spec/rules/0/operations" in messages


def test_duplicate_rule_ids():
    text = policy_yaml("p", """
        - {id: r, effect: allow, operations: [a.b]}
        - {id: r, effect: deny, operations: [a.c]}
    """)
    [(line, col, code, msg)] = findings_of(text)
    assert (line, code) == (8, "duplicate-rule-id") and "already used by rule #1" in msg


def test_duplicate_policy_names_across_files(tmp_path):
    write(tmp_path, "a.yaml", policy_yaml("same", "- {id: r, effect: allow, operations: [a.b]}\n"))
    write(tmp_path, "b.yaml", policy_yaml("same", "- {id: r, effect: allow, operations: [a.b]}\n"))
    result = load_paths([tmp_path])
    assert [f.code for f in result.findings] == ["duplicate-policy"]
    assert "b.yaml" in result.findings[0].location.file


@pytest.mark.parametrize("condition,code,col,fragment", [
    ("path.under(", "cel-syntax", 29, "unexpected end of expression"),
    ("path +* 2", "cel-syntax", 25, "unexpected '*'"),
    ("operation == 1", "cel-type", 29, "no matching overload for '==' applied to (string, int)"),
    ("path.under(3)", "cel-type", 24, "no matching overload for 'under' applied to (string, int)"),
    ("nosuchvar == 'x'", "cel-type", 19, "undeclared reference to 'nosuchvar'"),
    ("frobnicate(path)", "cel-type", 19, "undeclared reference to function 'frobnicate'"),
    ("path.size()", "cel-type", 22, None),
    ("args.x.matches('(')", "cel-invalid", 34, "invalid regular expression"),
    ("path.under('relative')", "cel-invalid", 30, "absolute library path"),
    ("path.glob('/a/b**')", "cel-invalid", 29, "'**' must be a whole segment"),
])
def test_cel_errors_have_yaml_positions(condition, code, col, fragment):
    text = policy_yaml("p", f"""
        - id: r
          effect: allow
          operations: [a.b]
          condition: "{condition}"
    """)
    found = findings_of(text)
    assert found, condition
    line, column, got_code, msg = found[0]
    if code == "cel-type" and fragment is None:  # size() returns int: not a bool condition
        assert got_code == "cel-type" and "must be bool" in msg
        return
    assert (line, got_code) == (10, code), found
    assert column == col, found
    assert fragment in msg


def test_block_scalar_condition_position():
    text = policy_yaml("p", """
        - id: r
          effect: allow
          operations: [a.b]
          condition: |
            path.under("/a") &&
              path == 3
    """)
    [(line, col, code, msg)] = findings_of(text)
    assert (line, col, code) == (12, 16, "cel-type")


def test_all_problems_reported_not_just_first():
    text = policy_yaml("p", """
        - {id: a, effect: allow, operations: [x.y], condition: "path == 1"}
        - {id: b, effect: allow, operations: [x.y], condition: "nope"}
        - {id: c, effect: allow, operations: [x.y], extra: 1}
    """)
    codes = [code for _, _, code, _ in findings_of(text)]
    assert codes.count("cel-type") == 2 and "schema" in codes


def test_policy_with_errors_contributes_nothing():
    loaded, findings = load_text("p.yaml", policy_yaml("p", """
        - {id: ok, effect: allow, operations: [x.y]}
        - {id: bad, effect: allow, operations: [x.y], condition: "path =="}
    """))
    assert findings and loaded.policies == []


def test_unknown_kind():
    [(_, _, code, msg)] = findings_of("apiVersion: capengine/v1\nkind: Polcy\n")
    assert code == "unknown-kind" and "Policy or PolicyTest" in msg


def test_hostile_yaml_is_rejected_cleanly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))
    found = findings_of(bomb + "kind: Policy\n")
    assert found  # no hang, no traceback: the document just fails validation
    assert findings_of("!!python/object:os.system {}\n")[0][2] in ("yaml-syntax", "unknown-kind")


def test_deep_cel_expression_is_an_error_not_a_crash():
    deep = "(" * 400 + "true" + ")" * 400
    text = policy_yaml("p", f"""
        - {{id: a, effect: allow, operations: [x.y], condition: "{deep}"}}
    """)
    [(_, _, code, msg)] = findings_of(text)
    assert code == "cel-syntax" and "deeply" in msg


def test_empty_and_non_utf8_files_are_reported(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    (tmp_path / "latin1.yaml").write_bytes(b"apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: caf\xe9}\n")
    found = {(f.location.file.rsplit("/", 1)[-1], f.location.line, f.severity, f.code)
             for f in load_paths([tmp_path]).findings}
    assert found == {("empty.yaml", 1, "warning", "empty-file"), ("latin1.yaml", 3, "error", "io")}


def test_duplicate_policy_points_at_the_second_name(tmp_path):
    write(tmp_path, "a.yaml", policy_yaml("same", "- {id: r, effect: allow, operations: [a.b]}\n"))
    write(tmp_path, "b.yaml", "# a comment\n" + policy_yaml("same", "- {id: r, effect: allow, operations: [a.b]}\n"))
    (finding,) = load_paths([tmp_path]).findings
    assert finding.location.file.endswith("b.yaml") and (finding.location.line, finding.location.column) == (4, 18)
    assert "a.yaml:3:18" in finding.message


@pytest.mark.parametrize("condition, needle", [
    ('"path == \\"/x\\" && nope"', "nope"),
    ('"path == \\u0022/x\\u0022 && nope"', "nope"),
    ("'path == ''/x'' && nope'", "nope"),
    ('"nope"', "nope"),
])
def test_error_columns_are_exact_in_quoted_yaml_with_escapes(tmp_path, condition, needle):
    text = policy_yaml("p", f"- {{id: r, effect: allow, operations: [a.b], condition: {condition}}}\n")
    write(tmp_path, "p.yaml", text)
    (finding,) = load_paths([tmp_path]).findings
    line = text.splitlines()[6]
    assert (finding.location.line, finding.location.column) == (7, line.index(needle) + 1), finding
