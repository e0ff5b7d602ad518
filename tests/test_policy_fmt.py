"""`capengine fmt`: canonical layout, idempotent, never changes meaning, keeps every comment where it belongs,
refuses hostile input with a clear error and never leaves a partial file."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import policy_yaml, write

from capengine import bundled
from capengine.cli import main
from capengine.policy.engine import PolicySet
from capengine.policy.fmt import FormatError, format_text
from capengine.policy.fmt_comments import comments
from capengine.policy.loader import load_paths, load_text
from capengine.policy.yaml_source import load_documents

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

COMMENTED = """# file header

kind: Policy   # the kind
apiVersion: capengine/v1
spec:
  # rules come first in this file
  rules:
    # about r1
    - effect: allow  # eol on effect
      id: r1
      condition: >  # a folded condition
        path.under("/a")
        && true
      operations:
        - vdfs.read_file  # reading
        # stat too
        - vdfs.stat
    - {id: r2, effect: deny, operations: ["**"]}  # flow rule
    - id: r3
      effect: deny
      operations: [vdfs.stat]
      # commented-out: message: x
  extensions: [a.b]
  limits:
    - operations: [ai.ocr]
      rate: 30/minute  # OCR is slow
metadata: {name: c1}
# the end
"""

COMMENTED_CANONICAL = """# file header

apiVersion: capengine/v1
kind: Policy  # the kind
metadata: {name: c1}
spec:
  extensions: [a.b]
  # rules come first in this file
  rules:
    # about r1
    - id: r1
      effect: allow  # eol on effect
      operations:
        - vdfs.read_file  # reading
        # stat too
        - vdfs.stat
      # a folded condition
      condition: >
        path.under("/a") && true
    - id: r2  # flow rule
      effect: deny
      operations: ['**']
    - id: r3
      effect: deny
      operations: [vdfs.stat]
      # commented-out: message: x
  limits:
    - operations: [ai.ocr]
      rate: 30/minute  # OCR is slow
# the end
"""


def data(text: str) -> list:
    return [d.data for d in load_documents(text)]


def bundled_files() -> list[Path]:
    return sorted(Path(bundled.policies()).rglob("*.yaml"))


def test_canonical_layout():
    out = format_text(MESSY)
    assert out.splitlines()[:6] == ["apiVersion: capengine/v1", "kind: Policy", "metadata:", "  name: messy",
                                    "  description: >", "    Two lines of text."]
    assert "  extensions: [com.example.*]\n  rules:\n    - id: no-secrets\n      effect: deny\n" \
           "      operations: [vdfs.read_file]\n" \
           "      condition: 'path.under(\"/secrets\") || has(args.length) && args.length > 10'\n" \
           "      message: no secrets\n    - id: read\n" in out


def test_comments_stay_with_the_element_they_annotate():
    assert format_text(COMMENTED) == COMMENTED_CANONICAL
    assert format_text(COMMENTED_CANONICAL) == COMMENTED_CANONICAL


def test_bundled_files_keep_their_comments():
    for path in bundled_files():
        text = path.read_text()
        out = format_text(text)
        assert Counter(c.text for c in comments(out)) == Counter(c.text for c in comments(text)), path
    baseline = format_text((Path(bundled.policies()) / "org-baseline.yaml").read_text())
    assert "      operations: ['**']  # every operation, present or future, that names a path there\n" in baseline
    photo = format_text((Path(bundled.policies()) / "photo-ocr.yaml").read_text())
    assert "      effect: deny\n      # whatever reveals a private photo: its bytes, its OCR text, its sidecars, " \
           "its name and size\n      operations: [class:reveals-content, class:reveals-metadata]\n" in photo


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
    sources = {"messy.yaml": MESSY} if name == "messy" else {p.name: p.read_text() for p in bundled_files()}
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    for fname, text in sources.items():
        (before / fname).write_text(text)
        once = format_text(text)
        assert format_text(once) == once  # fmt(fmt(x)) == fmt(x)
        assert data(once) == data(text)
        (after / fname).write_text(once)
    assert decisions(before) == decisions(after)


# A policy written in random layouts: keys shuffled, flow or block, any quoting, 2 or 4 spaces, dashes indented
# or flush, comments above entries and at line ends. Every layout of the same data and comments must give the
# same canonical text.

_CONDITIONS = ['path.under("/a")', "true", "a\nb", "x == 'it''s'", "trailing \n", 'path.glob("/x/**") && ' * 5 + "true",
               "lead", "ünï == 'ü'", "args.n > 3 # not a comment"]
_MESSAGES = ["x: y", "yes", "#not a comment", "ünï", "1.0", "null", "- dash", "0o17", "on", "a " * 70 + "end",
             "two\nlines\n", "tab\there", "  lead", "[x]", "{y}", "it's"]


def _scalar(rng: random.Random, value: str) -> str:
    styles = [json.dumps(value, ensure_ascii=rng.random() < .5)]
    if "\n" not in value and "\t" not in value:
        styles.append("'" + value.replace("'", "''") + "'")
    if "\n" not in value and "\t" not in value and "#" not in value and _loads_as(f"k: {value}", {"k": value}) \
            and _loads_as(f"k: [{value}]", {"k": [value]}):
        styles.append(value)
    return rng.choice(styles)


def _loads_as(text: str, expected: dict) -> bool:
    try:
        return data(text) == [expected]
    except Exception:
        return False


class _Writer:
    def __init__(self, rng: random.Random, seed_layout: int) -> None:
        self.rng, self.layout = rng, random.Random(seed_layout)
        self.step = self.layout.choice([2, 4])
        self.flush_dash = self.layout.random() < .5

    def scalar(self, value: object) -> str:
        return _scalar(self.layout, value) if isinstance(value, str) else json.dumps(value)

    def flow(self, value: object) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {self.flow(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(self.flow(v) for v in value) + "]"
        return self.scalar(value) if not (isinstance(value, str) and "\n" in value) else json.dumps(value)

    def block(self, value: object, indent: int, notes: dict, path: tuple) -> list[str]:
        """Lines for a block collection whose entries start at `indent`."""
        lines: list[str] = []
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        if isinstance(value, dict):
            self.layout.shuffle(items)
        for key, child in items:
            head, eol = notes.get(path + (key,), ([], None))
            lines += [" " * indent + h for h in head]
            lead = " " * indent + (f"{key}:" if isinstance(value, dict) else "-")
            tail = f"  {eol}" if eol else ""
            has_inner = any(p[:len(path) + 1] == path + (key,) and p != path + (key,) for p in notes)
            if isinstance(child, dict | list) and child and (has_inner or self.layout.random() < .5):
                inner = indent + (self.step if isinstance(value, dict) and isinstance(child, dict) else
                                  (0 if self.flush_dash and isinstance(value, dict) else self.step))
                if isinstance(value, list) and isinstance(child, dict):
                    sub = self.block(child, indent + 2, notes, path + (key,))
                    first = next(i for i, s in enumerate(sub) if not s.lstrip().startswith("#"))
                    if first or eol:  # the item's own comments need a line of their own: `-` then the map
                        lines.append(lead + tail)
                        lines += sub
                    else:
                        lines.append(lead + " " + sub[0][indent + 2:])
                        lines += sub[1:]
                    continue
                lines.append(lead + tail)
                lines += self.block(child, inner, notes, path + (key,))
            elif isinstance(child, str) and "\n" in child:
                lines.append(f"{lead} {json.dumps(child)}{tail}")
            elif isinstance(child, dict | list):
                lines.append(f"{lead} {self.flow(child)}{tail}")
            else:
                lines.append(f"{lead} {self.scalar(child)}{tail}")
        return lines


def _policy(rng: random.Random, i: int) -> tuple[dict, dict]:
    rules, notes = [], {}
    for j in range(rng.randint(1, 4)):
        rule: dict = {"id": f"r{j}", "effect": rng.choice(["allow", "deny"]),
                      "operations": rng.sample(["vdfs.read_file", "vdfs.stat", "ai.ocr", "vdfs.*", "**"],
                                               rng.randint(1, 3))}
        if rng.random() < .7:
            rule["condition"] = rng.choice(_CONDITIONS)
        if rng.random() < .5:
            rule["message"] = rng.choice(_MESSAGES)
        rules.append(rule)
    doc = {"apiVersion": "capengine/v1", "kind": "Policy", "metadata": {"name": f"p{i}"},
           "spec": {"extensions": ["com.example.*"], "rules": rules}}
    if rng.random() < .4:
        doc["spec"]["limits"] = [{"operations": ["ai.ocr"], "rate": "3/second", "burst": 2}]
    if rng.random() < .3:
        doc["metadata"]["description"] = rng.choice(_MESSAGES)
    for j, rule in enumerate(rules):
        if rng.random() < .4:
            notes[("spec", "rules", j)] = ([f"# about rule {j}"], None)
        for key, value in rule.items():
            r = rng.random()
            scalar_line = isinstance(value, str) and "\n" not in value and len(value) < 60
            if r < .2:
                notes[("spec", "rules", j, key)] = ([f"# head {j} {key}", "#second line"], None)
            elif r < .4 and scalar_line:
                notes[("spec", "rules", j, key)] = ([], f"# eol {j} {key}")
        if rng.random() < .3:
            notes[("spec", "rules", j, "operations", 0)] = ([], "#  first op")
    if rng.random() < .5:
        notes[("spec",)] = (["# the spec"], None)
    return doc, notes


def test_every_layout_of_the_same_policy_formats_the_same():
    rng = random.Random(3)
    for i in range(80):
        doc, notes = _policy(rng, i)
        outputs = set()
        for layout in range(3):
            text = "\n".join(_Writer(rng, i * 10 + layout).block(doc, 0, notes, ())) + "\n"
            assert data(text) == [doc], text
            once = format_text(text)
            assert format_text(once) == once, text
            assert data(once) == data(text), text
            assert Counter(c.text for c in comments(once)) == Counter(c.text for c in comments(text)), text
            _, findings = load_text("p.yaml", once)
            assert not [f for f in findings if f.code in ("yaml", "schema")], once
            outputs.add(once)
        assert len(outputs) == 1, "\n=====\n".join(outputs)


def test_long_conditions_are_folded_and_keep_their_positions():
    condition = " && ".join(f'path.under("/dir{i}")' for i in range(8)) + " && args.bogus > 1"
    text = policy_yaml("long", f"""
        - id: r
          effect: allow
          operations: [vdfs.read_file]
          condition: {json.dumps(condition)}
        """)
    out = format_text(text)
    assert "      condition: >-\n" in out and max(len(line) for line in out.splitlines()) <= 100
    assert data(out) == data(text)
    _, before = load_text("p.yaml", text)
    _, after = load_text("p.yaml", out)
    bogus = [f for f in after if "bogus" in f.message]
    assert bogus and len(before) == len(after)
    line, column = bogus[0].location.line, bogus[0].location.column
    assert out.splitlines()[line - 1][column - 1:].startswith("args.bogus") or \
        out.splitlines()[line - 1][column - 1:].startswith("bogus")


def test_multi_document_files():
    text = ("# first\n\napiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: a}\ncases: []\n---\n"
            "# second\n\n# about kind\nkind: PolicyTest\napiVersion: capengine/v1\nmetadata: {name: b}\ncases: []\n")
    out = format_text(text)
    assert out == ("---\n# first\n\napiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: a}\ncases: []\n"
                   "---\n# second\n\napiVersion: capengine/v1\n# about kind\nkind: PolicyTest\nmetadata: {name: b}\n"
                   "cases: []\n")
    assert format_text(out) == out


@pytest.mark.parametrize("text, line, column, message", [
    ("apiVersion: capengine/v1\nkind: Policy\nkind: Policy\n", 3, 1, "duplicate key 'kind'"),
    ("apiVersion: [\n", 2, 1, "not valid YAML"),
    ("apiVersion: capengine/v1\nspec:\n\trules: []\n", 3, 1, "not valid YAML"),
    ("apiVersion: &v capengine/v1\nkind: *v\n", 1, 13, "anchors and aliases"),
    ("- a\n- b\n", 1, 1, "is a list"),
    ("# only a comment\n", 0, 0, "no YAML document"),
    ("", 0, 0, "no YAML document"),
    ("a: !!python/object:os.system x\n", 1, 4, "not valid YAML"),
])
def test_refuses_what_it_cannot_keep(text, line, column, message):
    with pytest.raises(FormatError) as info:
        format_text(text)
    assert message in info.value.message and (info.value.line, info.value.column) == (line, column)


def test_hash_inside_strings_is_not_a_comment_and_the_schema_header_is_kept():
    text = ("# yaml-language-server: $schema=../schemas/policy.schema.json\napiVersion: capengine/v1\n"
            "kind: Policy\nmetadata: {name: p, description: 'see #3'}\nspec: {extensions: ['a.b'], rules: []}\n")
    out = format_text(text)
    assert out.startswith("# yaml-language-server: $schema=../schemas/policy.schema.json\napiVersion:")
    assert "description: 'see #3'" in out or "description: see #3" in out
    _, findings = load_text("x.yaml", out)
    assert not [f for f in findings if f.severity == "error"]


def test_cli_check_shows_a_diff_and_writes_nothing(tmp_path, capsys):
    messy = write(tmp_path, "m.yaml", MESSY)
    canonical = tmp_path / "c.yaml"
    canonical.write_text(format_text(MESSY))
    assert main(["fmt", "--check", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"--- {messy}\n+++ {messy} (formatted)\n@@ ")
    assert "+kind: Policy\n" in out and str(canonical) not in out
    assert "1 file(s) would be reformatted" in err
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "real.yaml.txt"]  # no temporary file left
    capsys.readouterr()


def test_cli_hostile_files_are_named_and_left_alone(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", MESSY)
    anchors = write(tmp_path, "anchors.yaml", "apiVersion: &v capengine/v1\nkind: *v\n")
    (tmp_path / "latin1.yaml").write_bytes(b"apiVersion: capengine/v1\nkind: Policy\n# caf\xe9\n")
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "absent")
    assert main(["fmt", str(tmp_path), str(tmp_path / "absent.yaml")]) == 2
    out, err = capsys.readouterr()
    assert f"{anchors}:1:13: anchors and aliases" in err
    assert f"{tmp_path / 'latin1.yaml'}:3: not UTF-8 (byte 43)" in err
    assert f"{tmp_path / 'fifo.yaml'}: a FIFO, not a regular file" in err
    assert f"{tmp_path / 'loop.yaml'}: a symlink loop" in err
    assert f"{tmp_path / 'dangling.yaml'}: a dangling symlink" in err
    assert f"{tmp_path / 'absent.yaml'}: no such file or directory" in err
    assert "Traceback" not in err
    assert out == f"formatted {good}\n"  # the others do not stop the good file from being formatted
    assert anchors.read_text() == "apiVersion: &v capengine/v1\nkind: *v\n"


def test_a_file_size_limit_leaves_the_original_intact(tmp_path):
    """A full disk in miniature: RLIMIT_FSIZE below the formatted size makes the write fail half way."""
    messy = write(tmp_path, "m.yaml", MESSY)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    proc = subprocess.run([sys.executable, "-m", "capengine", "fmt", str(messy)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"capengine fmt: {messy}: not rewritten, the file is unchanged: File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert messy.read_text() == MESSY
    assert [p.name for p in tmp_path.iterdir()] == ["m.yaml"]


def test_the_repository_policies_are_canonical(tmp_path, capsys):
    """CI's `capengine fmt --check policies/`: every bundled policy and test file is already formatted."""
    assert main(["fmt", "--check", str(bundled.policies())]) == 0, capsys.readouterr().out
    d = tmp_path / "p"
    shutil.copytree(bundled.policies(), d)
    assert main(["fmt", str(d)]) == 0
    assert capsys.readouterr().out == ""


def test_hostile_edits_of_the_bundled_files_are_formatted_or_refused_cleanly():
    """Comments at any indentation and line, blank lines, tabs, CRLF and trailing blanks: fmt either formats
    (idempotent, same data, same comments: format_text checks all three) or refuses with a clear message, never
    with an internal error or an exception."""
    rng = random.Random(11)
    sources = [p.read_text() for p in bundled_files()] + [COMMENTED]
    formatted = 0
    for i in range(80):
        lines = rng.choice(sources).split("\n")
        for _ in range(rng.randint(1, 6)):
            k, r = rng.randrange(len(lines)), rng.random()
            if r < .35 and lines[k].strip() and not lines[k].rstrip().endswith((">", "|")):
                lines[k] += f"  # eol {i}"
            elif r < .7:
                note = f"# note {i} " + rng.choice(["", "x: y", "- z"])
                lines.insert(k, " " * rng.choice([0, 2, 4, 6, 8, 10]) + note)
            elif r < .8:
                lines.insert(k, "")
            elif r < .9:
                lines[k] = lines[k].replace("  ", "\t", 1)
            else:
                lines[k] += rng.choice([" ", "\r"])
        text = "\n".join(lines)
        text = text.replace("\n", "\r\n") if rng.random() < .2 else text
        try:
            out = format_text(text)
        except FormatError as exc:
            assert "internal error" not in exc.message and exc.message.startswith("not valid YAML"), exc.message
            continue
        formatted += 1
        assert data(out) == data(text) and format_text(out) == out
    assert formatted > 40
