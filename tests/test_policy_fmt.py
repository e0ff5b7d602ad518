"""`capengine fmt`: canonical layout, idempotent, never changes meaning, refuses what it cannot keep."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from helpers import policy_yaml, write

from capengine import bundled
from capengine.cli import main
from capengine.policy.engine import PolicySet
from capengine.policy.fmt import FormatError, _dump, _load, format_text
from capengine.policy.loader import load_paths, load_text

MESSY = """apiVersion: capengine/v1
spec:
  rules:
  - message: "no secrets"
    condition: "path.under(\\"/secrets\\") || has(args.length) && args.length > 10"
    operations:
    - vdfs.read_file
    effect: deny
    id: no-secrets
  - {id: read, effect: allow, operations: ["vdfs.*"], condition: "path.under('/docs')"}
  extensions:
      - "com.example.*"
metadata:
  description: >
    Two lines
    of text.
  name: messy
kind: Policy
"""


def bundled_files() -> list[Path]:
    return sorted(Path(bundled.policies()).rglob("*.yaml"))


def test_canonical_layout():
    out = format_text(MESSY)
    assert out.splitlines()[:6] == ["apiVersion: capengine/v1", "kind: Policy", "metadata:", "  name: messy",
                                    "  description: |", "    Two lines of text."]
    assert "  extensions: [com.example.*]\n  rules:\n    - id: no-secrets\n      effect: deny\n" \
           "      operations: [vdfs.read_file]\n" \
           "      condition: 'path.under(\"/secrets\") || has(args.length) && args.length > 10'\n" \
           "      message: no secrets\n    - id: read\n" in out


def decisions(path: Path) -> tuple:
    result = load_paths([path])
    assert not result.has_errors, [str(f) for f in result.findings]
    ps = PolicySet.from_load(result)
    rules = [(r.qualified_id, r.rule.effect, r.rule.operations, r.rule.condition, r.rule.message) for r in ps.rules]
    rng = random.Random(7)
    requests = [{"extension": "com.example." + rng.choice(["a", "photo-ocr", "cloud-sync", "hello-wat"]),
                 "operation": rng.choice(["vdfs.read_file", "vdfs.stat", "ai.ocr", "credentials.get"]),
                 "path": rng.choice(["/docs/a", "/secrets/k", "/photos/x.png", "/photos/p/private/y.png"]),
                 "library": "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6", "args": {"length": rng.choice([1, 99])}}
                for _ in range(200)]
    return rules, [ps.decide_raw(r).to_json() | {"revision": ""} for r in requests]


@pytest.mark.parametrize("name", ["messy", "bundled"])
def test_idempotent_and_meaning_preserving(tmp_path, name):
    sources = {"messy.yaml": MESSY} if name == "messy" else {
        # bundled files with comments are refused; their data is formatted to test idempotency and meaning
        p.name: (p.read_text() if "#" not in p.read_text().split("\n", 1)[1] else _dump(_load(p.read_text())))
        for p in bundled_files()}
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    for fname, text in sources.items():
        (before / fname).write_text(text)
        once = format_text(text)
        assert format_text(once) == once  # fmt(fmt(x)) == fmt(x)
        assert _load(once) == _load(text)
        (after / fname).write_text(once)
    assert decisions(before) == decisions(after)


def test_generated_policies_are_idempotent():
    rng = random.Random(3)
    conditions = ['path.under("/a")', "true", "a\nb", "x == 'it''s'", "trailing \n"]
    messages = ["x: y", "yes", "#not a comment", "  lead", "ünï", "1.0", "null", "- dash"]
    for i in range(60):
        rules = ""
        for j in range(rng.randint(1, 4)):
            ops = rng.sample(["vdfs.read_file", "vdfs.stat", "ai.ocr", "vdfs.*", "**"], rng.randint(1, 3))
            rules += f"- id: r{j}\n  effect: {rng.choice(['allow', 'deny'])}\n  operations: {json.dumps(ops)}\n"
            if rng.random() < .7:
                rules += f"  condition: {json.dumps(rng.choice(conditions))}\n"
            if rng.random() < .5:
                rules += f"  message: {json.dumps(rng.choice(messages))}\n"
        text = policy_yaml(f"p{i}", rules)
        once = format_text(text)
        assert format_text(once) == once, text
        assert _load(once) == _load(text), text


@pytest.mark.parametrize("text, line, message", [
    ("apiVersion: capengine/v1\nkind: Policy # why\n", 2, "comments"),
    ("# a note\napiVersion: capengine/v1\n", 1, "comments"),
    ("apiVersion: capengine/v1\nkind: Policy\nkind: Policy\n", 3, "duplicate key 'kind'"),
    ("apiVersion: [\n", 2, "not valid YAML"),
])
def test_refuses_what_it_cannot_keep(text, line, message):
    with pytest.raises(FormatError) as info:
        format_text(text)
    assert message in info.value.message and info.value.line == line


def test_hash_inside_strings_is_not_a_comment_and_the_schema_header_is_kept():
    text = ("# yaml-language-server: $schema=../schemas/policy.schema.json\napiVersion: capengine/v1\n"
            "kind: Policy\nmetadata: {name: p, description: 'see #3'}\nspec: {extensions: ['a.b'], rules: []}\n")
    out = format_text(text)
    assert out.startswith("# yaml-language-server: $schema=../schemas/policy.schema.json\napiVersion:")
    assert "description: 'see #3'" in out or "description: see #3" in out
    _, findings = load_text("x.yaml", out)
    assert not [f for f in findings if f.severity == "error"]


def test_cli_check_lists_files_and_writes_nothing(tmp_path, capsys):
    messy = write(tmp_path, "m.yaml", MESSY)
    canonical = tmp_path / "c.yaml"
    canonical.write_text(format_text(MESSY))
    assert main(["fmt", "--check", str(tmp_path)]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [str(messy)]
    assert messy.read_text() == MESSY


def test_cli_rewrites_through_symlinks_keeping_mode(tmp_path, capsys):
    real = write(tmp_path, "real.yaml.txt", MESSY)
    os.chmod(real, 0o640)
    d = tmp_path / "d"
    d.mkdir()
    (d / "link.yaml").symlink_to(real)
    assert main(["fmt", str(d)]) == 0
    assert (d / "link.yaml").is_symlink() and real.read_text() == format_text(MESSY)
    assert real.stat().st_mode & 0o777 == 0o640
    assert main(["fmt", "--check", str(d)]) == 0
    capsys.readouterr()


def test_cli_refused_files_exit_2_and_stay_untouched(tmp_path, capsys):
    commented = write(tmp_path, "c.yaml", "apiVersion: capengine/v1  # keep me\nkind: Policy\n")
    assert main(["fmt", str(tmp_path)]) == 2
    _, err = capsys.readouterr()
    assert f"{commented}:1:27:" in err and "comments" in err
    assert commented.read_text().endswith("# keep me\nkind: Policy\n")
    assert main(["fmt", str(tmp_path / "absent")]) == 2


def test_bundled_files_without_comments_are_canonical(tmp_path):
    d = tmp_path / "p"
    shutil.copytree(bundled.policies(), d)
    for p in d.rglob("*.yaml"):
        try:
            assert format_text(p.read_text()) is not None
        except FormatError as exc:
            assert "comments" in exc.message
