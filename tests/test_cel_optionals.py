"""CEL optional values (the cel-spec `optionals` extension): syntax and positions, type errors at line:col,
evaluation including errors and short-circuits, and the policy layer (`args.?length.orValue(0) > 1000` in a
deny decides right for calls with and without `length`, typed args, lints, analysis).

cel-python (the differential reference elsewhere) has no optionals: it cannot even parse them (asserted
below), so the expectations here are written by hand from the cel-spec and cel-go's behaviour.
"""

from __future__ import annotations

import random
import re
from types import MappingProxyType

import celpy
import pytest
from helpers import LIB, load_set, policy_yaml, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_analysis_soundness import samples
from test_cel_differential import ACTIVATIONS, ours, reference

from capengine.analysis.can import can
from capengine.cel import ast
from capengine.cel.compiler import compile_expression
from capengine.cel.standard import STANDARD
from capengine.cel.types import parse_decl
from capengine.cel.values import NONE, CelError, CelType, OptionalValue, UInt, optional
from capengine.policy import arg_types, branches, operations
from capengine.policy.check import load_policies, run_check
from capengine.policy.engine import PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS, load_paths
from capengine.policy.model import Request

OPS = operations.builtin().names()


def run(expr: str, decls: dict[str, str] | None = None, **bindings: object) -> object:
    program, errors = compile_expression(expr, {k: parse_decl(v) for k, v in (decls or {}).items()}, STANDARD)
    assert not errors, [getattr(e, "message", e) for e in errors]
    return program.evaluate(bindings)


def run_unchecked(expr: str, **bindings: object) -> object:
    program, errors = compile_expression(expr, None, STANDARD)
    assert not errors
    return program.evaluate(bindings)


def problems(expr: str, decls: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    _, errors = compile_expression(expr, {k: parse_decl(v) for k, v in (decls or {}).items()}, STANDARD)
    out = []
    for e in errors:
        if isinstance(e, ast.CelSyntaxError):
            out.append((e.message, e.line, e.column))
        else:
            out.append((e.message, e.pos.line, e.pos.column))
    return out


# syntax ---------------------------------------------------------------------------------------------------

def test_optional_select_and_index_parse_to_calls_with_positions():
    node = ast.parse("args.?length")
    assert node == ast.Call(ast.OPT_SELECT, None, (ast.Ident("args", ast.Pos(1, 1)),
                                                   ast.Literal("length", ast.Pos(1, 7))), ast.Pos(1, 7))
    node = ast.parse('m[?"k"]')
    assert isinstance(node, ast.Call) and node.function == ast.OPT_INDEX
    assert node.args[1] == ast.Literal("k", ast.Pos(1, 4))
    node = ast.parse("a.\n  ? b")  # tokens may be spaced out, as in cel-go's grammar
    assert isinstance(node, ast.Call) and node.args[1] == ast.Literal("b", ast.Pos(2, 5))


def test_optional_list_elements_and_map_entries_are_marked():
    lst = ast.parse("[a, ?b, c, ?d]")
    assert isinstance(lst, ast.CreateList) and lst.optional_indices == (1, 3)
    assert [i.pos.column for i in lst.items] == [2, 6, 9, 13]
    mp = ast.parse("{'a': 1, ?'b': x}")
    assert isinstance(mp, ast.CreateMap) and mp.optional_indices == (1,)
    assert ast.parse("[a, b]").optional_indices == ()
    assert ast.parse("{}").optional_indices == ()


@pytest.mark.parametrize("source,message,line,column", [
    ("a.?", "unexpected end of expression", 1, 3),
    ("a[?]", "unexpected ']'", 1, 4),
    ("x.?1", "unexpected '1'; expected an identifier", 1, 4),
    ("[?]", "unexpected ']'", 1, 3),
    ("{?: 1}", "unexpected ':'", 1, 3),
    ("?a", "unexpected '?'", 1, 1),
    ("f(?a)", "unexpected '?'", 1, 3),
    ("a.?b(1)", "unexpected '('", 1, 5),
    ("a ?? b", "unexpected '?'", 1, 4),
    ("{'a': ?b}", "unexpected '?'", 1, 7),
    ("a.??b", "unexpected '?'; expected an identifier", 1, 4),
    ("x &&\n  y.?", "unexpected end of expression", 2, 5),
])
def test_malformed_optional_syntax_is_a_syntax_error_at_the_token(source, message, line, column):
    with pytest.raises(ast.CelSyntaxError) as info:
        ast.parse(source)
    assert (info.value.message, info.value.line, info.value.column) == (message, line, column)


def test_cel_python_cannot_parse_optionals():
    """Why the expectations in this file are hand-written: the differential reference rejects the syntax."""
    env = celpy.Environment()
    for source in ("{}.?a", "[?optional.none()]", "m[?1]"):
        with pytest.raises(celpy.CELParseError):
            env.compile(source)


# Optional forms over policy args, each with the same meaning spelt without optionals, which cel-python can
# evaluate: capengine's value for the first must equal cel-python's for the second.
_INT = st.sampled_from(["-3", "0", "1", "5"])
_PAIRS = st.one_of(
    st.builds(lambda d, op, v: (f"args.?n.orValue({d}) {op} {v}", f"(has(args.n) ? args.n : {d}) {op} {v}"),
              _INT, st.sampled_from(["==", "!=", "<", ">="]), _INT),
    st.builds(lambda f: (f"args.?{f}.hasValue()", f"has(args.{f})"), st.sampled_from(["n", "s", "missing"])),
    st.builds(lambda v: (f'args[?"s"].orValue("x") == "{v}"', f'(has(args.s) ? args.s : "x") == "{v}"'),
              st.sampled_from(["x", "", "/photos", "jpg"])),
    st.builds(lambda v: (f"args.?n.optMap(x, x + 1).orValue(0) > {v}", f"(has(args.n) ? args.n + 1 : 0) > {v}"),
              _INT),
    st.builds(lambda k: (f"[?args.?n, ?args.?s, ?args.?missing].size() == {k}",
                         f"(has(args.n) ? 1 : 0) + (has(args.s) ? 1 : 0) + (has(args.missing) ? 1 : 0) == {k}"),
              st.sampled_from(["0", "1", "2"])),
    st.builds(lambda v: (f"args.?n.value() > {v}", f"args.n > {v}"), _INT),  # errors when absent, in both
)
_OPTIONAL_EXPRS = st.recursive(_PAIRS, lambda inner: st.one_of(
    st.builds(lambda a, b, op: (f"({a[0]}) {op} ({b[0]})", f"({a[1]}) {op} ({b[1]})"), inner, inner,
              st.sampled_from(["&&", "||"])),
    st.builds(lambda a: (f"!({a[0]})", f"!({a[1]})"), inner),
), max_leaves=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPTIONAL_EXPRS, ACTIVATIONS)
def test_optional_forms_match_their_plain_equivalents_in_cel_python(pair, activation):
    optional_form, plain_form = pair
    got = ours(optional_form, activation)  # policy compilation, fast paths and metered closures alike
    want = reference(plain_form, activation)
    assert got[0] == want[0] and (got[0] == "error" or got[1] == want[1]), (pair, activation, got, want)


def test_opt_map_macros_expand_and_check_their_variable():
    node = ast.parse("o.optMap(v, v + 1)")
    assert isinstance(node, ast.Bind) and node.var == ast.OPTIONAL_TARGET
    with pytest.raises(ast.CelSyntaxError, match="loop variable must be a simple identifier"):
        ast.parse("o.optMap(v.w, 1)")
    with pytest.raises(ast.CelSyntaxError, match="loop variable"):
        ast.parse("o.optFlatMap(1, 1)")


# type checking ---------------------------------------------------------------------------------------------

def test_types_of_optional_expressions():
    def type_of(expr: str, decls: dict[str, str] | None = None) -> str:
        program, errors = compile_expression(expr, {k: parse_decl(v) for k, v in (decls or {}).items()}, STANDARD)
        assert not errors, errors
        return str(program.type)

    assert type_of("optional.of(1)") == "optional_type(int)"
    assert type_of("optional.none()") == "optional_type(dyn)"
    assert type_of("{'a': 'b'}.?a") == "optional_type(string)"
    assert type_of("{'a': {'b': 1}}.?a.b") == "optional_type(int)"  # chaining: stays optional
    assert type_of("[1, 2][?0]") == "optional_type(int)"
    assert type_of("optional.of([1])[0]") == "optional_type(int)"
    assert type_of("{'a': 1}.?a.orValue(0)") == "int"
    assert type_of("{'a': 1}.?a.value()") == "int"
    assert type_of("{'a': 1}.?a.hasValue()") == "bool"
    assert type_of("optional.of(1).or(optional.none())") == "optional_type(int)"
    assert type_of("[?optional.of(1), 2]") == "list(int)"
    assert type_of("{?'a': optional.of('x')}") == "map(string, string)"
    assert type_of("optional.of(1).optMap(x, string(x))") == "optional_type(string)"
    assert type_of("x.?f", {"x": "dyn"}) == "optional_type(dyn)"
    assert type_of("type(optional.none())") == "type"


@pytest.mark.parametrize("expr,expected", [
    ("[?1]", ("list element marked with '?' must be an optional, not int", 1, 3)),
    ("{'k': 1, ?'a': 'x'}", ("map entry value marked with '?' must be an optional, not string", 1, 16)),
    ("optional.of(1).orValue('x')", ("no matching overload for 'orValue' applied to (optional_type(int), string)",
                                     1, 16)),
    ("(1).?a", ("type 'int' has no fields (selecting 'a')", 1, 6)),
    ("[1][?'a']", ("list index must be int, not string", 1, 6)),
    ("{1: 2}.?a", ("cannot select field 'a' from map(int, int): keys are not strings", 1, 9)),
    ("true &&\n  optional.of(1).value() + 'a' == 'b'", ("no matching overload for '+' applied to (int, string)",
                                                        2, 26)),
    ("optional.of(1) == 1", ("no matching overload for '==' applied to (optional_type(int), int)", 1, 16)),
    ("optional.of(1).or(2)", ("no matching overload for 'or' applied to (optional_type(int), int)", 1, 16)),
    ("(1).value()", ("no matching overload for 'value' applied to (int)", 1, 5)),
    ("optional.off(1)", ("undeclared reference to 'optional'", 1, 1)),
])
def test_type_errors_have_positions(expr, expected):
    assert problems(expr)[0] == expected


# evaluation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,expected", [
    ("{'a': 1}.?a", optional(1)),
    ("{'a': 1}.?b", NONE),
    ("{'a': {'b': 2}}.?a.b", optional(2)),
    ("{'a': {'b': 2}}.?a.c", NONE),
    ("{}.?a.b.c", NONE),
    ("{'a': 1}['a'] == 1 && {'a': 1}[?'z'].orValue(7) == 7", True),
    ("[1, 2][?1]", optional(2)),
    ("[1, 2][?2]", NONE),
    ("[1, 2][?-1]", NONE),
    ("[1, 2][?1u]", optional(2)),
    ("optional.of([1])[?3]", NONE),
    ("optional.none()[?3]", NONE),
    ("optional.of({'a': 1}).a", optional(1)),
    ("optional.of({'a': 1})['b']", NONE),
    ("optional.of(0).hasValue()", True),
    ("optional.ofNonZeroValue(0).hasValue()", False),
    ("optional.ofNonZeroValue(0u).hasValue() || optional.ofNonZeroValue(0.0).hasValue()", False),
    ("optional.ofNonZeroValue(false).hasValue() || optional.ofNonZeroValue(b'').hasValue()", False),
    ("optional.ofNonZeroValue({}).hasValue() || optional.ofNonZeroValue([]).hasValue()", False),
    ("optional.ofNonZeroValue(duration('0s')).hasValue()", False),
    ("optional.ofNonZeroValue(timestamp(0)).hasValue()", True),  # the epoch is an instant, not "no value"
    ("optional.ofNonZeroValue(optional.none()).hasValue()", False),
    ("optional.ofNonZeroValue(' ').value()", " "),
    ("optional.none().orValue('d')", "d"),
    ("optional.of(dyn(null)).orValue('d')", None),
    ("optional.none().or(optional.of(2)).value()", 2),
    ("optional.of(1).or(optional.of(2)).value()", 1),
    ("optional.of(dyn(1)) == optional.of(1u)", True),  # the values compare as CEL values
    ("optional.of(1) == optional.of(2)", False),
    ("optional.of([1]) == optional.of([1])", True),
    ("optional.none() != optional.of(null)", True),
    ("type(optional.of(1)) == optional_type", True),
    ("type(optional.none())", CelType("optional_type")),
    ("[?optional.none(), ?optional.of(1), 2]", [1, 2]),
    ("{?'a': optional.none(), ?'b': optional.of(2)}", {"b": 2}),
    ("optional.of(2).optMap(x, x * 10).value()", 20),
    ("optional.none().optMap(x, x * 10)", NONE),
    ("optional.of(2).optFlatMap(x, optional.ofNonZeroValue(x - 2))", NONE),
    ("has(optional.of({'a': 1}).a) && !has(optional.none().a)", True),
    ("{'a': 5u}.?a.value()", UInt(5)),
    ("cel.bind(o, {'x': 1}.?x, o.hasValue() && o.value() == 1)", True),
    ("[1, 2, 3].map(i, [10, 20][?i].orValue(0))", [20, 0, 0]),
])
def test_evaluation(expr, expected):
    result = run(expr)
    assert result == expected and type(result) is type(expected), (result, expected)


def test_unchecked_evaluation_of_numeric_keys():
    """Run-time rules the checker would reject statically: an integral double indexes a list or an int key."""
    assert run_unchecked("[1, 2][?1.0]") == optional(2)
    with pytest.raises(CelError, match="list index must be int, not double"):  # as plain indexing says
        run_unchecked("[1, 2][?1.5]")
    assert run_unchecked("{1: 'a'}[?1.0]") == optional("a")


def test_variables_of_dyn_type_select_optionally():
    assert run("x.?a.orValue(0) + 1", {"x": "dyn"}, x={"a": 4}) == 5
    assert run("x.?a.orValue(0) + 1", {"x": "dyn"}, x={}) == 1
    assert run("x[?0].orValue('none')", {"x": "dyn"}, x=[]) == "none"
    frozen = MappingProxyType({"a": 1})  # a request's args are a read-only view
    assert run("x.?a", {"x": "map"}, x=frozen) == optional(1)


@pytest.mark.parametrize("expr,message", [
    ("optional.none().value()", "optional.none() dereference"),
    ("{'a': 1}.?a.b", "type 'int' has no field 'b'"),
    ("{'a': null}.?a.b", "type 'null_type' has no field 'b'"),
    ("{true: 1}[?true].absent", "type 'int' has no field 'absent'"),
    ("[1][?'x']", "list index must be int, not string"),
    ("{'a': 1}[?null]", "unsupported key type: null"),
    ("optional.of(1).orValue(1 / 0) == 1 && optional.none().orValue(1 / 0) == 1", "division by zero"),
    ("optional.none().or(optional.of(1 / 0)).hasValue()", "division by zero"),
    ("optional.ofNonZeroValue({'a': 1}.b)", "no such key: 'b'"),
    ("'s'.?a", "type 'string' has no field 'a'"),
    ("1[?0]", "type 'int' cannot be indexed"),
])
def test_evaluation_errors(expr, message):
    with pytest.raises(CelError, match=re.escape(message)):
        run_unchecked(expr)


@pytest.mark.parametrize("expr,message", [
    ("[?1]", "a list element marked with '?' must be an optional, not int"),
    ("{?'a': 1}", "a map entry value marked with '?' must be an optional, not int"),
    ("optional.of(1).orValue(2).or(optional.none())", "no such overload for 'or' on int"),
    ("optional.none().or(2)", "no such overload for 'or' with int"),
    ("(1).orValue(2)", "no such overload for 'orValue' on int"),
    ("(1).hasValue()", "no such overload"),
])
def test_unchecked_misuse_fails_at_run_time(expr, message):
    """Without the checker (decls=None) a misuse is still an error value, never a Python exception."""
    with pytest.raises(CelError, match=re.escape(message)):
        run_unchecked(expr)


def test_or_and_or_value_short_circuit():
    """The argument is evaluated only when the optional is empty: its error does not leak otherwise."""
    assert run("optional.of(1).orValue(1 / 0)") == 1
    assert run("optional.of(1).or(optional.of(1 / 0)).value()") == 1
    assert run("{'a': 1}.?a.orValue(x.z)", {"x": "dyn"}, x={}) == 1
    with pytest.raises(CelError, match="no such key"):
        run("{'a': 1}.?b.orValue(x.z)", {"x": "dyn"}, x={})


def test_opt_map_evaluates_its_target_once():
    """optMap binds its target to a hidden variable (cel-spec duplicates it in the expansion): the target is
    evaluated once, which the run-time cost meter counts."""
    program, _ = compile_expression("x.?a.optMap(v, v + 1).value()", {"x": parse_decl("dyn")}, STANDARD)
    assert program.metered
    node = program.node
    selects = [n for n in _walk(node) if isinstance(n, ast.Call) and n.function == ast.OPT_SELECT]
    assert len(selects) == 1
    assert program.evaluate({"x": {"a": 1}}) == 2


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, tuple):
            stack.extend(n)
        elif hasattr(n, "__attrs_attrs__") and not isinstance(n, ast.Pos):
            yield n
            stack.extend(getattr(n, a.name) for a in n.__attrs_attrs__)


def test_optional_values_are_not_map_keys():
    with pytest.raises(CelError, match="unsupported map key type: optional_type"):
        run_unchecked("{optional.none(): 1}")


# the policy layer ------------------------------------------------------------------------------------------

DENY_BIG = """
- {id: big, effect: deny, operations: [vdfs.read_file], condition: 'args.?length.orValue(0) > 1000'}
- {id: photos, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/photos")'}
"""


def _request(args: dict | None) -> dict:
    raw = {"extension": "com.example.a", "operation": "vdfs.read_file", "path": "/photos/a.png", "library": LIB}
    if args is not None:
        raw["args"] = args
    return raw


def test_deny_on_optional_length_decides_with_and_without_length(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", DENY_BIG))
    policies = load_policies(tmp_path)
    for args, allowed, rules in [
        (None, True, ("p/photos",)),  # no args at all: args.path is filled in, length absent
        ({"offset": 5}, True, ("p/photos",)),
        ({"length": 1000}, True, ("p/photos",)),
        ({"length": 1001}, False, ("p/big",)),
        ({"offset": 2, "length": 5000}, False, ("p/big",)),
    ]:
        decision = policies.decide_raw(_request(args))
        assert (decision.allowed, decision.rules) == (allowed, rules), args
        assert decision.errors == ()  # no error made the deny match: it decided on the value
    # the same rule written without has() errors on every call lacking length, and the deny matches them all
    write(tmp_path, "p.yaml", policy_yaml("p", DENY_BIG.replace("args.?length.orValue(0)", "args.length")))
    unguarded = PolicySet.from_load(load_paths([tmp_path]))
    decision = unguarded.decide_raw(_request({"offset": 5}))
    assert not decision.allowed and decision.errors


def test_unguarded_optional_lint_accepts_or_value_and_suggests_it(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", DENY_BIG))
    outcome = run_check([tmp_path], operations=OPS, strict=True)
    assert [f for f in outcome.findings if f.code == "unguarded-optional"] == []
    text = policy_yaml("p", """
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 1000'}
        - {id: b, effect: deny, operations: [vdfs.read_file], condition: 'args.?length.value() > 1000'}
        - {id: c, effect: deny, operations: [vdfs.read_file],
           condition: 'args.?length.hasValue() && args.?length.value() > 9'}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'args[?"length"].orValue(0) > 9'}
    """)
    write(tmp_path, "p.yaml", text)
    lines = text.splitlines()
    found = [f for f in run_check([tmp_path], operations=OPS).findings if f.code == "unguarded-optional"]
    assert [(f.location.line, f.location.column) for f in found] == [
        (7, lines[6].index("length") + 1), (8, lines[7].index("length") + 1)]
    assert "write 'args.?length.orValue(<default>) ...'" in found[0].message


def test_typed_args_type_optional_reads(tmp_path):
    text = policy_yaml("p", """
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'args.?lenght.orValue(0) > 1000'}
        - {id: b, effect: deny, operations: [vdfs.read_file], condition: 'args[?"ofset"].hasValue()'}
        - {id: c, effect: deny, operations: [vdfs.read_file], condition: 'args.?length.orValue("x") == "y"'}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'args.?path.orValue("").size() > 1'}
    """)
    write(tmp_path, "p.yaml", text)
    lines = text.splitlines()
    errors = [f for f in run_check([tmp_path], operations=OPS).findings if f.severity == "error"]
    assert [(f.code, f.location.line, f.location.column) for f in errors] == [
        ("cel-type", 7, lines[6].index("lenght") + 1),
        ("cel-type", 8, lines[7].index('"ofset"') + 1),
        ("cel-type", 9, lines[8].index(".orValue") + 2)]
    assert "no field 'lenght' in args of vdfs.read_file" in errors[0].message
    assert "did you mean 'length'?" in errors[0].message and "did you mean 'offset'?" in errors[1].message
    assert "(optional_type(int), string)" in errors[2].message


def test_referenced_fields_see_optional_reads():
    def fields(source: str) -> frozenset[str] | None:
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True)
        assert not errors
        return program.arg_fields

    assert fields("args.?length.orValue(0) > 1") == {"length"}
    assert fields('args[?"offset"].hasValue() && has(args.path)') == {"offset", "path"}
    assert fields('[?args.?a, ?args[?"b"]].size() > 0') == {"a", "b"}
    assert fields("args.?a.optMap(x, args.b) == optional.none()") == {"a", "b"}
    assert fields("args[?path].hasValue()") is None  # a computed key may read any field


def test_rule_index_overlap_and_coverage_handle_optional_conditions(tmp_path):
    """Enough rules for the rule index, conditions of every optional shape, a policy test suite (coverage per
    branch) and an overlap check: nothing crashes and decisions match a direct evaluation."""
    shapes = ['args.?length.orValue(0) > {n}', '[?args.?offset].size() == 1 && path.under("/p{n}")',
              '{{?"k": args.?offset}}.size() == 0 || args[?"length"].orValue(0) == {n}',
              'args.?length.optMap(l, l * 2).orValue(0) > {n}', 'library == "{lib}" && args.?offset.hasValue()']
    rules = [f"- {{id: r{i}, effect: {'deny' if i % 4 == 0 else 'allow'}, operations: [vdfs.read_file], "
             f"condition: '{shapes[i % len(shapes)].format(n=i, lib=LIB)}'}}" for i in range(40)]
    write(tmp_path, "p.yaml", policy_yaml("p", "\n".join(rules) + "\n"))
    write(tmp_path, "t.yaml", """
        apiVersion: capengine/v1
        kind: PolicyTest
        metadata: {name: t}
        cases:
          - name: big read denied
            request: {extension: com.example.a, operation: vdfs.read_file, path: /p1/x,
                      library: 6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6, args: {length: 5000}}
            expect: deny
            rule: p/r0
    """)
    outcome = run_check([tmp_path], operations=OPS)
    assert not [f for f in outcome.findings if f.severity == "error"], [str(f) for f in outcome.findings]
    policies = outcome.policy_set
    rng = random.Random(7)
    for request in samples(rng, 200):
        decision = policies.decide(request)
        assert decision.allowed == _reference_decision(policies, request), request
    assert branches.operand_values('args.?length.hasValue() || args.?length.orValue(0) > 3',
                                   Request.from_mapping(_request({"length": 9})).activation()) == [
        ("args.?length.hasValue()", "true"), ("args.?length.orValue(0) > 3", "true")]
    assert branches.cel_text(optional({"a": [1, "x"]})) == 'optional.of({"a": [1, "x"]})'
    assert branches.cel_text(NONE) == "optional.none()"


def _reference_decision(policies: PolicySet, request: Request) -> bool:
    """Every rule evaluated in order without the index: deny wins (an error denies), then any allow."""
    activation = request.activation()
    rules = [r for r in policies.rules if "vdfs.read_file" in r.rule.operations]
    outcomes = []
    for rule in rules:
        try:
            outcomes.append((rule.deny, rule.program.evaluate(activation) is True))
        except CelError:
            outcomes.append((rule.deny, rule.deny))
    if any(matched for deny, matched in outcomes if deny):
        return False
    return any(matched for deny, matched in outcomes if not deny)


def test_analysis_encodes_or_value_and_has_value_exactly(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path / "a", "p.yaml", policy_yaml("p", """
        - {id: base, effect: allow, operations: [vdfs.read_file]}
        - {id: big, effect: deny, operations: [vdfs.read_file], condition: 'args.?length.orValue(0) > 100'}
    """))
    answer = can(load_set(tmp_path / "a"), "com.example.a", "vdfs.read_file")
    assert answer.answer == "yes" and not answer.unanalysable
    assert answer.witness.args.get("length", 0) <= 100
    (tmp_path / "b").mkdir()
    write(tmp_path / "b", "p.yaml", policy_yaml("p", """
        - {id: big, effect: allow, operations: [vdfs.read_file], condition: 'args.?length.orValue(500) > 1000'}
        - {id: d, effect: deny, operations: [vdfs.read_file],
           condition: '!args.?length.hasValue() || args.length > 2000'}
    """))
    answer = can(load_set(tmp_path / "b"), "com.example.a", "vdfs.read_file")
    assert answer.answer == "yes" and not answer.unanalysable and 1000 < answer.witness.args["length"] <= 2000
    (tmp_path / "c").mkdir()
    write(tmp_path / "c", "p.yaml", policy_yaml("p", """
        - {id: a, effect: allow, operations: [vdfs.read_file], condition: 'args.?length.orValue(0) > 10'}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: 'args.?length.orValue(99) > 5'}
    """))
    assert can(load_set(tmp_path / "c"), "com.example.a", "vdfs.read_file").answer == "never"


def test_analysis_says_other_optional_forms_are_outside_the_fragment(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: base, effect: allow, operations: [vdfs.read_file]}
        - {id: d, effect: deny, operations: [vdfs.read_file], condition: '[?args.?length].size() > 0'}
    """))
    policies = load_set(tmp_path)
    answer = can(policies, "com.example.a", "vdfs.read_file")
    assert answer.answer == "yes" and policies.decide(answer.witness.request()).allowed
    (reasons,) = answer.unanalysable.values()
    assert any("optional values" in r and "outside the analysable fragment" in r for r in reasons)


OPTIONAL_ATOMS = ["args.?length.orValue(0) > 5", "args.?length.orValue(200) > 100", "args.?offset.hasValue()",
                  "!args.?length.hasValue()", "args.?offset.orValue(1) % 2 == 0", 'path.under("/a")']


@pytest.mark.parametrize("seed", range(6))
def test_analysis_of_optional_conditions_is_sound(tmp_path, seed):
    """Random sets over the optional atoms: "never" must hold for every sampled request, witnesses must be
    confirmed by the engine."""
    rng = random.Random(1000 + seed)
    rules = []
    for i in range(rng.randint(1, 4)):
        cond = " && ".join(rng.sample(OPTIONAL_ATOMS, rng.randint(1, 2)))
        rules.append(f"- {{id: r{i}, effect: {rng.choice(['allow', 'allow', 'deny'])}, "
                     f"operations: [vdfs.read_file], condition: '{cond}'}}")
    write(tmp_path, "p.yaml", policy_yaml("p", "\n".join(rules) + "\n"))
    policies = load_set(tmp_path)
    answer = can(policies, "com.example.app", "vdfs.read_file")
    assert not answer.unanalysable  # every atom is inside the fragment
    if answer.answer == "yes":
        assert policies.decide(answer.witness.request()).allowed
    allowed = [r for r in samples(rng, 300) if policies.decide(r).allowed]
    if answer.answer == "never":
        assert not allowed, allowed[:1]


def test_optional_reads_of_guest_sized_args_are_metered_like_plain_reads():
    """`args.?data.orValue("")` is as large as the guest makes it: the cost estimate must not treat the
    optional as a small scalar (that would skip run-time metering of a regex scan over it)."""
    def compiled(source: str):
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=POLICY_COSTS)
        assert not errors
        return program

    plain, optional_read = compiled('args.data.matches("a+b")'), compiled('args.?data.orValue("").matches("a+b")')
    assert optional_read.metered == plain.metered is True
    assert optional_read.cost >= plain.cost
    loop = compiled('[1, 2, 3].all(i, args[?"s"].orValue("").contains("zz"))')
    assert loop.metered


def test_arg_types_helper_reports_value_reads():
    record = arg_types.args_type([operations.builtin().get("vdfs.read_file")])
    tree = ast.parse("args.?length.value() > 1 || args.?offset.orValue(0) > 1")
    assert [name for name, _ in arg_types.unguarded_optional_reads(tree, record)] == ["length"]
    guarded = ast.parse("has(args.length) && args.?length.value() > 1")
    assert arg_types.unguarded_optional_reads(guarded, record) == []


def test_optional_value_repr_and_equality():
    assert repr(optional("a")) == "optional.of('a')" and repr(NONE) == "optional.none()"
    assert OptionalValue(None, False) == NONE


def test_optional_syntax_errors_in_a_policy_file_point_at_the_token(tmp_path):
    text = policy_yaml("p", """
        - {id: a, effect: deny, operations: [vdfs.read_file], condition: 'args[?] == 1'}
        - id: b
          effect: deny
          operations: [vdfs.read_file]
          condition: >-
            has(args.path) &&
            [?args.?length, 1].size() == 2 && {?1: 2}.size() > 0
    """)
    write(tmp_path, "p.yaml", text)
    lines = text.splitlines()
    errors = [f for f in run_check([tmp_path], operations=OPS).findings if f.severity == "error"]
    assert [(f.location.line, f.location.column) for f in errors] == [
        (7, lines[6].index("] == 1") + 1), (13, lines[12].index("2}") + 1)]
    assert "unexpected ']'" in errors[0].message
    assert "map entry value marked with '?' must be an optional, not int" in errors[1].message


@pytest.mark.parametrize("expr", [
    "args.?n.orValue(0) > 100", "args.?n.orValue(0) < 100", "args.?n.orValue(0) + 1 == 2",
    "args.?n.or(optional.of(0)).value() < 100", "(args.l + [1])[0] < 100", "args.?n.orValue(args.?m.orValue(0)) < 100",
    "optional.of(0).or(args.?n).value() < 100 && args.?n.orValue(0) < 100",
])
@pytest.mark.parametrize("generate", [True, False])
def test_a_dyn_value_behind_an_optional_is_never_treated_as_the_defaults_type(expr: str, generate: bool) -> None:
    """`args.?n.orValue(0)` may be any JSON value: a bool there is not the int 1 (`true < 100` has no overload),
    so a deny reading it fails closed and an allow does not match. The type parameter bound to dyn stays dyn
    (orValue(optional(dyn), int) is dyn, list(dyn) + list(int) is list(dyn)): the overload is chosen at run
    time, never a static int one that Python would run on True."""
    from capengine.policy.functions import POLICY_ENVIRONMENT
    from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS

    program, errors = compile_expression(expr, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=POLICY_COSTS,
                                         generate=generate)
    assert program is not None, errors
    activation = {"path": "", "library": "", "operation": "", "extension": "",
                  "args": MappingProxyType({"n": True, "l": [True]})}
    with pytest.raises(CelError, match="no such overload"):
        program.evaluate(activation)
