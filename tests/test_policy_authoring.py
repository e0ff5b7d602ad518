"""Policy authoring mistakes that used to pass `check --strict` silently (issue 14): each is now a finding at
the exact line:col, with a suggestion where one exists."""

from __future__ import annotations

import shutil

from helpers import policy_yaml, write

from capengine.policy import operations
from capengine.policy.check import run_check
from capengine.policy.loader import load_paths

OPS = operations.builtin().names()


def findings_for(tmp_path, rules: str, code: str | None = None, strict: bool = False):
    text = policy_yaml("p", rules)
    write(tmp_path, "p.yaml", text)
    outcome = run_check([tmp_path], operations=OPS, strict=strict)
    found = [f for f in outcome.findings if code is None or f.code == code]
    return found, text.splitlines()


def col(lines: list[str], line: int, needle: str, nth: int = 0) -> int:
    """1-based column of the nth occurrence of `needle` in a 1-based line."""
    text, start = lines[line - 1], -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    return start + 1


def test_misspelt_optional_field_is_a_load_error_with_a_suggestion(tmp_path):
    found, lines = findings_for(tmp_path, """
        - id: big
          effect: deny
          operations: [vdfs.read_file]
          condition: 'has(args.lenght) && args.lenght > 1000'
    """)
    assert [(f.code, f.severity) for f in found] == [("cel-type", "error"), ("cel-type", "error")]
    assert (found[0].location.line, found[0].location.column) == (10, col(lines, 10, "lenght"))
    assert (found[1].location.line, found[1].location.column) == (10, col(lines, 10, "lenght", 1))
    assert "no field 'lenght'" in found[0].message and "did you mean 'length'?" in found[0].message
    assert "vdfs.read_file" in found[0].message


def test_wrong_type_for_a_schema_field_is_a_load_error(tmp_path):
    found, lines = findings_for(tmp_path, """
        - id: kinds
          effect: deny
          operations: [vdfs.write_sidecar]
          condition: 'has(args.kind) && args.kind > 3'
    """)
    (f,) = found
    assert f.code == "cel-type" and "'>' applied to (string, int)" in f.message
    assert (f.location.line, f.location.column) == (10, col(lines, 10, ">"))


def test_fields_common_to_every_matched_operation(tmp_path):
    """A rule over read_file and ai.ocr: `path` is in both, `length` only in read_file (an error), `language`
    only in ai.ocr."""
    found, _ = findings_for(tmp_path, """
        - {id: a, effect: allow, operations: [vdfs.read_file, ai.ocr], condition: 'args.path != ""'}
        - {id: b, effect: allow, operations: [vdfs.read_file, ai.ocr], condition: 'has(args.length)'}
        - {id: c, effect: allow, operations: ["class:reveals-content"], condition: 'args.path.size() > 1'}
    """)
    assert [(f.code, f.location.line) for f in found if f.severity == "error"] == [("cel-type", 8)]
    assert "in args of" in found[0].message


def test_path_prefix_test_is_flagged(tmp_path):
    found, lines = findings_for(tmp_path, """
        - {id: a, effect: allow, operations: [vdfs.read_file], condition: 'path.startsWith("/photos")'}
        - {id: b, effect: allow, operations: [vdfs.read_file], condition: 'path.startsWith("/photos/")'}
        - {id: c, effect: allow, operations: [vdfs.read_file], condition: 'path.endsWith(".png")'}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'path.contains("/private")'}
    """, "path-prefix")
    assert [(f.location.line, f.location.column) for f in found] == [
        (7, col(lines, 7, "startsWith")), (10, col(lines, 10, "contains"))]
    assert 'use path.under("/photos")' in found[0].message


def test_deny_reading_an_optional_arg_without_has_is_flagged(tmp_path):
    found, lines = findings_for(tmp_path, """
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 1000'}
        - {id: b, effect: deny, operations: [vdfs.read_file], condition: 'has(args.length) && args.length > 9'}
        - {id: c, effect: allow, operations: [vdfs.read_file], condition: 'args.length < 1000'}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'args.path == "/x"'}
    """, "unguarded-optional")
    (f,) = found
    assert (f.location.line, f.location.column) == (7, col(lines, 7, "length"))
    assert f.severity == "warning"
    strict = run_check([tmp_path], operations=OPS, strict=True).findings
    assert [f.code for f in strict if f.severity == "error" and f.code != "partial-shadow"] == ["unguarded-optional"]


def test_unknown_operation_is_an_error_at_the_item_with_a_suggestion(tmp_path):
    found, lines = findings_for(tmp_path, """
        - {id: a, effect: allow, operations: [vdfs.stat, vdfs.readfile], condition: 'path.under("/x")'}
        - {id: wide, effect: allow, operations: ["*"]}
    """)
    assert [(f.code, f.severity, f.location.line) for f in found] == [
        ("unknown-operation", "error", 7), ("unknown-operation", "error", 8)]
    assert found[0].location.column == col(lines, 7, "vdfs.readfile")
    assert "did you mean 'vdfs.read_file'?" in found[0].message
    assert not [f for f in found if f.code == "broad-allow"]  # '*' matches nothing: one finding, not two


def test_unknown_limit_operation(tmp_path):
    text = policy_yaml("p", "- {id: a, effect: allow, operations: [ai.ocr]}\n") + \
        "  limits:\n    - {operations: [ai.ocrr], rate: 1/second}\n"
    write(tmp_path, "p.yaml", text)
    (f,) = [f for f in run_check([tmp_path], operations=OPS).findings if f.code == "unknown-limit-operation"]
    assert f.location.line == 9 and "did you mean 'ai.ocr'?" in f.message


def test_policy_test_with_unknown_operation_or_extension_is_flagged(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", "- {id: a, effect: allow, operations: [vdfs.stat]}\n"))
    write(tmp_path, "p.test.yaml", """\
        apiVersion: capengine/v1
        kind: PolicyTest
        metadata: {name: t}
        cases:
          - name: typo
            request: {extension: com.example.app, operation: vdfs.stats, path: /a}
            expect: deny
          - name: other extension
            request: {extension: org.nobody.app, operation: vdfs.stat, path: /a}
            expect: deny
          - name: fine
            request: {extension: com.example.app, operation: vdfs.stat, path: /a}
            expect: allow
    """)
    outcome = run_check([tmp_path], operations=OPS)
    got = sorted((f.code, f.location.line) for f in outcome.findings)
    assert got == [("test-unknown-extension", 8), ("test-unknown-operation", 5)]
    assert "did you mean 'vdfs.stat'?" in [f for f in outcome.findings if f.location.line == 5][0].message


def test_function_and_key_suggestions(tmp_path):
    found, lines = findings_for(tmp_path, """
        - {id: a, effect: allow, operations: [vdfs.stat], condition: 'path.startswith("/x")'}
        - {id: b, effect: allow, operations: [vdfs.stat], condition: 'pth == "/x"'}
    """)
    assert "did you mean 'startsWith'?" in found[0].message
    assert "did you mean 'path'?" in found[1].message


def test_revision_is_independent_of_path_spelling(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere"
    shutil.copytree("policies", copy)
    relative = load_paths(["policies"]).revision
    absolute = load_paths([str((tmp_path / ".." / tmp_path.name / "elsewhere").resolve())]).revision
    assert relative == absolute == load_paths([copy]).revision
    (copy / "photo-ocr.yaml").write_text((copy / "photo-ocr.yaml").read_text() + "\n# changed\n")
    assert load_paths([copy]).revision != relative


def test_unknown_key_is_reported_on_the_key_with_a_suggestion(tmp_path):
    found, lines = findings_for(tmp_path, """
        - id: a
          effect: deny
          operations: [vdfs.read_file]
          conditon: 'path.under("/secrets")'
    """)
    (f,) = [f for f in found if f.code == "schema"]
    assert (f.location.line, f.location.column) == (10, col(lines, 10, "conditon"))
    assert "did you mean 'condition'?" in f.message


def test_extra_schema_directory_is_the_escape_hatch_for_operations_registered_later(tmp_path, monkeypatch):
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "sync.upload.schema.json").write_text(
        '{"type": "object", "x-capengine": {"reveals": ["content"]}, "additionalProperties": false,'
        ' "required": ["path"], "properties": {"path": {"type": "string"}, "size": {"type": "integer"}}}')
    policies = tmp_path / "policies"
    policies.mkdir()
    write(policies, "p.yaml", policy_yaml("p", """
        - {id: up, effect: allow, operations: [sync.upload], condition: 'has(args.size) && args.size < 10'}
    """))
    assert [f.code for f in run_check([policies], operations=OPS).findings] == ["unknown-operation"]
    assert run_check([policies], operations=OPS, schema_dirs=[schemas]).findings == ()
    monkeypatch.setenv("CAPENGINE_OPERATION_SCHEMAS", str(schemas))
    assert run_check([policies], operations=OPS).findings == ()
    write(policies, "p.yaml", policy_yaml("p", """
        - {id: up, effect: allow, operations: [sync.upload], condition: 'args.sise < 10'}
    """))
    (f,) = run_check([policies], operations=OPS).findings
    assert f.code == "cel-type" and "did you mean 'size'?" in f.message


def test_a_broken_schema_directory_is_a_clear_error(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", "- {id: a, effect: allow, operations: [vdfs.stat]}\n"))
    (f,) = run_check([tmp_path / "p.yaml"], schema_dirs=[tmp_path / "missing"]).findings
    assert f.code == "io" and "not a directory" in f.message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.op.schema.json").write_text("[1, 2]")
    (f,) = run_check([tmp_path / "p.yaml"], schema_dirs=[bad]).findings
    assert f.code == "io" and "must be a JSON object" in f.message
    (bad / "x.op.schema.json").write_text("{not json")
    (f,) = run_check([tmp_path / "p.yaml"], schema_dirs=[bad]).findings
    assert f.code == "io" and "x.op.schema.json: not valid JSON" in f.message


def test_text_report_shows_the_source_line_with_a_caret(tmp_path):
    from capengine.policy import report

    found, lines = findings_for(tmp_path, """
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'args.lenght > 1'}
    """)
    text = report.as_text(found, "summary").splitlines()
    column = col(lines, 7, "lenght")
    assert text[1] == f"  7 | {lines[6]}"
    assert text[2] == "    | " + " " * (column - 1) + "^"


def test_rate_and_regex_errors_in_plain_words(tmp_path):
    text = policy_yaml("p", """
        - {id: a, effect: allow, operations: [vdfs.stat], condition: 'path.matches(r"(a)\\1")'}
        - {id: b, effect: allow, operations: [vdfs.stat], condition: 'path.matches("a(?=b)")'}
    """) + "  limits:\n    - {operations: [vdfs.stat], rate: 10/sec}\n"
    write(tmp_path, "p.yaml", text)
    messages = [f.message for f in load_paths([tmp_path]).findings]
    assert any("backreferences" in m and "RE2" in m for m in messages), messages
    assert any("lookahead" in m for m in messages), messages
    assert any("is not a rate" in m and "10/second" in m for m in messages), messages
