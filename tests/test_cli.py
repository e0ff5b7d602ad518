"""`capengine check` / `explain` as CI sees them: output formats, exit codes, lint, policy tests, coverage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import policy_yaml, write

from capengine.cli import main

ROOT = Path(__file__).resolve().parent.parent
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bundled_policies_are_clean_with_full_coverage(capsys):
    code, out, _ = run(capsys, "check", str(ROOT / "policies"), "--min-coverage", "100")
    assert code == 0, out
    assert "0 error(s)" in out and "test cases passed" in out


def broken(tmp_path: Path) -> Path:
    write(tmp_path, "bad.yaml", policy_yaml("bad", """
        - {id: r, effect: allow, operations: [vdfs.read_file], condition: "path == 1"}
    """))
    write(tmp_path, "wide.yaml", policy_yaml("wide", '- {id: wide, effect: allow, operations: ["**"]}\n'))
    return tmp_path


def test_text_findings_and_exit_1(tmp_path, capsys):
    code, out, _ = run(capsys, "check", str(broken(tmp_path)))
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith(f"{tmp_path}/bad.yaml:7:") and " error cel-type " in line for line in lines), out
    assert any(" warning broad-allow " in line for line in lines), out
    assert "1 error(s), 1 warning(s)" in lines[-1]


def test_warnings_alone_exit_0_but_strict_exits_1(tmp_path, capsys):
    write(tmp_path, "w.yaml", policy_yaml("w", "- {id: wide, effect: allow, operations: ['**']}\n"))
    assert run(capsys, "check", str(tmp_path))[0] == 0
    code, out, _ = run(capsys, "check", "--strict", str(tmp_path))
    assert code == 1 and " error broad-allow " in out


def test_json_format(tmp_path, capsys):
    code, out, _ = run(capsys, "check", "--format", "json", str(broken(tmp_path)))
    data = json.loads(out)
    assert code == 1 and data["summary"]["errors"] == 1
    err = next(f for f in data["findings"] if f["severity"] == "error")
    assert (err["line"], err["code"]) == (7, "cel-type") and err["file"].endswith("bad.yaml")


def test_sarif_format(tmp_path, capsys):
    code, out, _ = run(capsys, "check", "--format", "sarif", str(broken(tmp_path)))
    sarif = json.loads(out)
    assert code == 1 and sarif["version"] == "2.1.0"
    run_ = sarif["runs"][0]
    rule_ids = [r["id"] for r in run_["tool"]["driver"]["rules"]]
    for result in run_["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
    assert {r["level"] for r in run_["results"]} == {"error", "warning"}


def test_usage_and_io_errors_exit_2(tmp_path, capsys):
    assert run(capsys, "check", str(tmp_path / "missing"))[0] == 2
    with pytest.raises(SystemExit) as exc:
        main(["check", "--format", "xml"])
    assert exc.value.code == 2


def test_failing_policy_test_reports_actual_decision(tmp_path, capsys):
    shutil.copytree(ROOT / "policies", tmp_path / "p")
    write(tmp_path / "p" / "tests", "extra.test.yaml", f"""\
        apiVersion: capengine/v1
        kind: PolicyTest
        metadata: {{name: extra}}
        cases:
          - name: secrets are readable (wrong on purpose)
            request: {{extension: com.example.photo-ocr, operation: vdfs.read_file, path: /secrets/k.png,
                       library: {LIB}}}
            expect: allow
    """)
    code, out, _ = run(capsys, "check", str(tmp_path / "p"))
    assert code == 1
    [line] = [x for x in out.splitlines() if "test-failed" in x]
    assert "extra.test.yaml:5:" in line and "expected allow, got deny" in line
    assert "org-baseline/no-secrets-dirs" in line


def test_coverage_threshold(tmp_path, capsys):
    shutil.copytree(ROOT / "policies", tmp_path / "p")
    (tmp_path / "p" / "tests" / "cloud-sync.test.yaml").unlink()
    code, out, _ = run(capsys, "check", "--coverage", "--min-coverage", "90", str(tmp_path / "p"))
    assert code == 1
    assert "note uncovered-rule rule cloud-sync/read-documents" in out
    assert "below --min-coverage 90%" in out


def test_unused_extension_glob_lint(tmp_path, capsys):
    (tmp_path / "exts" / "a").mkdir(parents=True)
    (tmp_path / "exts" / "a" / "manifest.yaml").write_text("id: com.other.app\n")
    write(tmp_path, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [ai.ocr], condition: 'true'}\n"))
    code, out, _ = run(capsys, "check", str(tmp_path / "p.yaml"), "--extensions", str(tmp_path / "exts"))
    assert code == 0 and "unused-extension-glob" in out


def test_explain_text_and_json(capsys):
    request = json.dumps({"extension": "com.example.photo-ocr", "operation": "vdfs.read_file",
                          "path": "/photos/private/a.png", "library": LIB})
    code, out, _ = run(capsys, "explain", "--policies", str(ROOT / "policies"), "--request", request)
    assert code == 0 and "decision: DENY" in out and "photo-ocr/no-raw-originals" in out
    code, out, _ = run(capsys, "explain", "--policies", str(ROOT / "policies"), "--request", request,
                       "--format", "json")
    data = json.loads(out)
    assert data["decision"]["rules"] == ["photo-ocr/no-raw-originals"]
    assert {r["rule"] for r in data["rules"]} >= {"photo-ocr/read-images", "photo-ocr/no-raw-originals"}


def test_explain_rejects_bad_request(capsys):
    code, _, err = run(capsys, "explain", "--policies", str(ROOT / "policies"), "--request", "{nope")
    assert code == 2 and "cannot read the request" in err


def test_explain_shows_conditions_operand_values_and_rules_that_did_not_apply(capsys):
    """The deciding sub-expression is visible: each `&&`/`||` operand with its value in CEL notation (an
    erroring operand says so), the condition text, and why the other rules did not apply."""
    request = json.dumps({"extension": "com.example.photo-ocr", "operation": "vdfs.read_file",
                          "path": "/photos/private/x.png", "library": "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"})
    code, out, _ = run(capsys, "explain", "--policies", "policies", "--request", request)
    assert code == 0
    assert "condition = true" in out and "True" not in out  # CEL's notation, not Python's
    assert 'path.glob("/photos/**/private/**")' in out
    assert 'path.under("/photos")  ->  true' in out
    assert "args.length > 16777216  ->  error: no such key: 'length'" in out  # absorbed by the false has()
    assert "rules that did not apply:" in out and "is not in com.example.cloud-sync" in out
    code, out, _ = run(capsys, "explain", "--policies", "policies", "--request", request, "--format", "json")
    data = json.loads(out)
    allow = next(r for r in data["rules"] if r["rule"] == "photo-ocr/read-images")
    assert allow["value"] == "true" and {"operand": 'path.under("/photos")', "value": "true"} in allow["operands"]
    assert any(r["rule"] == "cloud-sync/read-documents" for r in data["not_applicable"])
