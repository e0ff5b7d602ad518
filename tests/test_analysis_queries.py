"""analyze can / diff / permissions / lint: answers proved or backed by witnesses the real engine confirms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import LIB, load_set, policy_yaml, write

from capengine.analysis.can import AnalysisError, can
from capengine.analysis.diff import DEFAULT_DENY, diff
from capengine.analysis.domain import operation_names
from capengine.analysis.lints import lint
from capengine.analysis.permissions import declared_operations, permissions, policy_operations
from capengine.cli import main
from capengine.policy import functions
from capengine.policy.model import Request

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_EXTENSIONS = ["com.example.photo-ocr", "com.example.cloud-sync", "com.example.hello-wat", "com.other.x"]


def engine_request(witness) -> Request:
    request = witness.request()
    assert request is not None, witness  # the host would accept it
    return request


@pytest.fixture(scope="module")
def bundled():
    return load_set(ROOT / "policies")


@pytest.mark.parametrize("extension", BUNDLED_EXTENSIONS)
def test_every_witness_of_can_is_allowed_by_the_engine(bundled, extension):
    answers = {op: can(bundled, extension, op) for op in operation_names()}
    for op, answer in answers.items():
        assert answer.answer in ("yes", "never"), answer.text()
        if answer.answer == "yes":
            decision = bundled.decide(engine_request(answer.witness))
            assert decision.allowed and decision.rules[0] == answer.rule, (op, answer.witness)
    if extension == "com.other.x":
        assert all(a.answer == "never" for a in answers.values())  # only org-wide denies apply: default deny


def test_can_known_answers_on_bundled_policies(bundled):
    ocr = "com.example.photo-ocr"
    assert can(bundled, ocr, "vdfs.read_file", "/photos/**/private/**").answer == "never"
    assert can(bundled, ocr, "vdfs.read_file", "/secrets/**").answer == "never"
    assert can(bundled, "com.example.cloud-sync", "credentials.delete").answer == "never"
    assert can(bundled, ocr, "vdfs.read_file", library="00000000-0000-0000-0000-000000000000").answer == "never"
    # no-raw-originals denies by operation class: whatever reveals a private photo's content or metadata
    for op in ("ai.ocr", "vdfs.read_sidecar", "vdfs.list_dir", "vdfs.stat"):
        assert can(bundled, ocr, op, "/photos/**/private/**").answer == "never", op
    ocr_photos = can(bundled, ocr, "ai.ocr", "/photos/**")
    assert ocr_photos.answer == "yes" and ocr_photos.rule == "photo-ocr/read-images"
    assert functions._glob(ocr_photos.witness.path, "/photos/**")
    assert not functions._glob(ocr_photos.witness.path, "/photos/**/private/**")
    big = can(bundled, ocr, "vdfs.read_file")
    assert big.answer == "yes" and big.witness.library == LIB


def test_question_errors_are_reported(bundled):
    with pytest.raises(AnalysisError, match="unknown operation"):
        can(bundled, "x", "vdfs.nope")
    with pytest.raises(AnalysisError, match="--library"):
        can(bundled, "x", "vdfs.stat", library="not-a-uuid")
    with pytest.raises(AnalysisError, match="--path"):
        can(bundled, "x", "vdfs.stat", path_glob="/a**b")


def _set(tmp_path: Path, name: str, rules: str) -> object:
    directory = tmp_path / name
    directory.mkdir()
    write(directory, "p.yaml", policy_yaml("p", rules))
    return load_set(directory)


def test_fail_closed_errors_are_exact(tmp_path):
    allow_unguarded = _set(tmp_path, "a", """
    - {id: r, effect: allow, operations: [vdfs.read_file], condition: 'args.length < 100'}
    """)
    answer = can(allow_unguarded, "com.example.a", "vdfs.read_file")
    assert answer.answer == "yes" and "length" in answer.witness.args  # absent length errors: never allows
    deny_unguarded = _set(tmp_path, "b", """
    - {id: base, effect: allow, operations: [vdfs.read_file, vdfs.stat]}
    - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 100'}
    """)
    answer = can(deny_unguarded, "com.example.a", "vdfs.read_file")
    assert answer.answer == "yes" and answer.witness.args["length"] <= 100  # absent length errors: denied
    assert can(deny_unguarded, "com.example.a", "vdfs.stat").answer == "yes"


def test_timeout_is_unknown_never_no(tmp_path):
    hard = _set(tmp_path, "h", """
    - id: r
      effect: allow
      operations: [vdfs.read_file]
      condition: 'args.offset * args.offset * args.offset == args.length * args.length * args.length + 3
                  && args.length > 100000'
    """)
    answer = can(hard, "com.example.a", "vdfs.read_file", timeout_ms=300)
    assert answer.answer in ("unknown", "yes")
    if answer.answer == "yes":
        assert hard.decide(engine_request(answer.witness)).allowed


def test_rule_outside_the_fragment_is_reported_and_never_claims_a_proof(tmp_path):
    policy_set = _set(tmp_path, "u", """
    - {id: m, effect: allow, operations: [vdfs.stat], condition: 'path.lowerAscii() == "/a"'}
    """)
    answer = can(policy_set, "com.example.a", "vdfs.stat")
    assert "p/m" in answer.unanalysable and "lowerAscii" in answer.unanalysable["p/m"][0]
    assert answer.answer in ("unknown", "yes")  # "/a" is allowed: a "never" here would be a false proof
    if answer.answer == "yes":
        assert policy_set.decide(engine_request(answer.witness)).allowed
    # an unanalysable deny cannot hide a proof either: the allow below may be denied by it, or not
    guarded = _set(tmp_path, "v", """
    - {id: a, effect: allow, operations: [vdfs.stat]}
    - {id: d, effect: deny, operations: [vdfs.stat], condition: '[1, 2].exists(x, x == 3) || path == "/z"'}
    """)
    answer = can(guarded, "com.example.a", "vdfs.stat", path_glob="/z")
    assert answer.answer == "never"  # proved although the deny is partly approximated: `path == "/z"` decides
    assert "p/d" in answer.unanalysable


# ---------------------------------------------------------------------------------------------------- diff

OLD = """
- {id: read, effect: allow, operations: [vdfs.read_file], condition: 'path.glob("/photos/*.jpg")'}
- {id: private, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/photos/private")'}
- {id: creds, effect: allow, operations: [credentials.get], condition: 'args.name.matches("^app-[a-z]+$")'}
- {id: big, effect: deny, operations: [vdfs.read_file], condition: 'has(args.length) && args.length > 1000'}
"""


def _pair(tmp_path: Path, old: str, new: str):
    return _set(tmp_path, "old", old), _set(tmp_path, "new", new)


def _confirm(old_set, new_set, result) -> None:
    for d in result.differences:
        request = engine_request(d.witness)
        before, after = old_set.decide(request), new_set.decide(request)
        assert before.allowed == (d.direction == "narrowed") and after.allowed == (d.direction == "widened")


def _summary(result) -> set[tuple[str, str, str]]:
    return {(d.direction, d.operation, d.rule) for d in result.differences}


def test_unchanged_set_has_no_difference(tmp_path):
    old_set, new_set = _pair(tmp_path, OLD, OLD)
    result = diff(old_set, new_set)
    assert result.differences == () and result.unsettled == () and not result.may_widen


def test_dropping_a_deny_that_never_mattered_is_no_difference(tmp_path):
    # `*` does not cross "/": the read rule never reached /photos/private, so the deny decided nothing
    new = "\n".join(line for line in OLD.splitlines() if "id: private" not in line)
    old_set, new_set = _pair(tmp_path, OLD, new)
    assert diff(old_set, new_set).differences == ()


def test_widened_glob(tmp_path):
    old_set, new_set = _pair(tmp_path, OLD, OLD.replace("/photos/*.jpg", "/photos/**/*.jpg"))
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "vdfs.read_file", "p/read")}
    _confirm(old_set, new_set, result)
    path = result.differences[0].witness.path
    assert functions._glob(path, "/photos/**/*.jpg") and not functions._glob(path, "/photos/*.jpg")


def test_dropped_deny(tmp_path):
    old = OLD.replace("/photos/*.jpg", "/photos/**/*.jpg")
    new = "\n".join(line for line in old.splitlines() if "id: private" not in line)
    old_set, new_set = _pair(tmp_path, old, new)
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "vdfs.read_file", "p/read")}
    _confirm(old_set, new_set, result)
    assert result.differences[0].witness.path.startswith("/photos/private/")
    assert result.differences[0].old.rules == ("p/private",)


def test_changed_regex_both_ways(tmp_path):
    old_set, new_set = _pair(tmp_path, OLD, OLD.replace("^app-[a-z]+$", "^app-[a-z0-9]+$"))
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "credentials.get", "p/creds")}
    _confirm(old_set, new_set, result)
    assert any(c.isdigit() for c in result.differences[0].witness.args["name"])
    old_set, new_set = _pair(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, OLD,
                             OLD.replace("^app-[a-z]+$", "^app-[0-9]+$"))
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "credentials.get", "p/creds"),
                                ("narrowed", "credentials.get", DEFAULT_DENY)}
    _confirm(old_set, new_set, result)


def test_removed_has_guard_narrows_through_fail_closed(tmp_path):
    old_set, new_set = _pair(tmp_path, OLD, OLD.replace("has(args.length) && ", ""))
    result = diff(old_set, new_set)
    assert _summary(result) == {("narrowed", "vdfs.read_file", "p/big")}
    _confirm(old_set, new_set, result)
    assert "length" not in result.differences[0].witness.args  # the absent field now errors: deny fires
    assert not result.may_widen


def test_diff_over_extension_globs(tmp_path):
    old_set = _set(tmp_path, "old", "- {id: r, effect: allow, operations: [test.ping]}\n")
    directory = tmp_path / "new"
    directory.mkdir()
    write(directory, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [test.ping]}\n",
                                           extensions='["com.example.*", "org.acme.**"]'))
    new_set = load_set(directory)
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "test.ping", "p/r")}
    assert result.differences[0].witness.extension.startswith("org.acme.")
    _confirm(old_set, new_set, result)


def test_unanalysable_rule_in_diff_is_reported_and_unchanged_copies_cancel(tmp_path):
    odd = "- {id: odd, effect: deny, operations: [vdfs.read_file], condition: 'path.lowerAscii() == \"/x\"'}\n"
    old_set, new_set = _pair(tmp_path, OLD + odd, OLD.replace("/photos/*.jpg", "/photos/**/*.jpg") + odd)
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "vdfs.read_file", "p/read")}  # the shared approximation cancels
    _confirm(old_set, new_set, result)
    assert "new:p/odd" in result.unanalysable and "old:p/odd" in result.unanalysable


# ----------------------------------------------------------------------------------------------- the CLI

def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_diff_exit_codes_and_formats(tmp_path, capsys):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    for d, text in ((old_dir, OLD), (new_dir, OLD.replace("/photos/*.jpg", "/photos/**"))):
        d.mkdir()
        write(d, "p.yaml", policy_yaml("p", text))
    code, out, _ = run(capsys, "diff", str(old_dir), str(old_dir))
    assert code == 0 and "0 widening(s)" in out
    code, out, _ = run(capsys, "diff", str(old_dir), str(new_dir))
    assert code == 1 and "p/read" in out and "WIDENED" in out
    code, out, _ = run(capsys, "diff", str(old_dir), str(new_dir), "--allow-widening", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["summary"]["widened"] == 1
    code, out, _ = run(capsys, "diff", str(old_dir), str(new_dir), "--format", "sarif")
    sarif = json.loads(out)
    assert code == 1 and sarif["runs"][0]["results"][0]["ruleId"] == "policy-widened"
    code, _, err = run(capsys, "diff", str(old_dir), str(tmp_path / "missing"))
    assert code == 2 and "no such file" in err


def test_cli_analyze_can(capsys):
    policies = str(ROOT / "policies")
    code, out, _ = run(capsys, "analyze", "can", "com.example.photo-ocr", "vdfs.read_file", "--policies", policies,
                       "--path", "/photos/**/private/**")
    assert code == 0 and "never (proved)" in out
    code, out, _ = run(capsys, "analyze", "can", "com.example.photo-ocr", "vdfs.read_file", "--policies", policies,
                       "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["answer"] == "yes"
    request = Request.from_mapping(data["witness"])
    assert load_set(ROOT / "policies").decide(request).allowed
    code, _, err = run(capsys, "analyze", "can", "x", "no.such", "--policies", policies)
    assert code == 2 and "unknown operation" in err


def test_permissions_from_the_manifest(bundled, capsys):
    ops = declared_operations(str(ROOT / "extensions"), "com.example.photo-ocr")
    assert ops == ["ai.ocr", "vdfs.list_dir", "vdfs.read_file", "vdfs.write_sidecar"]
    summaries = {s.operation: s for s in permissions(bundled, "com.example.photo-ocr", ops)}
    read = summaries["vdfs.read_file"]
    verdicts = {f.subject: f.verdict for f in read.regions + read.libraries + read.args}
    assert verdicts["path under /secrets"] == "never"
    assert verdicts["path glob /photos/**/private/**"] == "never"
    assert verdicts["path anywhere else"] == "never"
    assert verdicts["any other library"] == "never"
    assert verdicts["path under /photos"].startswith("sometimes")
    assert verdicts["args.length"] == "at most 16777216 when present (proved)"
    assert {f.subject: f.verdict for f in summaries["vdfs.write_sidecar"].args}["args.kind"].startswith("one of")
    for summary in summaries.values():
        for f in summary.regions + summary.libraries:
            if f.example is not None:
                assert bundled.decide(engine_request(f.example)).allowed
    assert policy_operations(bundled, "com.example.cloud-sync", operation_names())[:3] == [
        "credentials.delete", "credentials.get", "credentials.store"]
    code, out, _ = run(capsys, "analyze", "permissions", "com.example.cloud-sync", "--policies",
                       str(ROOT / "policies"))
    assert code == 0 and "credentials.delete: never allowed (proved)" in out and "starts with 'sync.'" in out
    assert "path under /documents: always except glob /**/.git/** (proved)" in out  # vdfs.list_dir / stat


# ----------------------------------------------------------------------------------------------- lints

def test_proven_lints(tmp_path):
    policy_set = _set(tmp_path, "l", """
    - {id: everything-denied, effect: deny, operations: [vdfs.stat], condition: 'path.under("/")'}
    - {id: shadowed, effect: allow, operations: [vdfs.stat], condition: 'path.under("/a")'}
    - {id: wide, effect: allow, operations: [vdfs.list_dir], condition: 'path.under("/docs")'}
    - {id: narrow, effect: allow, operations: [vdfs.list_dir], condition: 'path.under("/docs/x")'}
    - {id: dead, effect: allow, operations: [vdfs.read_file], condition: 'args.length / (args.offset-args.offset) > 0'}
    - {id: impossible, effect: allow, operations: [vdfs.stat], condition: 'path.startsWith("/a") && path.endsWith("/")'}
    - {id: only-errors, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 5 && args.length < 3'}
    - {id: ok, effect: allow, operations: [vdfs.read_file, ai.ocr], condition: 'path.under("/photos")'}
    - {id: no-private, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/photos/private")'}
    """)
    found = {(f.code, f.rule) for f in lint(policy_set)}
    assert found == {
        ("shadowed-allow", "p/shadowed"),
        ("redundant-allow", "p/narrow"),
        ("never-matches", "p/dead"),
        ("never-matches", "p/impossible"),
        ("deny-only-on-error", "p/only-errors"),
        ("content-reachable-around-deny", "p/no-private"),
    }
    found_all = lint(policy_set)
    dead = next(f for f in found_all if f.rule == "p/dead")  # absent fields and division by zero: always an error
    assert "errors or is false on every request" in dead.message
    around = next(f for f in found_all if f.code == "content-reachable-around-deny")
    denied, allowed = (engine_request(w) for w in around.witnesses)
    assert not policy_set.decide(denied).allowed and policy_set.decide(allowed).allowed
    assert denied.path == allowed.path and denied.path.startswith("/photos/private")


def _bundled_with_name_deny(tmp_path: Path) -> Path:
    """The bundled policies as they were before no-raw-originals denied by operation class: it named
    vdfs.read_file only, so ai.ocr and vdfs.read_sidecar still revealed private photos."""
    out = tmp_path / "gap-policies"
    out.mkdir()
    for f in (ROOT / "policies").glob("*.yaml"):
        (out / f.name).write_text(f.read_text())
    ocr = out / "photo-ocr.yaml"
    text = ocr.read_text()
    selector = 'operations: [class:reveals-content, class:reveals-metadata]'
    assert text.count(selector) == 1
    ocr.write_text(text.replace(selector, 'operations: ["vdfs.read_file"]'))
    return out


def test_content_gaps_in_the_bundled_policies(bundled, tmp_path):
    gap_dir = _bundled_with_name_deny(tmp_path)
    gap_set = load_set(gap_dir)
    found = lint(gap_set)
    codes = {(f.code, f.rule) for f in found}
    assert ("content-reachable-around-deny", "photo-ocr/no-raw-originals") in codes
    # a size limit is not a content deny
    assert ("content-reachable-around-deny", "org-baseline/no-huge-reads") not in codes
    assert not any(code in ("never-matches", "shadowed-allow", "redundant-allow") for code, _ in codes)
    for f in found:
        if f.code == "content-reachable-around-deny":
            denied, allowed = (engine_request(w) for w in f.witnesses)
            # path.glob's own matcher: a trailing ** also matches the directory itself ("/photos/private")
            assert functions._glob(denied.path, "/photos/**/private/**") and denied.path == allowed.path
            assert not gap_set.decide(denied).allowed and gap_set.decide(allowed).allowed
            assert allowed.operation in ("ai.ocr", "vdfs.read_sidecar")
    # as shipped, the deny covers the reveals-content class: the gap is closed, and the lint says so
    shipped = {(f.code, f.rule) for f in lint(bundled)}
    assert not any(code == "content-reachable-around-deny" for code, _ in shipped), shipped
    assert not any(code in ("never-matches", "shadowed-allow", "redundant-allow") for code, _ in shipped)


def test_cli_analyze_lint_and_permissions_errors(tmp_path, capsys):
    policies = str(ROOT / "policies")
    gaps = str(_bundled_with_name_deny(tmp_path))
    code, out, _ = run(capsys, "analyze", "lint", "--policies", gaps, "--format", "sarif")
    sarif = json.loads(out)
    assert code == 0 and {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"content-reachable-around-deny"}
    code, _, _ = run(capsys, "analyze", "lint", "--policies", gaps, "--strict")
    assert code == 1
    code, _, _ = run(capsys, "analyze", "lint", "--policies", policies, "--strict")
    assert code == 0
    code, _, err = run(capsys, "analyze", "permissions", "com.example.nobody", "--policies", policies,
                       "--extensions", str(ROOT / "extensions"))
    assert code == 2 and "no manifest" in err
    bad = tmp_path / "ext" / "broken"
    bad.mkdir(parents=True)
    (bad / "manifest.yaml").write_text("id: [unclosed\n")
    code, _, err = run(capsys, "analyze", "permissions", "x", "--policies", policies, "--extensions",
                       str(tmp_path / "ext"))
    assert code == 2 and "manifest.yaml" in err
    broken = tmp_path / "broken-policies"
    broken.mkdir()
    write(broken, "p.yaml", policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.stat], "
                                             "condition: 'path == 1'}\n"))
    code, _, err = run(capsys, "analyze", "can", "x", "vdfs.stat", "--policies", str(broken))
    assert code == 2 and "has errors" in err


def test_diff_with_a_condition_reading_the_extension_keeps_it_symbolic(tmp_path):
    old = "- {id: r, effect: allow, operations: [test.ping], condition: 'extension.endsWith(\".beta\")'}\n"
    old_set, new_set = _pair(tmp_path, old, old.replace('".beta"', '"beta"'))
    result = diff(old_set, new_set)
    assert _summary(result) == {("widened", "test.ping", "p/r")}
    _confirm(old_set, new_set, result)
    extension = result.differences[0].witness.extension
    assert extension.endswith("beta") and not extension.endswith(".beta") and extension.startswith("com.example.")
