"""Generated conditions (cel/codegen.py) against the closure compiler: the same value, or the same error with the
same message, on hypothesis-generated expressions and activations, on every CEL conformance case, and on the
bundled policies; policy text never becomes generated source; anything not generated falls back to closures.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from cel_conformance import conformance_dir, decode, iter_cases, same
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_cel_differential import EXPRS

from capengine.cel import ast, codegen, cost
from capengine.cel.checker import check
from capengine.cel.compiler import CostModel, Program, _Compiler, compile_expression
from capengine.cel.standard import STANDARD
from capengine.cel.types import BOOL, DYN, INT, STRING, Field, list_of, parse_decl, record_of
from capengine.cel.values import CelError, UInt
from capengine.policy.engine import PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS, LoadResult, load_paths, load_text
from capengine.policy.model import Request

ROOT = Path(__file__).resolve().parent.parent
# `args` typed as the loader types it from operation schemas (checked types reach the generator), next to the
# untyped map(string, dyn): the generated code must not trust a type the request does not honour.
TYPED_ARGS = record_of((Field("n", INT, False), Field("s", STRING, False), Field("b", BOOL, False),
                        Field("l", list_of(INT), False), Field("d", DYN, False)), False, "in args of test.op")
DECLS = [POLICY_DECLS, {**POLICY_DECLS, "args": TYPED_ARGS}]
# Proven-small inputs: what keeps conditions over untyped args unmetered (so generated) for the comparison.
SMALL_COSTS = CostModel({name: cost.Bound(64, cost.Bound(64, cost.Bound(64))) for name in POLICY_DECLS},
                        unknown=cost.Bound(64), limit=None)


def quote(text: str) -> str:
    """A CEL string literal for any text (control characters escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\x00", "\\x00") + '"'


def outcome(program: Program, activation: dict[str, Any], generated: bool) -> tuple[str, object]:
    evaluate = program.evaluate if generated else program.evaluate_closures
    try:
        return "value", evaluate(activation)
    except CelError as exc:
        return "error", str(exc)


def agree(a: tuple[str, object], b: tuple[str, object]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1] == b[1]
    return same(a[1], b[1]) if _comparable(a[1]) else a[1] == b[1]


def _comparable(v: object) -> bool:
    return not isinstance(v, (dict, MappingProxyType))


def both(expr: str, decls: dict, activation: dict[str, Any]) -> bool:
    """Compile with and without generation (as policies are, and with proven-small inputs); assert the same
    outcome. True when a generated function ran."""
    ran = [compare(expr, decls, activation, costs) for costs in (POLICY_COSTS, SMALL_COSTS)]
    return any(ran)


def compare(expr: str, decls: dict, activation: dict[str, Any], costs: CostModel) -> bool:
    program, errors = compile_expression(expr, decls, POLICY_ENVIRONMENT, total=True, costs=costs)
    closures, closure_errors = compile_expression(expr, decls, POLICY_ENVIRONMENT, total=True, costs=costs,
                                                  generate=False)
    assert [str(e) for e in errors] == [str(e) for e in closure_errors]
    if program is None or closures is None:
        return False
    assert closures.generated is None
    got, want = outcome(program, activation, True), outcome(closures, activation, False)
    assert agree(got, want), (expr, activation, got, want)
    return program.generated is not None


NUMBERS = st.sampled_from(["0", "1", "-3", "2.5", "1.0", "3u", "9223372036854775807", "-9223372036854775808",
                           "18446744073709551615u"])
FIELDS = st.sampled_from(["n", "s", "b", "l", "d", "missing"])


def codegen_atoms() -> st.SearchStrategy[str]:
    """Shapes beyond test_cel_differential's: what cel-python cannot judge but the closures can."""
    lit = st.sampled_from(["", "/photos", "a\"b", "x\n__import__('os')", "é", "\\\\"]).map(quote)
    return st.one_of(
        st.builds(lambda f, op, v: f"args.{f} {op} {v}", FIELDS, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
                  st.one_of(NUMBERS, lit, st.sampled_from(["true", "null", "[1]"]))),
        st.builds(lambda v, op, f: f"{v} {op} args.{f}", st.one_of(NUMBERS, lit), st.sampled_from(["==", "<", ">="]),
                  FIELDS),
        st.builds(lambda f, op, g: f"args.{f} {op} args.{g}", FIELDS, st.sampled_from(["==", "!=", "<"]), FIELDS),
        st.builds(lambda f, items: f"args.{f} in [{items}]", FIELDS,
                  st.sampled_from(['"a", "b"', '1, 2', '"x", 1.0', '""'])),
        st.builds(lambda f: f"args.{f} in {{'k': 1, 'n': 2}}", FIELDS),
        st.builds(lambda f, m, s: f"args.{f}.{m}({s})", FIELDS,
                  st.sampled_from(["startsWith", "endsWith", "contains", "matches"]), lit),
        st.builds(lambda f, n, op: f"args.{f} {op} {n} > 0", FIELDS, NUMBERS,
                  st.sampled_from(["+", "-", "*", "/", "%"])),
        st.builds(lambda f: f"size(args.{f}) > 1", FIELDS),
        st.builds(lambda f, c: f"{c}(args.{f}) == {c}(1)", FIELDS,
                  st.sampled_from(["int", "uint", "double", "string"])),
        st.builds(lambda f: f"has(args.{f})", FIELDS),
        st.builds(lambda f: f"!args.{f}", FIELDS),
        st.builds(lambda f: f"args.{f}", FIELDS),
        st.builds(lambda v: f'path.matches({v})', lit),
        st.builds(lambda v: f'{v}.startsWith(path)', lit),
        st.builds(lambda f: f"type(args.{f}) == int", FIELDS),
        st.builds(lambda f: f"args.l.exists(x, x == args.{f})", FIELDS),
        st.builds(lambda f: f'args["{f}"] == 1', FIELDS),
        st.sampled_from(["9223372036854775807 + args.n > 0", "-9223372036854775808 - args.n < 0",
                         "18446744073709551615u + uint(args.n) > 0u", "1 == 1.0", "args.n == 1.0",
                         "cel.bind(x, args.n, x > 1)", "[args.n, 1][0] == 1", "{'a': args.n}.a == 1",
                         "true ? args.n : args.s", "args.n > 0 ? true : 1"]),
    )


CODEGEN_EXPRS = st.recursive(st.one_of(codegen_atoms(), EXPRS), lambda inner: st.one_of(
    st.builds(lambda a, b, op: f"({a}) {op} ({b})", inner, inner, st.sampled_from(["&&", "||"])),
    st.builds(lambda a: f"!({a})", inner),
    st.builds(lambda c, a, b: f"({c}) ? ({a}) : ({b})", inner, inner, inner),
), max_leaves=8)

ARG_VALUES = st.one_of(st.integers(-3, 3), st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1]),
                       st.builds(UInt, st.integers(0, 3)), st.floats(allow_nan=True), st.booleans(), st.none(),
                       st.sampled_from(["", "a", "a\"b", "/photos", "1", "é"]),
                       st.lists(st.integers(-1, 2), max_size=3),
                       st.dictionaries(st.sampled_from(["k", "n"]), st.integers(0, 2), max_size=2))
ACTIVATIONS = st.fixed_dictionaries({
    "path": st.sampled_from(["", "/", "/photos", "/photos/a.jpg", "/photos2/b", "a\"b"]),
    "library": st.sampled_from(["", "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"]),
    "operation": st.just("vdfs.read_file"), "extension": st.just("com.example.app"),
    "args": st.dictionaries(st.sampled_from(["n", "s", "b", "l", "d"]), ARG_VALUES, max_size=4).map(MappingProxyType),
})


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CODEGEN_EXPRS, ACTIVATIONS, st.sampled_from(DECLS))
@example("(args.n / 0 == 1) || path == \"\"", {"path": "", "library": "", "operation": "", "extension": "",
                                                "args": MappingProxyType({"n": 1})}, POLICY_DECLS)
@example("(args.missing == 1) && false", {"path": "", "library": "", "operation": "", "extension": "",
                                          "args": MappingProxyType({})}, POLICY_DECLS)
def test_generated_matches_closures(expr: str, activation: dict[str, Any], decls: dict) -> None:
    both(expr, decls, activation)


def test_the_policy_shapes_are_generated_without_fallbacks() -> None:
    """Every condition of the bundled policies, and the shapes the benchmarks use, is generated whole (no
    closure call inside): the property the performance target rests on."""
    loaded = load_paths([ROOT / "policies"])
    conditions = {r.condition for p in loaded.policies for r in p.rules if r.condition}
    conditions |= {'args.size < 1000', 'args.kind in ["ocr-text", "thumbnail", "summary"]',
                   'has(args.length) && args.length == 5', 'path.under("/d") && path.matches("^/d/[a-z]+[.]jpg$")',
                   'library == "x" && path.under("/d") && has(args.offset) && args.offset < 1000'}
    assert len(conditions) >= 12
    for source in sorted(conditions):
        node = ast.parse(source, POLICY_ENVIRONMENT.namespaced)
        for decls in DECLS:
            checked = check(node, decls, POLICY_ENVIRONMENT)
            compiler = _Compiler(POLICY_ENVIRONMENT, checked, True, False)
            compiler.compile(node, frozenset())
            generated = codegen.generate(node, compiler)
            assert generated is not None and generated.fallbacks == 0, (source, generated)
    for program in loaded.programs.values():
        assert program.generated is not None and program.evaluate is program.generated


HOSTILE = ['"); __import__("os").system("touch PWNED") #', "\"\"\"\n__import__('os')\n'''",
           "\\x00\\n\\r\\\\", "\x00\n\r\\",
           "{__import__}", "' + __import__('os').getcwd() + '", "\\u2028\\ud7ff"]


@pytest.mark.parametrize("text", HOSTILE)
def test_policy_literals_cannot_inject_code(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Policy files are hostile: a literal full of quotes, newlines and `__import__` is compared as the string
    it is, and never appears in the generated source (literals are bound by name)."""
    monkeypatch.chdir(tmp_path)
    cel = quote(text)
    for source in (f"path == {cel}", f"args.kind == {cel} || args.kind in [{cel}, \"b\"]",
                   f"args.kind.startsWith({cel}) && path.contains({cel})", f"({cel} + path).endsWith({cel})",
                   f'path.under("/photos") && args.kind != {cel}'):
        node = ast.parse(source, POLICY_ENVIRONMENT.namespaced)
        decoded = next(n.value for n in _walk(node) if isinstance(n, ast.Literal) and isinstance(n.value, str)
                       and n.value not in ("b", "/photos"))
        compiler = _Compiler(POLICY_ENVIRONMENT, check(node, POLICY_DECLS, POLICY_ENVIRONMENT), True, False)
        compiler.compile(node, frozenset())
        generated = codegen.generate(node, compiler)
        assert generated is not None
        assert decoded not in generated.source and "__import__" not in generated.source
        program, _ = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=POLICY_COSTS)
        assert program is not None and program.generated is not None
        hit = {"path": decoded, "library": "", "operation": "", "extension": "",
               "args": MappingProxyType({"kind": decoded})}
        miss = {**hit, "path": decoded + "x", "args": MappingProxyType({"kind": "other"})}
        for activation in (hit, miss):
            assert outcome(program, activation, True) == outcome(program, activation, False)
    assert not (tmp_path / "PWNED").exists()
    # and through a policy file, the way an attacker would deliver it
    yaml_text = ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: hostile}\nspec:\n"
                 "  extensions: ['com.example.*']\n  rules:\n"
                 f"    - id: r\n      effect: allow\n      operations: [vdfs.read_file]\n"
                 f"      condition: {_yaml_quote('path == ' + cel)}\n")
    loaded, findings = load_text("hostile.yaml", yaml_text)
    assert not [f for f in findings if f.severity == "error"], findings
    policy_set = PolicySet.from_load(LoadResult([loaded], []))
    (program,) = loaded.programs.values()
    assert program.generated is not None
    assert policy_set.decide(Request("com.example.app", "vdfs.read_file", "/x", "", {})).allowed is False
    assert not (tmp_path / "PWNED").exists()


def _yaml_quote(text: str) -> str:
    return "'" + text.replace("'", "''").replace("\n", "\\n") + "'" if "\n" not in text else \
        '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _walk(node: object):
    if isinstance(node, tuple):
        for n in node:
            yield from _walk(n)
    elif attrs.has(type(node)) and not isinstance(node, ast.Pos):
        yield node
        for f in attrs.fields(type(node)):
            yield from _walk(getattr(node, f.name))


@attrs.frozen
class Wrapped:
    """A node kind the generator has never heard of (another helper's grammar may add some)."""

    inner: ast.Node
    pos: ast.Pos


class _WrappingCompiler(_Compiler):
    def _Wrapped(self, node: Wrapped, scope: frozenset[str]) -> Any:
        inner = self.compile(node.inner, scope)
        return lambda a: not inner(a)


def test_unknown_node_kinds_and_functions_fall_back_to_closures() -> None:
    node = ast.parse('path.under("/a") && args.n > 1', POLICY_ENVIRONMENT.namespaced)
    assert isinstance(node, ast.Call)
    wrapped = attrs.evolve(node, args=(node.args[0], Wrapped(node.args[1], node.pos)))
    checked = check(node, POLICY_DECLS, POLICY_ENVIRONMENT)
    compiler = _WrappingCompiler(POLICY_ENVIRONMENT, checked, True, False)
    closure = compiler.compile(wrapped, frozenset())
    generated = codegen.generate(wrapped, compiler)
    assert generated is not None and generated.fallbacks == 1
    results = []
    for n in (0, 1, 2, "x"):
        activation = {"path": "/a/b", "library": "", "operation": "", "extension": "", "args": {"n": n}}
        try:
            want: object = closure(activation)
        except CelError as exc:
            want = str(exc)
        try:
            got: object = generated.fn(activation)
        except CelError as exc:
            got = str(exc)
        results.append(got)
        assert got == want
    assert results == [True, True, False, "no such overload for (string, int)"]

    def frob(x: str) -> bool:
        return x.startswith("/a")

    env = POLICY_ENVIRONMENT.extend(lambda define: define("frob", (STRING,), BOOL, frob))
    program, errors = compile_expression("frob(path) || args.n > 1", POLICY_DECLS, env, total=True,
                                         costs=POLICY_COSTS)
    assert program is not None and program.generated is not None, errors
    assert program.evaluate({"path": "/a", "library": "", "operation": "", "extension": "", "args": {}}) is True


def test_what_is_not_generated_keeps_closures() -> None:
    """Programs compiled without types, or for activations that may lack variables, keep the closures."""
    program, _ = compile_expression("x > 1", None, STANDARD)
    assert program is not None and program.generated is None
    program, _ = compile_expression("x > 1", {"x": INT}, STANDARD, costs=POLICY_COSTS)
    assert program is not None and program.generated is None


UNBOUNDED = CostModel({}, unknown=cost.Bound(10**9), limit=None)


@pytest.mark.parametrize(("expr", "args", "exhausted"), [
    ("args.l.all(x, args.l.all(y, y >= 0))", {"l": list(range(400))}, True),  # the loops are closures
    ("(args.l.all(x, args.l.all(y, y >= 0))) || true", {"l": list(range(400))}, True),  # never absorbed
    # no closure inside: the generated code's own charges (32,769 units per call on 8 MiB)
    (" || ".join(f'args.s.matches("b{i}")' for i in range(4)), {"s": "a" * 2**23}, True),
    ("true && " + " && ".join(f'!args.s.contains("b{i}")' for i in range(4)), {"s": "a" * 2**25}, True),
    (" || ".join(f'args.s.matches("b{i}")' for i in range(3)), {"s": "a" * 2**23}, False),  # within budget
])
def test_metered_programs_charge_the_same_budget(expr: str, args: dict[str, Any], exhausted: bool) -> None:
    """A metered program is generated too, and runs out of budget exactly where its closures do."""
    activation = {"path": "", "library": "", "operation": "", "extension": "", "args": MappingProxyType(args)}
    program, errors = compile_expression(expr, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=UNBOUNDED)
    assert program is not None and program.metered and program.generated is not None, errors
    got, want = outcome(program, activation, True), outcome(program, activation, False)
    assert got == want
    if exhausted:
        assert got[0] == "error" and "budget" in str(got[1]), got
    else:
        assert got[0] == "value", got


def test_inline_charges_meet_the_budget_exactly_where_the_closures_do() -> None:
    """Around the exact size where three regex calls spend the budget, generated and closures agree."""
    expr = " || ".join(f'args.s.matches("b{i}")' for i in range(3))
    program, _ = compile_expression(expr, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=UNBOUNDED)
    assert program is not None and program.generated is not None
    boundary = (cost.BUDGET // 3) * (1 << cost.TEXT_SHIFT) // cost.REGEX_FACTOR - 2
    seen = set()
    for length in range(boundary - 1024, boundary + 1024, 97):
        activation = {"path": "", "library": "", "operation": "", "extension": "",
                      "args": MappingProxyType({"s": "a" * length})}
        got, want = outcome(program, activation, True), outcome(program, activation, False)
        assert got == want, length
        seen.add(got[0])
    assert seen == {"value", "error"}


def test_closure_and_generated_charges_share_one_budget() -> None:
    """A loop (closure-compiled) spends nearly all the budget; the generated comparisons after it tip it over
    at exactly the list length where the closures do."""
    expr = 'args.l.all(x, true) && args.n < 5 && args.n <= 6 && args.s.startsWith("a") && args.s.endsWith("b")'
    program, _ = compile_expression(expr, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=UNBOUNDED)
    assert program is not None and program.generated is not None
    seen = set()
    for length in range(cost.BUDGET - 8, cost.BUDGET + 2):
        activation = {"path": "", "library": "", "operation": "", "extension": "",
                      "args": MappingProxyType({"l": [0] * length, "n": 1, "s": "ab"})}
        got, want = outcome(program, activation, True), outcome(program, activation, False)
        assert got == want, length
        seen.add(got[0])
    assert seen == {"value", "error"}


def test_deep_expressions_fall_back_below_a_nesting_depth() -> None:
    """Nested &&/|| would nest try blocks past what CPython compiles: deep subtrees call their closures."""
    source = " || ".join(f"(args.n == {i} && (args.s == 'x' || args.n / {i + 1} > 0))" for i in range(40))
    for expr in (source, "!(" * 30 + "args.n > 1" + ")" * 30):
        for n in (0, 3, "s"):
            both(expr, POLICY_DECLS, {"path": "", "library": "", "operation": "", "extension": "",
                                      "args": MappingProxyType({"n": n, "s": "x"})})


def _conformance_cases() -> list[tuple[str, str, dict]]:
    return [(rel, section, case) for rel, section, case in iter_cases(conformance_dir())
            if not case.get("disable_check")]


def test_conformance_cases_agree() -> None:
    """Every checked CEL conformance case, compiled total and unmetered (so generated where the generator
    can), gives the closure compiler's outcome."""
    generated_count = 0
    for rel, section, case in _conformance_cases():
        decls = {k: parse_decl(v) for k, v in case.get("type_env", {}).items()}
        try:
            bindings = {k: decode(v) for k, v in case.get("bindings", {}).items()}
        except Exception:  # noqa: BLE001 - a binding type this engine does not model
            continue
        costs = CostModel({k: cost.Bound(64, cost.Bound(64)) for k in decls}, unknown=cost.Bound(64), limit=None)
        program, errors = compile_expression(case["expr"], decls, STANDARD, total=True, costs=costs)
        closures, _ = compile_expression(case["expr"], decls, STANDARD, total=True, costs=costs, generate=False)
        if program is None or closures is None:
            assert (program is None) == (closures is None), (rel, section, case["expr"])
            continue
        generated_count += program.generated is not None
        got, want = outcome(program, bindings, True), outcome(closures, bindings, False)
        if got[0] == want[0] == "value" and isinstance(got[1], float) and math.isnan(got[1]):
            continue
        assert agree(got, want), (rel, section, case["expr"], got, want)
    assert generated_count > 500, generated_count


def test_bundled_policy_decisions_agree() -> None:
    """The bundled policies decide every request of their own test suites the same with and without codegen."""
    loaded = load_paths([ROOT / "policies"])
    generated = PolicySet.from_load(loaded)
    plain_programs = {}
    for rid, program in loaded.programs.items():
        plain_programs[rid] = attrs.evolve(program, generated=None)
    closures = PolicySet(loaded.policies, plain_programs, loaded.revision, loaded.catalog)
    requests = [Request.parse(ext, op, path, lib, args)
                for ext in ("com.example.photo-ocr", "com.example.cloud-sync", "com.example.hello-wat")
                for op in ("vdfs.read_file", "vdfs.write_file", "ai.ocr", "credentials.get", "vdfs.list")
                for path in ("/photos/a.png", "/photos/x/private/y.png", "/documents/a", "/.ssh/id", "/docs/x")
                for lib in ("6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6", "")
                for args in ({}, {"kind": "ocr-text", "name": "sync.x", "length": 2**25}, {"kind": 3, "length": "x"})]
    for request in requests:
        assert generated.decide(request) == closures.decide(request)


def test_a_source_python_refuses_leaves_the_closures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong generating (Python refusing the source, say), the load succeeds on closures."""
    def refuse(source: str) -> None:
        raise SyntaxError("too many statically nested blocks")

    monkeypatch.setattr(codegen, "_compile", refuse)
    program, errors = compile_expression('path.under("/a") && args.n > 1', POLICY_DECLS, POLICY_ENVIRONMENT,
                                         total=True, costs=POLICY_COSTS)
    assert not errors and program is not None and program.generated is None
    activation = {"path": "/a/b", "library": "", "operation": "", "extension": "", "args": {"n": 2}}
    assert program.evaluate(activation) is True


def test_check_without_generation_loads_closures_and_passes_the_same_tests():
    """`capengine check` loads without generated functions (it only decides its test cases); the daemon's
    load keeps them. Both pass the bundled policy tests."""
    from capengine.policy.check import run_check

    plain, fast = run_check(ROOT / "policies", generate=False), run_check(ROOT / "policies")
    assert plain.load.programs and all(p.generated is None for p in plain.load.programs.values())
    assert any(p.generated is not None for p in fast.load.programs.values())
    assert plain.tests is not None and fast.tests is not None
    assert [r.passed for r in plain.tests.results] == [r.passed for r in fast.tests.results]
    assert all(r.passed for r in plain.tests.results)


# Edge shapes a hostile or subtly wrong policy may hold, each against every edge value at once (int64 and uint64
# bounds, -0.0, NaN, bytes vs string, lone surrogates, null, nested maps), and with the field missing.
EDGE_EXPRS = (
    'args.n == 1',
    'args.n < 1',
    '1 < args.n',
    'args.n <= 9223372036854775807',
    'args.n + 1 > args.n',
    'args.n - 1 < args.n',
    '-args.n < 0',
    'args.n * 2 > 0',
    'args.n / 2 >= 0',
    'args.n % 2 == 0',
    'args.n in [1, 2]',
    'args.n in [1, "a", 2.0]',
    'args.n in {"a": 1}',
    'args.s in ["a", "é"]',
    'args.s in ["a", "b"] || args.n == 1',
    'args.s == b"a"',
    'args.s < "b"',
    'args.s + "x" == "ax"',
    'args.s + args.s == "aa"',
    'size(args.s) == 1',
    'args.s.size() == 1',
    'args.s.startsWith("a")',
    'args.s.endsWith("")',
    'args.s.contains("é")',
    'args.s.matches("^a$")',
    'args.s.matches(".*")',
    'has(args.n)',
    'has(args.n) && args.n == null',
    'args.n == null',
    'args.n != null',
    '!has(args.n) || args.n > 0',
    'args.n > 0 || !has(args.n)',
    'args.n > 0 && args.s == "a"',
    'args.missing > 0 || true',
    'args.missing > 0 && false',
    'false && args.missing > 0',
    'args.n ? true : false',
    '(args.n > 0 ? args.s : args.n) == 1',
    'args.n > 0 ? args.missing : true',
    'int(args.n) == 1',
    'uint(args.n) == 1u',
    'double(args.n) == 1.0',
    'string(args.n) == "1"',
    'bytes(args.s) == b"a"',
    'bool(args.s)',
    'args.n == 1u',
    'args.n == 1.0',
    'args.n == -0.0',
    'args.n != args.n',
    'args.n < 18446744073709551615u',
    'args.n >= -9223372036854775808',
    'args.n == 9223372036854775807 + 1',
    'type(args.n) == int',
    'type(args.n) == uint',
    'type(args.n) == double',
    'type(args.n) == bytes',
    'type(args.n) == null_type',
    'args.n.lowerAscii() == "a"',
    'args.s.lowerAscii() == "a"',
    'args.s.upperAscii() == "A"',
    'args.s.trim() == "a"',
    'path.under("/photos")',
    'path.glob("/photos/*")',
    'path == "/photos/a" && args.n == 1',
    'path.startsWith("/photos") || args.n',
    '!(path.startsWith("/photos"))',
    '!args.n',
    '!!args.b',
    'args.l.exists(x, x == 1)',
    'args.l[0] == 1',
    'args["n"] == 1',
    'args.?n.orValue(5) == 5',
    'args.?n.orValue(args.missing) == 5',
    'args.?n.hasValue()',
    'args.?n.value() == 1',
    'args.?n.or(optional.of(2)).value() == 2',
    'args.?n.optMap(x, x + 1).orValue(0) > 0',
    '[?args.?n, 1].size() == 2',
    '{?"a": args.?n}.size() == 1',
    'args.?d.?k.orValue(0) == 1',
    'has(args.d.k)',
    'args.d.k == 1',
    'args.n == args.n2',
    'args.n < args.n2',
    'args.n + args.n2 > 0',
    'args.s + args.n2 == "aa"',
    '[args.n] == [1]',
    '{"a": args.n} == {"a": 1}',
    '1 in args.l',
    '"k" in args.d',
    'args.n in args.l',
    'args.b == true',
    'args.b && true',
    'args.b || false',
    'true ? args.n : 1',
    'args.n < 1.5',
    'args.n > 1.0',
    'args.n == 18446744073709551615u',
    'args.n >= 0u',
)
EDGE_VALUES = (0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, UInt(0), UInt(2**64 - 1), 0.0, -0.0, math.nan, math.inf, True,
               False, None, "", "a", "é", "\ud800", b"", b"a", [1], [], [1, "a"], {"k": 1}, {},
               MappingProxyType({"s": 1}))


@pytest.mark.parametrize("expr", EDGE_EXPRS)
def test_edge_expressions_agree_on_edge_values(expr: str) -> None:
    """Generated and closure evaluation agree (value, or error and message) on the edge shapes and values."""
    base = {"path": "/photos/a", "library": "", "operation": "vdfs.read_file", "extension": "x"}
    activations = [{**base, "args": MappingProxyType({})}] + [
        {**base, "args": MappingProxyType(dict.fromkeys(("n", "n2", "s", "b", "l", "d"), v))} for v in EDGE_VALUES]
    for decls in DECLS:
        for activation in activations:
            both(expr, decls, activation)


@pytest.mark.parametrize("generate", [True, False])
@pytest.mark.parametrize("source", ["(-9223372036854775807 - 1) % -1", "uint(-0.5)", "uint(-1e-300)"])
def test_overflowing_remainder_and_negative_double_to_uint_are_errors(source: str, generate: bool) -> None:
    """As in cel-go: INT_MIN % -1 overflows like INT_MIN / -1, and a negative double is out of uint's range even
    when it would truncate to 0 (a policy must not read `uint(args.x)` of -0.5 as 0u)."""
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, generate=generate)
    assert program is not None and not errors
    with pytest.raises(CelError, match="overflow|out of uint range"):
        program.evaluate({})
