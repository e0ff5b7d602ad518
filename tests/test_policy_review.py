"""Broken and subtly wrong policies, as a security reviewer writes them: each is reported by `check --strict` with
the right code at the right line:col and a fix; the correct spelling of the same intent is not reported."""

from __future__ import annotations

import pytest
from helpers import policy_yaml, write

from capengine.policy import operations
from capengine.policy.check import run_check

OPS = operations.builtin().names()
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def check(tmp_path, effect: str, condition: str, ops: str = "[vdfs.read_file]", extra: str = ""):
    """Findings (code, line, column, message) of one rule, other than the cross-rule overlap lints."""
    rules = f"- id: r\n  effect: {effect}\n  operations: {ops}\n  condition: '{condition}'\n" + extra
    text = policy_yaml("p", rules, '["com.example.app"]')
    write(tmp_path, "p.yaml", text)
    outcome = run_check([tmp_path], operations=OPS, strict=True)
    noise = {"partial-shadow", "content-reachable-around-deny", "shadowed-allow"}
    return [(f.code, f.location.line, f.location.column, f.message) for f in outcome.findings
            if f.code not in noise], text.splitlines()


def at(lines: list[str], needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in the file."""
    for number, line in enumerate(lines, 1):
        start = -1
        for _ in range(nth + 1):
            start = line.find(needle, start + 1)
            if start < 0:
                break
        if start >= 0:
            return number, start + 1
    raise AssertionError(needle)


def only(found: list, code: str) -> tuple:
    assert [f[0] for f in found] == [code], found
    return found[0]


@pytest.mark.parametrize("pattern, needle, words", [
    ('/photos/.*\\\\.png', '"/photos/', "no `$`"),                       # a .png.exe, anything below
    ('^/photos/[^/]+\\\\.png', '"^/photos', "no `$`"),
    ('/photos/.*\\\\.png$', '"/photos/', "no `^`"),                       # /elsewhere/photos/x.png
    ('(?i)/photos/.*\\\\.png', '"(?i)', "no `$`"),
    ('photos', '"photos"', "neither end"),
])
def test_unanchored_path_regex_in_an_allow(tmp_path, pattern, needle, words):
    found, lines = check(tmp_path, "allow", f'path.matches("{pattern}")')
    code, line, column, message = only(found, "unanchored-regex")
    assert (line, column) == at(lines, needle) and words in message and "anchor it" in message


@pytest.mark.parametrize("condition", [
    'path.matches("^/photos/[^/]+\\\\.png$")', 'path.under("/photos") && path.matches("(?i)\\\\.(png|jpe?g)$")',
    'path.glob("/photos/**")', 'args.name.matches("sync")',
])
def test_anchored_or_suffix_regexes_and_globs_are_not_reported(tmp_path, condition):
    found, _ = check(tmp_path, "allow", condition,
                     "[credentials.get]" if "args.name" in condition else "[vdfs.read_file]")
    assert found == []


def test_an_unanchored_regex_in_a_deny_over_denies_and_is_not_reported(tmp_path):
    found, _ = check(tmp_path, "deny", 'path.matches("private")')
    assert found == []


@pytest.mark.parametrize("effect, words", [("deny", "denies every call on any other path"),
                                           ("allow", "allows every other path")])
def test_not_equal_as_the_only_path_test(tmp_path, effect, words):
    found, lines = check(tmp_path, effect, 'path != "/secrets/key"')
    code, line, column, message = only(found, "path-not-equal")
    assert (line, column) == at(lines, '"/secrets/key"') and words in message
    assert 'did you mean path == "/secrets/key"?' in message


def test_not_equal_as_an_exclusion_is_not_reported(tmp_path):
    found, _ = check(tmp_path, "allow", 'path.under("/docs") && path != "/docs/secret.txt"')
    assert found == []


@pytest.mark.parametrize("condition, code, needle, words", [
    ('path.under("/a") || true', "constant-condition", 'path.under', "always true"),
    ('true', "constant-condition", "true", "same as no condition"),
    ('path.under("/a") || size(path) >= 0', "constant-condition", "path.under", "always true"),
    ('size(path) < 0', "never-matches", "<", "never negative"),
    ('path.under("/a") && false', "never-matches", "path.under", "`&& false`"),
    ('path.under("/a") && path.under("/b")', "never-matches", '"/b"', "did you mean `||`?"),
    ('path == "/a/x" && path.glob("/b/**")', "never-matches", '"/b/**"', "no path is both"),
])
def test_conditions_constant_by_structure(tmp_path, condition, code, needle, words):
    found, lines = check(tmp_path, "deny", condition)
    got = only(found, code)
    assert got[1:3] == at(lines, needle) and words in got[3]


def test_overlapping_path_tests_are_not_disjoint(tmp_path):
    found, _ = check(tmp_path, "deny", 'path.under("/photos") && path.glob("/photos/**/private/**")')
    assert found == []


@pytest.mark.parametrize("condition, needle, words", [
    ('extension == "com.example.ap"', '"com.example.ap"', "did you mean 'com.example.app'?"),
    ('operation == "vdfs.readfile"', '"vdfs.readfile"', "did you mean 'vdfs.read_file'?"),
    (f'library == "{LIB.upper()}"', f'"{LIB.upper()}"', f'write "{LIB}"'),
    ('library == "photos"', '"photos"', "UUID in lowercase"),
    ('operation == "vdfs.*"', '"vdfs.*"', "compares text, not a glob"),
    ('extension == "com.example.*"', '"com.example.*"', "compares text, not a glob"),
])
def test_literals_the_rule_never_sees(tmp_path, condition, needle, words):
    found, lines = check(tmp_path, "allow", condition)
    got = only(found, "never-matches")
    assert got[1:3] == at(lines, needle) and words in got[3] and "never true" in got[3]


@pytest.mark.parametrize("condition, needle, words", [
    ('path == "/secrets/"', '"/secrets/"', 'write "/secrets"'),
    ('path == "secrets/key"', '"secrets/key"', "absolute"),
    ('path == "/a/../secrets/key"', '"/a/', 'write "/secrets/key"'),
    ('path in ["/ok", "/b//c"]', '"/b//c"', 'write "/b/c"'),
    ('path.glob("/photos/../secrets/**")', '"/photos/..', "never matches"),
    ('path.glob("/photos/")', '"/photos/"', "never matches"),
    ('path.under("/photos/../secrets")', '"/photos/..', 'read as under("/secrets")'),
    ('path.startsWith("photos/")', '"photos/"', "absolute"),
])
def test_path_literals_no_canonical_path_equals(tmp_path, condition, needle, words):
    found, lines = check(tmp_path, "deny", condition)
    got = only(found, "non-canonical-path")
    assert got[1:3] == at(lines, needle) and words in got[3]


def test_trailing_slash_in_under_means_the_same_directory_and_is_not_reported(tmp_path):
    found, _ = check(tmp_path, "deny", 'path.under("/photos/")')
    assert found == []


@pytest.mark.parametrize("literal, script", [("/ph\u043etos/private", "Cyrillic"), ("/\u0440hotos", "Cyrillic"),
                                             ("/photos/\u03bfld", "Greek")])
def test_lookalike_letters_from_another_script(tmp_path, literal, script):
    found, lines = check(tmp_path, "deny", f'path.under("{literal}")')
    got = only(found, "mixed-script")
    assert got[1:3] == at(lines, '"/') and script in got[3] and "U+" in got[3]


def test_one_script_non_latin_names_are_not_reported(tmp_path):
    found, _ = check(tmp_path, "deny", 'path.under("/\u0444\u043e\u0442\u043e") || path.under("/caf\u00e9")')
    assert found == []


def test_directories_differing_only_in_case(tmp_path):
    """Reported at the rules using the rarer spelling; at both when they are as common."""
    deny = "- id: {}\n  effect: deny\n  operations: [vdfs.read_file]\n  condition: 'path.under(\"{}\")'\n"
    found, lines = check(tmp_path, "allow", 'path.under("/photos")', extra=deny.format("keep-private",
                                                                                         "/Photos/private"))
    assert [(f[0], f[1:3]) for f in found] == [("case-mismatch", at(lines, "id: r")),
                                               ("case-mismatch", at(lines, "id: keep-private"))]
    assert 'rule p/keep-private tests "/Photos" but rule p/r "/photos"' in found[1][3]
    found, lines = check(tmp_path, "allow", 'path.under("/photos")', extra=deny.format("keep-private",
                                                                                         "/Photos/private")
                         + deny.format("raw", "/photos/raw"))
    assert [(f[0], f[1:3]) for f in found] == [("case-mismatch", at(lines, "id: keep-private"))]
    assert "case-sensitive" in found[0][3]


def test_star_operation_glob_explains_segments(tmp_path):
    found, lines = check(tmp_path, "allow", 'path.under("/a")', ops='["*"]')
    got = only(found, "unknown-operation")
    assert got[1:3] == at(lines, '"*"') and "never crosses a '.'" in got[3] and "'vdfs.*'" in got[3]


def test_the_bundled_policies_are_clean():
    from capengine import bundled

    outcome = run_check([bundled.policies()], operations=OPS, strict=True)
    assert [str(f) for f in outcome.findings if f.severity != "note"] == []


@pytest.mark.parametrize("args, words", [("{lenght: 5}", "args.lenght is not an argument of vdfs.read_file"),
                                         ("{length: '5'}", 'args.length is "5", but vdfs.read_file takes an integer'),
                                         ("{length: true}", "takes an integer")])
def test_a_test_case_whose_args_no_real_call_carries(tmp_path, args, words):
    write(tmp_path, "p.yaml", policy_yaml("p", "- id: big\n  effect: deny\n  operations: [vdfs.read_file]\n"
                                               "  condition: 'has(args.length) && args.length > 10'\n",
                                          '["com.example.app"]'))
    write(tmp_path, "t.test.yaml", "apiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: t}\ncases:\n"
          f"  - name: big read\n    request: {{extension: com.example.app, operation: vdfs.read_file, path: /a, "
          f"args: {args}}}\n    expect: deny\n")
    outcome = run_check([tmp_path], operations=OPS, strict=True)
    (found,) = [f for f in outcome.findings if f.code == "test-invalid-args"]
    assert (found.location.line, found.location.column) == (5, 5) and words in found.message
    assert "t / big read" in found.message
