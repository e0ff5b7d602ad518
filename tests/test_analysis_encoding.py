"""The Z3 encoding agrees with the real engine, request by request, and its languages with RE2 and the globs."""

from __future__ import annotations

import random

import attrs
import pytest
import z3

from capengine.analysis import regex
from capengine.analysis.decision import decision_formula, rules_for
from capengine.analysis.domain import OPERATION_TRAITS, build_request, operation_names
from capengine.analysis.fuse import fuse
from capengine.analysis.solve import extract
from capengine.analysis.zstrings import NotAnalysable, model_string, zstr
from capengine.cel.standard import compile_regex
from capengine.policy import functions, globs, operations
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths
from capengine.policy.model import Request
from capengine.policy.operations import Catalog
from tests.helpers import LIB, load_set, policy_yaml, write

PATTERNS = [
    r"(?i)\.(png|jpe?g|tiff?|webp)$", r"^/photos/[^/]+$", r"a|^b", r"^(ab)*c?$", r"\d{2,3}", r"[^a-c\s]x",
    r"^sync\.", r"\w+@\w+", r"x.y", r"(?s)x.y", r"^$", r"^a{2}b{0,1}$", r"[a-f0-9-]", r"(?i)[k-m]", r"\.\*",
]
SAMPLES = ["", "a", "b", "ab", "abab", "ababc", "c", "x.PNG", "x.jpeg", "y.Tif", ".webp\n", "/photos/a",
           "/photos/a/b", "12", "x\ny", "xzy", "aab", "aa", "a@b", "sync.x", "K", "\u212a", "s", "\u017f", "d-",
           "photo.JPG.bak", "\u00e9", "1234", "zx", " x", ".*"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_language_agrees_with_re2(pattern):
    language = regex.search_language(pattern)
    compiled = compile_regex(pattern)
    for s in SAMPLES:
        got = z3.is_true(z3.simplify(z3.InRe(zstr(s), language)))
        assert got == (compiled.search(s) is not None), (pattern, s)


def test_case_folding_includes_kelvin_and_long_s():
    language = regex.search_language("(?i)^ks$")
    for s in ("ks", "KS", "\u212a\u017f", "kS"):
        assert z3.is_true(z3.simplify(z3.InRe(zstr(s), language)))
        assert compile_regex("(?i)^ks$").search(s)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)", r"\bx", r"[[:alpha:]]", r"a{,3}", r"\pL", r"a^b",
                                     r"(?m)^a"])
def test_regex_outside_fragment_is_refused_not_approximated(pattern):
    with pytest.raises(NotAnalysable):
        regex.search_language(pattern)


@pytest.mark.parametrize("pattern", ["/photos/**/private/**", "/photos/*.jpg", "/**", "/a/?/b", "/x/**",
                                     "/a/**/b/**/c", "/caf\u00e9/*", "/cafe\u0301/**", "/x/cafe\u0301.txt"])
def test_path_glob_language_agrees_with_the_glob_function(pattern):
    language = regex.path_glob_language(pattern)
    matcher = functions._compile_glob(pattern)  # the engine's own matcher for path.glob()
    rng = random.Random(pattern)
    names = ["/", "/a", "/photos/x.jpg", "/photos/a/private/b", "/photos/private/x", "/a/b/b/c", "/a/x/b",
             "/a/b/c", "x", "/x", "a/x", "/photos/.jpg", "/photos/a/b.jpg", "/photos/a/private", "/caf\u00e9/x",
             "/caf\u00e9", "/x/caf\u00e9.txt", "/cafe\u0301/x"]
    names += ["/" + "/".join(rng.choice(["a", "b", "c", "x", "private", "photos"]) for _ in range(rng.randint(1, 4)))
              for _ in range(40)]
    for name in names:
        got = z3.is_true(z3.simplify(z3.InRe(zstr(name), language)))
        assert got == (matcher(name) is not None), (pattern, name)


def test_strings_round_trip_through_the_solver_exactly():
    for text in ["a\\u{41}b", "\\", "\u00e9\U0001f600", "\x00\x7f", '"', "\ud800"]:
        s = z3.String("s")
        solver = z3.Solver()
        solver.add(s == zstr(text))
        assert solver.check() == z3.sat
        assert model_string(solver.model(), s) == text


def test_operation_traits_match_the_host_registry():
    from capengine.host.operations import default_registry  # tests may look at the host; the package may not
    registry = default_registry()
    assert set(operation_names()) == set(registry.names())
    for op in registry:
        expected = OPERATION_TRAITS.get(op.name)
        path_field = expected.path_field if expected else "path"
        needs_library = expected.needs_library if expected else True
        hidden = expected.hidden_args if expected else ()
        assert (op.path_field, op.needs_library, op.hidden_args) == (path_field, needs_library, hidden), op.name


def test_integer_fields_never_reach_the_policy_as_doubles():
    """The symbolic request has no JSON doubles in int fields; that is only sound because the host refuses
    them, for every integer field of every operation, however the number is written."""
    from capengine.host.operations import default_registry
    from capengine.host.operations.registry import OperationError
    registry = default_registry()
    for name in operation_names():
        request = build_request(name)
        ints = {f.name for f in request.args.values() if f.kind == "int"}
        op = registry.get(name)
        assert ints == set(op.integer_fields), name
        for field in ints:
            spec = op.schema["properties"][field]
            low = spec.get("minimum", 0)
            valid = _valid_payload(request)
            for number in (float(low), float(low) + 1.0, 1e3, 4.0):
                with pytest.raises(OperationError, match="without a fraction"):
                    op.validate({**valid, field: number})
            op.validate({**valid, field: int(low)})  # the same value as an int is accepted


def _valid_payload(request) -> dict:
    """A payload of the operation's required fields, solved from the symbolic request (which models the
    schema), so the attack above changes exactly one field."""
    solver = z3.Solver()
    solver.add(*request.constraints)
    solver.add(*request.friendly())
    assert solver.check() == z3.sat
    return extract(solver.model(), request).payload


CONDITIONS = [
    'path.under("/photos") && !path.glob("/photos/**/private/**")',
    'has(args.length) && args.length > 100',
    'args.length > 100',  # errors when length is absent
    'args.offset + args.length <= 4096',
    'args.offset / 2 == 3 || args.offset % 4 == 1',
    'args.offset * 4611686018427387904 > 0',  # overflow -> error
    'path.matches("(?i)\\\\.jpe?g$") ? args.offset == 0 : library == "' + LIB + '"',
    'size(path) < 12 && path.startsWith("/ph") && path.endsWith("g") && path.contains("o")',
    'args.path in ["/photos/a.jpg", "/x"] || "offset" in args',
    'extension.startsWith("com.example.") && operation == "vdfs.read_file" && library != ""',
    'path > "/photos/m" && path <= "/pz"',
    '-args.offset < -3 && (args.length == 1 || args.length != 2)',
    'path.glob("/photos/**")',  # a trailing ** also matches /photos itself
    'path.glob("/photos/**/private/**") || path.glob("/x/**")',
    'path.under("/cafe\u0301") || path.glob("/cafe\u0301/*.txt")',  # NFD literals (CEL escapes), NFC paths
    'path.under("/café") && !path.glob("/café/**/n")',  # NFD literals typed as is
]
REQUESTS = [
    dict(path="/photos/a.jpg"), dict(path="/photos/a.JPG", offset=0), dict(path="/photos/x/private/y.jpg"),
    dict(path="/photos/a.jpg", length=101), dict(path="/x", offset=5, length=1), dict(path="/x", offset=6),
    dict(path="/photos/b.png", offset=1, length=2), dict(path="/photos/n", offset=4, length=4096),
    dict(path="/photos/zz", offset=2, length=3), dict(path="/pa", offset=9, length=2),
    dict(path="/photos/a.jpg", offset=7, length=1), dict(path="/photos/a.jpeg", library=""),
    dict(path="/photos"), dict(path="/x"), dict(path="/photos/private"), dict(path="/caf\u00e9"),
    dict(path="/caf\u00e9/a.txt"), dict(path="/caf\u00e9/n"), dict(path="/cafe/a.txt"),
]


def _formula_says(policy_set, raw: dict) -> bool:
    """Evaluate the encoded decision on one concrete request by fixing every variable of the symbolic one."""
    request = build_request(raw["operation"], raw["extension"])
    formula = decision_formula(policy_set, request)
    fixed = [request.path == zstr(raw["path"]), request.library == zstr(raw["library"])]
    for name, f in request.args.items():
        if name in raw["args"]:
            v = raw["args"][name]
            fixed.append(f.present)
            if f.kind == "string":
                fixed.append(f.value == zstr(v))
            else:
                fixed.append(f.value == v)
        else:
            fixed.append(z3.Not(f.present))
    solver = z3.Solver()
    solver.add(fuse(list(request.constraints) + fixed + [formula.allowed]))
    result = solver.check()
    assert result != z3.unknown
    return result == z3.sat


@pytest.mark.parametrize("effect", ["allow", "deny"])
@pytest.mark.parametrize("condition", CONDITIONS)
def test_encoded_decision_equals_engine_decision(tmp_path, effect, condition):
    rules = f"""
    - id: r
      effect: {effect}
      operations: ["vdfs.read_file"]
      condition: '{condition.replace("'", "''")}'
    """
    if effect == "deny":
        rules += """
    - id: base
      effect: allow
      operations: ["vdfs.*"]
    """
    write(tmp_path, "p.yaml", policy_yaml("p", rules))
    policy_set = load_set(tmp_path)
    for spec in REQUESTS:
        spec = dict(spec)
        path, library = spec.pop("path"), spec.pop("library", LIB)
        raw = {"extension": "com.example.app", "operation": "vdfs.read_file", "path": path, "library": library,
               "args": {"path": path, **spec}}
        if library == "":
            continue  # the host refuses vdfs calls without a library before any policy runs
        expected = policy_set.decide(Request.from_mapping(raw)).allowed
        assert _formula_says(policy_set, raw) == expected, (condition, raw)


@pytest.mark.parametrize("pattern", ["com.example.*", "**", "com.**", "a.?.c", "**.x"])
def test_name_glob_language_agrees_with_globs(pattern):
    language = regex.glob_language(pattern, ".")
    for name in ["com.example.a", "com.example.", "com.example", "com.example.a.b", "a.b.c", "a.bb.c", "x", "a.x",
                 "com", "com.x.y"]:
        got = z3.is_true(z3.simplify(z3.InRe(zstr(name), language)))
        assert got == globs.glob_match(pattern, name), (pattern, name)


def test_encoded_decision_equals_engine_decision_through_the_rule_index(tmp_path):
    """Enough rules on one operation that the engine selects candidates by its RuleIndex (under/glob prefixes
    keyed in NFC, library and args guards): the formula, which encodes every candidate, still agrees."""
    rules = """
    - {id: photos, effect: allow, operations: [vdfs.read_file], condition: 'path.glob("/photos/**")'}
    - {id: nfd, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/cafe\u0301") && has(args.length)'}
    - {id: cafe-glob, effect: allow, operations: [vdfs.read_file], condition: 'path.glob("/cafe\u0301/**/ok")'}
    - {id: lib, effect: allow, operations: [vdfs.read_file], condition: 'library == "LIB" && path.under("/lib")'}
    - {id: exact, effect: allow, operations: [vdfs.read_file], condition: 'path == "/x/y" && args.offset == 3'}
    - {id: offsets, effect: allow, operations: [vdfs.read_file], condition: 'args.offset in [5, 6] && path.under("/o")'}
    - {id: priv, effect: deny, operations: ["class:reveals-content"], condition: 'path.glob("/photos/**/private/**")'}
    - {id: nfd-deny, effect: deny, operations: [vdfs.read_file], condition: 'path.glob("/cafe\u0301/secret/**")'}
    - {id: big, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/photos") && args.length > 10'}
    - {id: docs, effect: allow, operations: ["vdfs.*"], condition: 'path.under("/docs")'}
    """.replace("LIB", LIB)
    write(tmp_path, "p.yaml", policy_yaml("p", rules))
    policy_set = load_set(tmp_path)
    assert policy_set.plan("com.example.app", "vdfs.read_file").index is not None  # the index decides here
    paths = ["/photos", "/photos/a", "/photos/private", "/photos/a/private/b", "/caf\u00e9", "/caf\u00e9/ok",
             "/caf\u00e9/a/ok", "/caf\u00e9/secret", "/caf\u00e9/secret/ok", "/cafe/ok", "/lib", "/lib/z", "/x/y",
             "/o/p", "/docs", "/docs/a", "/", "/photosx"]
    arg_sets = [{}, {"offset": 3}, {"offset": 5, "length": 11}, {"length": 2}, {"offset": 6}]
    for path in paths:
        for library in (LIB, "00000000-0000-0000-0000-000000000000"):
            for args in arg_sets:
                raw = {"extension": "com.example.app", "operation": "vdfs.read_file", "path": path,
                       "library": library, "args": {"path": path, **args}}
                expected = policy_set.decide(Request.from_mapping(raw)).allowed
                assert _formula_says(policy_set, raw) == expected, raw


def test_rule_selection_for_an_open_extension_is_the_engines(tmp_path):
    """With the extension left open, rules are selected by operation only (then guarded by their extension
    globs in the formula): name globs and class: selectors must resolve as the engine's plan resolves them,
    including an operation that declares no class (in every class for a deny, in none for an allow)."""
    rules = """
    - {id: content, effect: deny, operations: ["class:reveals-content"], condition: 'path.under("/p")'}
    - {id: secrets, effect: allow, operations: ["class:reveals-secrets", "class:affects-secrets"]}
    - {id: meta, effect: allow, operations: ["class:reveals-metadata"]}
    - {id: ping, effect: allow, operations: ["test.*"]}
    - {id: all, effect: deny, operations: ["**"], condition: 'path.under("/s")'}
    """
    write(tmp_path, "p.yaml", policy_yaml("p", rules))
    write(tmp_path, "q.yaml", policy_yaml("q", "- {id: q, effect: allow, operations: [ai.ocr, vdfs.stat]}\n",
                                          '["com.other.*"]'))
    loaded = load_paths([tmp_path])
    assert not loaded.has_errors
    catalog = operations.builtin()
    undeclared = attrs.evolve(catalog.operations["test.ping"], declared=False, classes=frozenset())
    other = Catalog({**catalog.operations, "test.ping": undeclared})
    sets = [PolicySet.from_load(loaded), PolicySet(loaded.policies, loaded.programs, catalog=other)]
    for policy_set in sets:
        for op in operation_names():
            selected = rules_for(policy_set, op)
            for extension in ("com.example.app", "com.other.x", "org.none"):
                denies, allows = policy_set.candidates(extension, op)
                mine = [r for r in selected if any(globs.glob_match(p, extension) for p in r.extension_patterns)]
                engine = sorted(denies + allows, key=lambda r: r.order)
                assert [r.qualified_id for r in mine] == [r.qualified_id for r in engine], (op, extension)
    assert "p/content" in [r.qualified_id for r in rules_for(sets[1], "test.ping")]  # fail closed for a deny
    assert "p/content" not in [r.qualified_id for r in rules_for(sets[0], "test.ping")]
