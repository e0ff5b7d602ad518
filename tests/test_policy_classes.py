"""Operation classes (issue 11 item 3) and path-glob fixes (item 15): a deny names what an operation reveals,
so it covers every operation that reveals it, including ones registered later; lint finds denies that another
content-revealing operation walks around; `/**` protects the directory itself; NFD literals.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from helpers import LIB, load_set, policy_yaml, request, write

from capengine.policy import operations
from capengine.policy.check import run_check
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths

PHOTO_RULES = """
    - id: read-images
      effect: allow
      operations: ["vdfs.read_file", "ai.ocr", "vdfs.read_sidecar", "vdfs.stat", "vdfs.list_dir"]
      condition: 'path.under("/photos")'
    - id: private
      effect: deny
      operations: [{ops}]
      condition: 'path.glob("/photos/**/private/**")'
"""
PRIVATE = "/photos/2024/private/passport.png"


def test_the_attack_on_the_old_bundled_policy_is_found_by_lint(tmp_path):
    """The original photo-ocr policy denied read_file only: OCR, sidecars and stat still revealed the scan."""
    write(tmp_path, "p.yaml", policy_yaml("p", PHOTO_RULES.format(ops='"vdfs.read_file"')))
    ps = load_set(tmp_path)
    assert not ps.decide_raw(request("vdfs.read_file", PRIVATE)).allowed
    assert ps.decide_raw(request("ai.ocr", PRIVATE)).allowed  # the leak the lint must report
    outcome = run_check([tmp_path], operations=operations.builtin().names())
    (finding,) = [f for f in outcome.findings if f.code == "content-reachable-around-deny"]
    assert finding.severity == "warning" and finding.location.line == 11
    assert "ai.ocr" in finding.message and "vdfs.read_sidecar" in finding.message
    assert 'class:reveals-content' in finding.message
    assert run_check([tmp_path], strict=True).errors >= 1


def test_one_class_rule_denies_every_revealing_operation(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", PHOTO_RULES.format(
        ops='"class:reveals-content", "class:reveals-metadata"')))
    ps = load_set(tmp_path)
    for op in ("vdfs.read_file", "ai.ocr", "vdfs.read_sidecar", "vdfs.stat", "vdfs.list_dir"):
        d = ps.decide_raw(request(op, PRIVATE))
        assert not d.allowed and d.rules == ("p/private",), op
        assert ps.decide_raw(request(op, "/photos/2024/public.png")).allowed, op
    d = ps.decide_raw(request("vdfs.list_dir", "/photos/2024/private"))  # the directory itself
    assert not d.allowed and d.rules == ("p/private",)
    outcome = run_check([tmp_path], operations=operations.builtin().names())
    assert not [f for f in outcome.findings if f.code == "content-reachable-around-deny"]


def test_a_class_covers_operations_registered_later(tmp_path):
    """An embedding registers `ai.transcribe` (reveals content) after the policy was written: the deny holds."""
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "ai.transcribe.schema.json").write_text(json.dumps({
        "type": "object", "x-capengine": {"reveals": ["content"], "affects": []},
        "properties": {"path": {"type": "string"}}}))
    (schemas / "ai.undeclared.schema.json").write_text(json.dumps({"type": "object"}))
    policies = tmp_path / "policies"
    policies.mkdir()
    write(policies, "p.yaml", policy_yaml("p", """
        - {id: all-ai, effect: allow, operations: ["ai.*"]}
        - {id: private, effect: deny, operations: ["class:reveals-content"],
           condition: 'path.glob("/photos/**/private/**")'}
        - {id: content-readers, effect: allow, operations: ["class:reveals-content"]}
    """))
    result = load_paths([policies], schema_dirs=[schemas])
    assert not result.has_errors, result.findings
    ps = PolicySet.from_load(result)
    assert not ps.decide_raw(request("ai.transcribe", PRIVATE)).allowed
    assert ps.decide_raw(request("ai.transcribe", "/photos/a.wav")).allowed
    # Fail closed: an operation that declares nothing is in every class for a deny, in none for an allow.
    d = ps.decide_raw(request("ai.undeclared", PRIVATE))
    assert not d.allowed and d.rules == ("p/private",)
    assert ps.decide_raw(request("ai.undeclared", "/photos/a.wav")).rules == ("p/all-ai",)
    assert not ps.decide_raw(request("vdfs.unknown_op", "/photos/a.wav")).allowed
    assert ps.decide_raw(request("vdfs.unknown_op", PRIVATE)).rules == ("p/private",)


def test_unknown_class_is_a_load_error_with_a_suggestion(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: r, effect: deny, operations: ["class:reveals-contents"]}
    """))
    (finding,) = load_paths([tmp_path]).findings
    assert finding.code == "unknown-class" and finding.location.line == 7
    assert "did you mean 'class:reveals-content'" in finding.message


def test_every_shipped_operation_declares_what_it_reveals():
    from capengine.host.operations import default_registry

    catalog = operations.builtin()
    for name in default_registry().names():
        info = catalog.get(name)
        assert info is not None and info.declared, name
    assert set(catalog.members("reveals-content")) == {"vdfs.read_file", "ai.ocr", "vdfs.read_sidecar"}
    assert {"vdfs.stat", "vdfs.list_dir"} <= set(catalog.members("reveals-metadata"))


@pytest.mark.parametrize("path, denied", [
    ("/repo/.git", True), ("/repo/.git/config", True), ("/a/b/.git/objects/x", True), ("/.git", True),
    ("/repo/.github", False), ("/repo/git", False), ("/repo", False),
])
def test_trailing_double_star_covers_the_directory_itself(tmp_path, path, denied):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: all, effect: allow, operations: [vdfs.list_dir]}
        - {id: git, effect: deny, operations: ["**"], condition: 'path.glob("/**/.git/**")'}
    """))
    assert load_set(tmp_path).decide_raw(request("vdfs.list_dir", path)).allowed is not denied


def test_relative_glob_is_a_load_error_like_relative_under(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: a, effect: allow, operations: [vdfs.read_file], condition: 'path.glob("photos/*")'}
        - {id: b, effect: allow, operations: [vdfs.read_file], condition: 'path.under("photos")'}
    """))
    findings = load_paths([tmp_path]).findings
    assert sorted((f.code, f.location.line) for f in findings) == [("cel-invalid", 7), ("cel-invalid", 8)]


def test_nfd_literals_are_normalised_in_path_functions_and_linted(tmp_path):
    nfd = unicodedata.normalize("NFD", "/photos/café")
    assert nfd != "/photos/café"
    write(tmp_path, "p.yaml", policy_yaml("p", f"""
        - {{id: all, effect: allow, operations: [vdfs.read_file]}}
        - {{id: glob, effect: deny, operations: ["**"], condition: 'path.glob("{nfd}/**")'}}
        - {{id: under, effect: deny, operations: ["**"], condition: 'path.under("{nfd}/x")'}}
        - {{id: eq, effect: deny, operations: ["**"], condition: 'path == "{nfd}/y"'}}
    """))
    ps = load_set(tmp_path)
    # the request path is NFC (whatever form the guest sent); the NFD literals still protect it
    assert ps.decide_raw(request("vdfs.read_file", nfd + "/a.jpg")).rules == ("p/glob",)
    assert not ps.decide_raw(request("vdfs.read_file", "/photos/café/x/b.jpg")).allowed
    outcome = run_check([tmp_path])
    lines = sorted(f.location.line for f in outcome.findings if f.code == "nfd-literal")
    assert lines == [8, 9, 10]
    assert ps.decide_raw(request("vdfs.read_file", "/photos/other.jpg", library=LIB)).allowed
