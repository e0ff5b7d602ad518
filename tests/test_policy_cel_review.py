"""Adversarial review of broken and subtly wrong policy files and CEL cases.

Each test is an attack that once got through: a traceback instead of a finding, a rule silently dropped, a
limit that could never pass accepted, an error reported at the wrong line. Every one must be refused by
`capengine check` with a finding naming file:line and what to do, and exit 1 (errors) or 2 (usage / I/O).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import policy_yaml

from capengine.cel import ast as cel_ast
from capengine.cel.compiler import compile_expression
from capengine.cel.values import CelError
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS, discover, load_paths, load_text, walk
from capengine.policy.schemas import validator

ROOT = Path(__file__).resolve().parent.parent


def _check(*paths: Path | str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "capengine", "check", *map(str, paths)], capture_output=True,
                          text=True, timeout=120, env=env)


def _findings(text: str) -> list[tuple[int, int, str, str, str]]:
    _, findings = load_text("p.yaml", text)
    return [(f.location.line, f.location.column, f.severity, f.code, f.message) for f in findings]


def _limit_policy(limit: str) -> str:
    return ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  extensions: [com.example.a]\n"
            "  rules: []\n  limits:\n    - operations: [vdfs.read_file]\n" + limit)


# --- a trailing newline is not part of an identifier ------------------------------------------------------
# Python's `$` also matches before a final "\n" (ECMA-262's, which JSON Schema specifies, does not): the
# schema accepted "10/second\n" (the loader then raised KeyError), rule ids and policy names with a newline
# in them (which break every "policy/rule" line of a log), and extension globs that can match nothing.

TRAILING_NEWLINE = [
    ("rate", _limit_policy('      rate: "10/second\\n"\n'), 9),
    ("rule id", policy_yaml("p", '- {id: "r\\n", effect: allow, operations: [vdfs.read_file]}\n'), 7),
    ("policy name", policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n")
     .replace("{name: p}", '{name: "p\\n"}'), 3),
    ("extension glob", policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n",
                                   '["com.example.a\\n"]'), 5),
    ("operation", policy_yaml("p", '- {id: r, effect: allow, operations: ["vdfs.read_file\\n"]}\n'), 7),
]


@pytest.mark.parametrize(("what", "text", "line"), TRAILING_NEWLINE, ids=[t[0] for t in TRAILING_NEWLINE])
def test_a_trailing_newline_is_refused_by_the_schema(what, text, line):
    found = _findings(text)
    assert [(f[0], f[3]) for f in found if f[2] == "error"] == [(line, "schema")], found


def test_the_schema_pattern_follows_ecma_262_dollar():
    """The JSON Schema validator itself (also used for extension manifests): "$" is the end of the text."""
    schema = validator("policy.schema.json")
    doc = {"apiVersion": "capengine/v1", "kind": "Policy", "metadata": {"name": "p"},
           "spec": {"extensions": ["com.example.a"], "rules": []}}
    assert not list(schema.iter_errors(doc))
    for bad in ("p\n", "p\r\n", "\np"):
        assert list(schema.iter_errors({**doc, "metadata": {"name": bad}})), repr(bad)


def test_a_trailing_newline_in_a_rate_is_a_finding_not_a_traceback(tmp_path):
    (tmp_path / "p.yaml").write_text(TRAILING_NEWLINE[0][1])
    run = _check(tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    assert "p.yaml:9:" in run.stdout and "is not a rate" in run.stdout


# --- rate limits the limiter cannot honour ------------------------------------------------------------------
# JSON Schema's "integer" admits 5.0, so `burst: 5.0` loaded a float and the cost-above-burst check (which
# looked for ints only) let `cost: 10.0` with `burst: 5` through: a limit no call can ever pass. Numbers beyond
# what the limiter's float buckets hold (10**400 overflows float()) failed at call time instead of load time.

@pytest.mark.parametrize(("limit", "line", "fragment"), [
    ("      rate: 10/second\n      burst: 5\n      cost: 10.0\n", 11, "cost 10 is more than burst 5"),
    ("      rate: 10/second\n      burst: 5.0\n      cost: 10\n", 11, "cost 10 is more than burst 5"),
    ("      rate: 10/second\n      cost: 11.0\n", 10, "cost 11 is more than burst 10"),
    ("      rate: 10/second\n      burst: " + "9" * 400 + "\n", 10, "at most 9007199254740992"),
    ("      rate: 10/second\n      burst: 9007199254740993\n", 10, "at most 9007199254740992"),
    ("      rate: " + "9" * 400 + "/hour\n", 9, "at most 9007199254740992"),
    ("      rate: 10/second\n      burst: 20\n      cost: " + "9" * 30 + "\n", 11, "at most 9007199254740992"),
    ("      rate: 10/second\n      burst: 1e3\n", 10, "integer"),
])
def test_a_limit_the_limiter_cannot_honour_is_an_error(limit, line, fragment):
    found = [f for f in _findings(_limit_policy(limit)) if f[2] == "error"]
    assert len(found) == 1 and found[0][0] == line and fragment in found[0][4], found
    assert found[0][3] in ("bad-limit", "schema")


def test_integral_float_limits_load_as_ints():
    loaded, findings = load_text("p.yaml", _limit_policy("      rate: 10/second\n      burst: 5.0\n      cost: 2.0\n"))
    assert not findings
    [limit] = loaded.policies[0].limits
    assert (limit.burst, limit.cost) == (5, 2) and type(limit.burst) is int and type(limit.cost) is int


# --- files that are not regular files -----------------------------------------------------------------------
# A symlink loop named *.yaml made the directory walk raise (a traceback from `capengine check`); a dangling
# symlink and a FIFO were skipped without a word, so a policy (an organisation's deny rules, say) behind a
# broken link simply was not there.

def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    root.mkdir()
    (root / "ok.yaml").write_text(policy_yaml("ok", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n"))
    return root


def test_a_symlink_loop_is_a_finding_not_a_traceback(tmp_path):
    root = _tree(tmp_path)
    (root / "loop-a.yaml").symlink_to(root / "loop-b.yaml")
    (root / "loop-b.yaml").symlink_to(root / "loop-a.yaml")
    assert walk(root) == ["loop-a.yaml", "loop-b.yaml", "ok.yaml"]  # listed: reading them says why they fail
    run = _check(root)
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr, run.stderr
    assert "loop-a.yaml: error io cannot read" in run.stdout and "symbolic links" in run.stdout


def test_a_dangling_symlink_is_an_error_not_a_missing_policy(tmp_path):
    root = _tree(tmp_path)
    (root / "org-baseline.yaml").symlink_to(tmp_path / "unmounted" / "org-baseline.yaml")
    result = load_paths([root])
    errors = [f for f in result.findings if f.severity == "error"]
    assert [(Path(f.location.file).name, f.code) for f in errors] == [("org-baseline.yaml", "io")], errors
    run = _check(root)
    assert run.returncode == 1 and "org-baseline.yaml: error io cannot read" in run.stdout


def test_a_fifo_among_the_policies_is_reported_and_never_opened(tmp_path):
    root = _tree(tmp_path)
    os.mkfifo(root / "pipe.yaml")  # opening it for reading would block
    os.mkfifo(tmp_path / "elsewhere.fifo")
    (root / "linked.yaml").symlink_to(tmp_path / "elsewhere.fifo")
    files, findings = discover([root])
    assert [p.name for p in files] == ["ok.yaml"]
    assert sorted((Path(f.location.file).name, f.severity, f.code) for f in findings) == [
        ("linked.yaml", "error", "io"), ("pipe.yaml", "error", "io")]
    assert all("not a regular file" in f.message for f in findings)
    run = _check(root)
    assert run.returncode == 1 and "pipe.yaml: error io" in run.stdout


def test_a_fifo_named_on_the_command_line_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "p.yaml")
    files, findings = discover([tmp_path / "p.yaml"])
    assert not files and len(findings) == 1 and "not a regular file" in findings[0].message
    assert "no such file" not in findings[0].message


# --- characters YAML refuses are reported where they are -------------------------------------------------
# PyYAML's reader error (NUL, other control characters, U+FFFE) is no MarkedYAMLError: it was reported at
# 1:1 with "position N" in the message, which leaves the author to count characters.

@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\ufffe", "\x7f"])
def test_a_character_yaml_refuses_is_reported_at_its_line_and_column(char):
    rule = f"- {{id: r, effect: allow, operations: [vdfs.read_file], condition: 'path == \"a{char}\"'}}\n"
    text = policy_yaml("p", rule)
    [(line, column, severity, code, message)] = _findings(text)
    assert (line, severity, code) == (7, "error", "yaml-syntax")
    assert text.splitlines()[line - 1][column - 1] == char
    assert f"U+{ord(char):04X}" in message and "position" not in message


# --- what YAML 1.1 reads into a plain scalar -----------------------------------------------------------------
# `effect: yes` is a bool, `message: 2001-12-14` a date, `message: 1:20` the int 80 (sexagesimal): the schema
# refuses them, and the message must say why the text became something else and what to write.

@pytest.mark.parametrize(("value", "kind"), [("yes", "bool"), ("off", "bool"), ("2001-12-14", "date"),
                                             ("1:20", "int"), ("1.5", "float"), ("~", "null")])
def test_an_unquoted_scalar_yaml_reads_as_another_type_gets_a_quoting_hint(value, kind):
    text = policy_yaml("p", f"- {{id: r, effect: allow, operations: [vdfs.read_file], message: {value}}}\n")
    [(line, _, severity, code, message)] = _findings(text)
    assert (line, severity, code) == (7, "error", "schema")
    assert f"YAML reads the unquoted {value} as a {kind}" in message and "quote it" in message


def test_a_merge_key_is_refused_with_what_to_write_instead():
    text = policy_yaml("p", "- &base {id: r, effect: deny, operations: [vdfs.read_file]}\n"
                            "- <<: *base\n  id: r2\n  effect: allow\n")
    [(line, column, severity, code, message)] = _findings(text)
    assert (line, column, severity, code) == (8, 7, "error", "yaml-syntax")
    assert "merge key" in message and "write the keys out" in message


# --- long `&&` / `||` chains ----------------------------------------------------------------------------------
# A flat chain of 121 alternatives (`extension == "a" || extension == "b" || ...`) was "nested too deeply":
# the parser's left-nested tree counted one level per operand. cel-go balances logical chains (their operands
# commute, errors included), so any length its size limit admits parses; so must these.

@pytest.mark.parametrize("operator", ["||", "&&"])
@pytest.mark.parametrize("count", [121, 500, 3000])
def test_a_long_logical_chain_parses_and_keeps_its_meaning(operator, count):
    terms = [f'path == "/p{i}"' if operator == "||" else f'path != "/p{i}"' for i in range(count)]
    source = f" {operator} ".join(terms)
    depth, pending = 0, [(cel_ast.parse(source), 1)]
    while pending:
        node, level = pending.pop()
        depth = max(depth, level)
        pending.extend((child, level + 1) for child in cel_ast.children(node))
    assert depth <= 2 + count.bit_length()  # balanced, as cel-go builds it
    for generate in (True, False):
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                             costs=POLICY_COSTS, generate=generate)
        assert program is not None, errors
        for path, expected in ((f"/p{count - 1}", operator == "||"), ("/p0", operator == "||"),
                               ("/q", operator == "&&")):
            activation = {"path": path, "library": "", "operation": "o", "extension": "e", "args": {}}
            assert program.evaluate(activation) is expected


@pytest.mark.parametrize("generate", [True, False])
def test_errors_in_a_balanced_chain_are_absorbed_as_in_a_nested_one(generate):
    """CEL's `||` is commutative over errors: one true operand anywhere wins; false everywhere else and one
    error is the error. Order of operands and the tree's shape change neither."""
    terms = ["int(args.s) == 1"] + [f'path == "/p{i}"' for i in range(200)]
    for rotate in (0, 1, 100, 200):
        source = " || ".join(terms[rotate:] + terms[:rotate])
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                             costs=POLICY_COSTS, generate=generate)
        assert program is not None, errors
        activation = {"path": "/p150", "library": "", "operation": "o", "extension": "e", "args": {"s": "x"}}
        assert program.evaluate(activation) is True
        with pytest.raises(CelError):
            program.evaluate({**activation, "path": "/q"})


# --- fmt and the characters YAML 1.1 counts as line breaks -----------------------------------------------------
# U+0085, U+2028 and U+2029 break lines in YAML 1.1 (and in str.splitlines) but not in most editors: fmt
# refused a file holding NEL ("internal error") and wrote LS/PS raw, where they shift every later line number
# a finding names. Such text is written double-quoted, the characters escaped.

@pytest.mark.parametrize("char", ["\\x85", "\\u2028", "\\u2029", "\\x85\\n"])
@pytest.mark.parametrize("key", ["description", "condition"])
def test_fmt_escapes_the_yaml_line_breaks_an_editor_does_not_see(char, key):
    from capengine.policy.fmt import format_text
    from capengine.policy.yaml_source import load_documents

    text = ("apiVersion: capengine/v1\nkind: Policy\nmetadata:\n  name: p\n  description: \"d" + (
        char if key == "description" else "") + "x\"\nspec:\n  extensions: [com.example.x]\n  rules:\n"
            "    - id: r\n      effect: allow\n      operations: [vdfs.read_file]\n      condition: \"path != '/"
            + (char if key == "condition" else "") + "a'\"\n")
    out = format_text(text)
    assert [d.data for d in load_documents(out)] == [d.data for d in load_documents(text)]
    assert not any(c in out for c in "\x85\u2028\u2029"), out
    assert format_text(out) == out


# --- characters a reviewer cannot see -----------------------------------------------------------------------
# A zero-width space in `path.under("/sec\u200brets")` makes a deny protect nothing while reading exactly like
# the real one; bidirectional overrides (U+202E, U+2066: "Trojan Source") make a condition display in an
# order other than it is parsed. An escape (`"\\u200b"` in CEL, `"\\u202e"` in YAML) is visible and fine.

@pytest.mark.parametrize("char", ["\u200b", "\u00ad", "\u200d", "\ufeff", "\u2060", "\u3164", "\u200e"])
def test_an_invisible_character_in_a_condition_is_flagged_where_it_is(char):
    text = policy_yaml("p", "- {id: d, effect: deny, operations: [vdfs.read_file], "
                            f"condition: 'path.under(\"/sec{char}rets\")'}}\n")
    found = [f for f in _findings(text) if f[3] == "invisible-character"]
    assert len(found) == 1 and found[0][2] == "warning", _findings(text)
    line, column = found[0][:2]
    assert text.splitlines()[line - 1][column - 1] == char
    assert f"U+{ord(char):04X}" in found[0][4]


def test_an_escaped_invisible_character_is_visible_and_not_flagged():
    text = policy_yaml("p", "- {id: d, effect: deny, operations: [vdfs.read_file], "
                            "condition: 'path.under(\"/sec\\u200brets\")'}\n")
    assert not [f for f in _findings(text) if f[3] == "invisible-character"]


@pytest.mark.parametrize(("where", "rule"), [
    ("condition literal", "- {id: d, effect: deny, operations: [vdfs.read_file], "
                          "condition: 'path == \"/a\u202e\u2066\" || path == \"/b\"'}\n"),
    ("CEL comment", "- id: d\n  effect: deny\n  operations: [vdfs.read_file]\n"
                    "  condition: |\n    path == \"/a\" // \u202e } \u2066\n    || path == \"/b\"\n"),
    ("YAML comment", "- {id: d, effect: deny, operations: [vdfs.read_file]}  # \u2067 allow\n"),
    ("message", "- {id: d, effect: deny, operations: [vdfs.read_file], message: \"a\u202ab\"}\n"),
])
def test_a_bidirectional_control_anywhere_in_a_file_is_an_error(tmp_path, where, rule):
    text = policy_yaml("p", rule)
    loaded, findings = load_text("p.yaml", text)
    errors = [f for f in findings if f.severity == "error"]
    assert errors and {f.code for f in errors} == {"bidi-control"}, findings
    for f in errors:
        assert text.splitlines()[f.location.line - 1][f.location.column - 1] in "\u202a\u202b\u202c\u202d\u202e" \
            "\u2066\u2067\u2068\u2069"
    assert not loaded.policies  # a file with an error contributes nothing
    (tmp_path / "p.yaml").write_text(text)
    assert _check(tmp_path).returncode == 1


@pytest.mark.parametrize(("effect", "hint"), [("Allow", "'allow'"), ("DENY", "'deny'"), ("alow", "'allow'"),
                                              ("denny", "'deny'")])
def test_an_effect_in_odd_case_or_misspelt_says_which_was_meant(effect, hint):
    text = policy_yaml("p", f"- {{id: r, effect: {effect}, operations: [vdfs.read_file]}}\n")
    [(line, _, severity, code, message)] = _findings(text)
    assert (line, severity, code) == (7, "error", "schema") and f"did you mean {hint}?" in message


# --- double literals out of range ----------------------------------------------------------------------------
# `1e400` was read as infinity: `args.length < 1e400` is then true for every length, where the author wrote a
# (mistyped) bound. cel-go refuses such a literal ("invalid double literal"), as this parser refuses an int
# literal out of range; one that underflows to zero is a valid literal in both.

@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1.8e308", "1234567890e300"])
def test_a_double_literal_beyond_the_double_range_is_a_syntax_error(literal):
    program, errors = compile_expression(f"double(1) < {literal}", POLICY_DECLS, POLICY_ENVIRONMENT)
    assert program is None and "out of range" in errors[0].message and literal.lstrip("-") in errors[0].message


@pytest.mark.parametrize(("literal", "value"), [("1.7976931348623157e308", 1.7976931348623157e308),
                                                ("1e-400", 0.0), ("4.9e-324", 5e-324)])
def test_a_double_literal_at_the_edge_of_the_range_is_its_value(literal, value):
    program, errors = compile_expression(literal, POLICY_DECLS, POLICY_ENVIRONMENT)
    assert not errors and program.evaluate({}) == value


# --- trailing commas in list and map literals -----------------------------------------------------------------
# cel-go's grammar (and the spec's) takes `[1, 2,]` and `{"a": 1,}`: a condition copied from cel-go's docs,
# or a list written one item a line, was a syntax error here.

@pytest.mark.parametrize(("source", "value"), [
    ("[1, 2,]", (1, 2)), ("[1,]", (1,)), ('{"a": 1,}', {"a": 1}), ('{"a": 1, "b": 2,}', {"a": 1, "b": 2}),
    ('path in [\n  "/a",\n  "/b",\n]', True), ("[?optional.of(1),]", (1,)), ('{?"a": optional.of(1),}', {"a": 1}),
])
def test_a_trailing_comma_in_a_list_or_map_literal_parses(source, value):
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True)
    assert not errors, errors
    result = program.evaluate({"path": "/b", "library": "", "operation": "o", "extension": "e", "args": {}})
    assert (tuple(result) if isinstance(result, (list, tuple)) else result) == value


@pytest.mark.parametrize("source", ["[,]", "{,}", "[1,,]", "size(path,)", "[1 2]"])
def test_a_comma_without_an_element_is_still_a_syntax_error(source):
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT)
    assert program is None and errors[0].message


def test_an_expression_longer_than_cel_gos_limit_is_refused_before_parsing():
    """cel-go refuses an expression over 100,000 code points (ExpressionSizeCodePointLimit); balanced chains
    would otherwise let a 4 MiB condition take seconds to check."""
    source = " || ".join(f'path == "/a{i:07d}"' for i in range(4500))  # 4500 * 23 characters
    assert len(source) > 100_000
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT)
    assert program is None and "100000" in errors[0].message and "characters" in errors[0].message
    program, errors = compile_expression(source[:99_990].rsplit(" ||", 1)[0], POLICY_DECLS, POLICY_ENVIRONMENT)
    assert program is not None, errors


# --- empty YAML documents ----------------------------------------------------------------------------------------
# A file ending with `---` (or with a comment-only document after it), as many YAML writers emit, failed as
# "kind must be Policy or PolicyTest, got None". An empty document holds nothing; it is skipped, as kubectl
# does. A document that holds something other than a mapping says so.

BASE = policy_yaml("p", "- {id: r, effect: allow, operations: [vdfs.read_file]}\n")


@pytest.mark.parametrize("text", [BASE + "---\n", "---\n---\n" + BASE, BASE + "---\n# only a comment\n",
                                  BASE + "---\n---\n" + BASE.replace("{name: p}", "{name: q}")])
def test_an_empty_yaml_document_is_skipped(text):
    loaded, findings = load_text("p.yaml", text)
    assert not findings and loaded.policies


@pytest.mark.parametrize(("doc", "kind"), [("~\n", "null"), ("- a\n", "list"), ("hello\n", "string")])
def test_a_document_that_is_not_a_mapping_says_what_it_is(doc, kind):
    [(line, _, severity, code, message)] = _findings(BASE + "---\n" + doc)
    assert (line, severity, code) == (9, "error", "unknown-kind") and f"a {kind}" in message


def test_an_editor_lock_link_is_not_a_policy(tmp_path):
    """Emacs marks a file being edited with a dangling symlink `.#name` -> user@host.pid: not a policy file,
    and no reason to refuse the set while someone edits one."""
    root = _tree(tmp_path)
    (root / ".#ok.yaml").symlink_to("someone@host.1234:1700000000")
    assert walk(root) == ["ok.yaml"]
    assert not load_paths([root]).has_errors


def test_a_dangling_link_names_its_target(tmp_path):
    root = _tree(tmp_path)
    (root / "org.yaml").symlink_to(tmp_path / "gone.yaml")
    [finding] = [f for f in load_paths([root]).findings if f.severity == "error"]
    assert "symbolic link to" in finding.message and "gone.yaml" in finding.message


# --- terminal escapes in the text output ----------------------------------------------------------------------
# A file name, a test case name or a rule message can hold ESC (YAML's "\e" escape) or a bidi control; the
# text reports printed them raw, so checking a hostile policy tree could rewrite the reviewer's terminal
# (clear it, retitle it, hide lines). Every character that is not printable is shown escaped.

def test_check_output_never_carries_a_raw_control_character(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "evil\x1b[2J\x1b]0;pwned\x07.yaml").write_text("apiVersion: capengine/v1\nkind: Polcy\n")
    run = _check(root)
    assert run.returncode == 1 and "\x1b" not in run.stdout + run.stderr and "\x07" not in run.stdout
    assert "\\x1b[2J" in run.stdout


def test_test_output_never_carries_a_raw_control_character(tmp_path):
    (tmp_path / "p.yaml").write_text(BASE)
    (tmp_path / "t.yaml").write_text(
        'apiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: t}\ncases:\n'
        '  - name: "clear\\e[2J\\u202eeman"\n'
        '    request: {extension: com.example.a, operation: vdfs.read_file, path: /a}\n    expect: deny\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for extra in ([], ["--verbose"]):
        run = subprocess.run([sys.executable, "-m", "capengine", "test", str(tmp_path), *extra],
                             capture_output=True, text=True, timeout=120, env=env)
        assert "clear" in run.stdout + run.stderr, run.stdout + run.stderr
        assert not any(c in run.stdout + run.stderr for c in "\x1b\u202e"), run.stdout


# --- globs in linear time ------------------------------------------------------------------------------------------
# Globs compiled to Python regexes backtrack: `*a*a*a*a*a*a*b` against 120 a's took 108 s. The name or path
# matched is the caller's (an operation name a guest sends, a request path of up to 4 KiB), so one rule with
# such a pattern let a call stall the host. Globs now run on RE2, as CEL's matches() does.

_PATHOLOGICAL = r"""
import sys
from capengine.policy import functions, globs
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_text
name = "a" * 250
assert not globs.glob_match("*a*a*a*a*a*a*a*a*a*a*b", name)
assert not globs.glob_match("**.*a*a*a*a*a*a*a*a*b", name + ".x")
assert not functions._glob("/" + "a" * 250, "/**/*a*a*a*a*a*a*a*a*a*a*b")
print("done")
"""


def test_a_pathological_glob_is_matched_without_backtracking():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _PATHOLOGICAL], capture_output=True, text=True, timeout=120, env=env)
    assert run.stdout.strip() == "done", run.stderr


def _reference_glob(pattern: str, sep: str, trailing_zero: bool = False):
    """The globs' meaning as the Python regexes they were (for names and patterns without backtracking)."""
    import re

    segments = pattern.split(sep)
    s, not_sep = re.escape(sep), f"[^{re.escape(sep)}]"
    out, last = [], len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "**":
            out.append(".*" if last == 0 else f"(?:{not_sep}+{s})*" if i == 0 else
                       (f"(?:{s}{not_sep}+)*" if trailing_zero else f"(?:{s}{not_sep}+)+") if i == last else
                       f"(?:{s}{not_sep}+)*")
            continue
        if i > 0 and not (i == 1 and segments[0] == "**"):
            out.append(s)
        out.append("".join(f"{not_sep}*" if c == "*" else not_sep if c == "?" else re.escape(c) for c in seg))
    return re.compile("".join(out), re.S)


GLOBS = ["ai.*", "ai.**", "**", "*", "vdfs.read_*", "**.ocr", "a.**.b", "?i.ocr", "*.*", "com.ex-ample.*",
         "a b.*", "é.*", "x\n*", "[a].*", "(a)|b.*", "a+.*", "\\.*", "$.*", "**.x.**"]
NAMES = ["ai", "ai.ocr", "ai.ocr.fast", "aix.ocr", "vdfs.read_file", "vdfs.read", "a.b", "a.x.b", "a.x.y.b", "",
         ".", "..", "a..b", "ai.", ".ocr", "com.ex-ample.x", "a b.c", "é.x", "x\ny", "[a].b", "(a)|b.c", "a+.q",
         "\\.q", "$.q", "q.x.r", "x.x.x"]
PATHS = ["/a", "/a/b", "/photos/x.jpg", "/photos/2020/private/x", "", "/", "/a b/c", "/é/x", "/a/.git/x", "/x\ny"]
PATH_GLOBS = ["/**", "/a/*", "/photos/**/private/**", "/*/x.jpg", "/**/.git/**", "/a b/*", "/é/?", "/x\n*",
              "/photos/**", "/**/x"]


def test_globs_mean_what_they_meant():
    from capengine.policy import globs

    for pattern in GLOBS:
        reference = _reference_glob(pattern, ".")
        for name in NAMES:
            assert globs.glob_match(pattern, name) == (reference.fullmatch(name) is not None), (pattern, name)
    for pattern in PATH_GLOBS:
        reference = _reference_glob(pattern, "/", trailing_zero=True)
        compiled = globs.compile_glob(pattern, "/", trailing_zero=True)
        for path in PATHS:
            assert (compiled.fullmatch(path) is not None) == (reference.fullmatch(path) is not None), (pattern, path)


# --- double() of a long string -----------------------------------------------------------------------------------
# The text a string must look like to convert to double was `[0-9]+\.?[0-9]*...`: two ways to split a run of
# digits, so a long digit string that fails to match backtracked quadratically (32,000 digits: 20 s; a guest's
# 1 MB argument in `double(args.s)`: hours).

_LONG_DOUBLE = r"""
from capengine.cel.compiler import compile_expression
from capengine.cel.values import CelError
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS
program, errors = compile_expression("double(args.s) > 1.0", POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                     costs=POLICY_COSTS)
for text in ("1" * 400_000 + "x", "1" * 400_000 + ".5e" + "1" * 1000 + "x", "." + "1" * 400_000 + "e"):
    try:
        program.evaluate({"path": "", "library": "", "operation": "o", "extension": "e", "args": {"s": text}})
    except CelError:
        pass
print("done")
"""


def test_double_of_a_long_digit_string_does_not_backtrack():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _LONG_DOUBLE], capture_output=True, text=True, timeout=120, env=env)
    assert run.stdout.strip() == "done", run.stderr


@pytest.mark.parametrize(("text", "value"), [("1", 1.0), ("1.", 1.0), (".5", 0.5), ("-1.5e3", -1500.0), ("+2E-1", 0.2),
                                             ("inf", float("inf")), ("-Infinity", float("-inf")), ("1e5", 1e5),
                                             ("1.5", 1.5), ("00.100", 0.1)])
def test_double_of_text_still_converts(text, value):
    program, errors = compile_expression(f'double("{text}")', POLICY_DECLS, POLICY_ENVIRONMENT)
    assert program.evaluate({}) == value


@pytest.mark.parametrize("text", ["", ".", "1..2", "1e", "e5", "1.5.5", " 1", "1_0", "0x10", "--1", "nanx", "1e+"])
def test_double_of_other_text_is_an_error(text):
    program, errors = compile_expression(f'double("{text}")', POLICY_DECLS, POLICY_ENVIRONMENT)
    with pytest.raises(CelError):
        program.evaluate({})


@pytest.mark.parametrize(("source", "fragment"), [
    (f'int("{"1" * 5000}")', "out of range"), (f'uint("{"1" * 5000}")', "out of range"),
    ('double("1e400")', "out of range"), (f'double("{"9" * 400}.5")', "out of range"),
    ('double("-1e400")', "out of range"), (f'duration("{"1" * 5000}s")', "out of range"),
])
def test_a_conversion_out_of_range_is_a_cel_error_saying_so(source, fragment):
    """cel-go: strconv's range error is a conversion error. Python's int() refuses over 4300 digits with a
    ValueError of its own, and float() returns infinity for a finite number too large."""
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT)
    with pytest.raises(CelError) as caught:
        program.evaluate({})
    assert fragment in str(caught.value) and "ValueError" not in str(caught.value)


@pytest.mark.parametrize("key", ["Kind", "kind ", "KIND", "knd"])
def test_a_misspelt_kind_key_is_named(key):
    text = BASE.replace("kind: Policy", f'"{key}": Policy')
    [(line, _, severity, code, message)] = _findings(text)
    assert (line, severity, code) == (2, "error", "unknown-kind") and repr(key) in message and "'kind'" in message


@pytest.mark.parametrize(("key", "kind"), [("on", "bool"), ("no", "bool"), ("1", "int"), ("~", "null"),
                                           ("1.5", "float")])
def test_a_key_yaml_reads_as_another_type_gets_a_quoting_hint(key, kind):
    text = BASE.replace("  extensions:", f"  {key}: x\n  extensions:")
    [(line, column, severity, code, message)] = _findings(text)
    assert (line, column, severity, code) == (5, 3, "error", "yaml-syntax")
    assert f"YAML reads the key {key} as a {kind}" in message and f"'{key}'" in message


def test_the_daemon_reader_refuses_a_fifo_as_check_does(tmp_path):
    """check.py's promise: the daemon refusing a set and `capengine check` failing agree. The daemon reads
    the tree itself (policy_source.TreeReader, through loader.walk) and must not skip a FIFO that check
    reports as an error: it refuses the tree, naming the file, without opening it."""
    from capengine.daemon.policy_source import TreeReader

    root = _tree(tmp_path)
    assert list(TreeReader().read(root)) == ["ok.yaml"]
    os.mkfifo(root / "pipe.yaml")
    with pytest.raises(OSError, match="pipe.yaml.*not a regular file"):
        TreeReader().read(root)


# --- branch coverage and CEL comments -------------------------------------------------------------------------
# The operands of a condition were cut at every `&&` outside strings, comments included: a `// x && y` comment
# produced a bogus operand `y` (reported as never evaluable), and an apostrophe in a comment (`// it's`) was
# taken for the start of a string, hiding every later operator.

@pytest.mark.parametrize(("condition", "expected"), [
    ('path == "/a" // x && y\n&& size(path) > 0', ['path == "/a" // x && y', "size(path) > 0"]),
    ("path == \"/a\" // it's the root\n|| path == \"/b\"", ["path == \"/a\" // it's the root", 'path == "/b"']),
    ('path == "//x" && size(path) > 0', ['path == "//x"', "size(path) > 0"]),
])
def test_branch_operands_ignore_comments(condition, expected):
    from capengine.policy.branches import operands

    assert operands(condition) == expected
