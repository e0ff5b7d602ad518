"""CEL cost: worst cases estimated at load time, work metered at run time, failing closed (issue 11 item 8).

A guest controls the size of what a condition reads (a 1 MiB `args.data`): counting loop steps alone let one
evaluation scan megabytes thousands of times. Conditions whose worst case exceeds the budget are refused when
the policy loads; conditions whose cost the estimate cannot bound are metered by the work they do.
"""

from __future__ import annotations

import contextlib

import pytest
from helpers import load_set, policy_yaml, request, write

from capengine.cel import cost
from capengine.cel.compiler import CostModel, compile_expression
from capengine.cel.values import CelError
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS, load_paths
from capengine.policy.model import Request

ISSUE_EXPRESSIONS = [
    'args.data.split(" ").exists(w, args.data.indexOf(w + "BEGIN") >= 0)',
    'args.data.split(" ").exists(w, args.data.matches(w + "BEGIN"))',
]
HOSTILE = "a " * (512 * 1024)  # 1 MiB of short words: half a million loop steps, each scanning 1 MiB


def compile_unchecked_cost(source: str):
    """Compile as the loader would, but without refusing the worst case: the run-time meter must hold."""
    model = CostModel(POLICY_COSTS.variables, POLICY_COSTS.unknown, limit=None)
    program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True, costs=model)
    assert not errors, errors
    return program


@pytest.mark.parametrize("source", ISSUE_EXPRESSIONS)
def test_quadratic_scans_are_refused_at_load_with_their_estimate(tmp_path, source):
    write(tmp_path, "p.yaml", policy_yaml("p", f"""
        - id: scan
          effect: deny
          operations: [app.scan]
          condition: '{source}'
    """))
    result = load_paths([tmp_path])
    (finding,) = result.findings
    assert finding.severity == "error" and finding.code == "cel-cost"
    line = (tmp_path / "p.yaml").read_text().splitlines()[9]
    assert (finding.location.line, finding.location.column) == (10, line.index(".exists(") + 2)  # the loop
    assert "worst-case cost" in finding.message and "exceeds the budget of 100,000" in finding.message


@pytest.mark.parametrize("source", ISSUE_EXPRESSIONS)
def test_run_time_budget_counts_work_and_fails_closed(source):
    program = compile_unchecked_cost(source)
    assert program.metered
    activation = Request.parse("com.example.app", "test.ping", args={"data": HOSTILE}).activation()
    with pytest.raises(cost.BudgetExceeded, match="cost budget of 100000 units exceeded"):
        program.evaluate(activation)
    small = Request.parse("com.example.app", "test.ping", args={"data": "x BEGIN"}).activation()
    assert program.evaluate(small) in (True, False)


def test_budget_exhaustion_cannot_be_absorbed_by_or(tmp_path):
    """`costly || true` would be true under CEL's error absorption: exhaustion ends the evaluation instead."""
    program = compile_unchecked_cost(f"{ISSUE_EXPRESSIONS[0]} || true")
    activation = Request.parse("com.example.app", "test.ping", args={"data": HOSTILE}).activation()
    with pytest.raises(CelError):
        program.evaluate(activation)
    program = compile_unchecked_cost(f"args.data.split(' ').exists(w, {ISSUE_EXPRESSIONS[0]} || true)")
    with pytest.raises(CelError):
        program.evaluate(activation)


def test_bounded_scans_of_a_large_value_load_and_decide(tmp_path):
    """Twenty scans of at most 1 MiB fit the budget: such a rule loads and decides on a 1 MiB payload."""
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: ping, effect: allow, operations: [app.scan]}
        - id: many-scans
          effect: deny
          operations: [app.scan]
          condition: '[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].exists(i, args.data.contains(string(i)))'
    """))
    ps = load_set(tmp_path)
    assert ps.decide_raw(request("app.scan", data="x" * 1024 * 1024)).allowed
    denied = ps.decide_raw(request("app.scan", data="x" * 1024 * 1024 + "17"))
    assert not denied.allowed and denied.rules == ("p/many-scans",) and not denied.errors


def test_string_tests_on_bounded_variables_are_not_metered():
    """The common conditions (path/library tests) are proved cheap statically and pay no run-time metering."""
    for source in ('path.under("/photos") && library == "x"', 'path.matches("(?i)\\\\.png$")',
                   'operation.startsWith("vdfs.") || path.glob("/**/.git/**")'):
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                             costs=POLICY_COSTS)
        assert not errors and program is not None
        assert not program.metered and program.cost is not None and program.cost < 100


def test_reading_guest_sized_values_is_metered_and_estimated_by_size():
    program, errors = compile_expression('args.name.contains("sync.")', POLICY_DECLS, POLICY_ENVIRONMENT,
                                         total=True, costs=POLICY_COSTS)
    assert not errors and program.metered
    assert program.cost >= 1024  # one KiB per unit of a 1 MiB string
    names = [f"v{i}" for i in range(20)]  # 20 doublings of a 4 KiB path: 4 GiB, with no loop and no args
    exploding = 'cel.bind(v0, path + path, '
    exploding += "".join(f"cel.bind({b}, {a} + {a}, " for a, b in zip(names, names[1:]))
    exploding += f'{names[-1]}.contains("x"){")" * len(names)}'
    program, errors = compile_expression(exploding, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                         costs=POLICY_COSTS)
    assert program is None and "worst-case cost" in errors[0].message  # sizes double at every bind


def test_bundled_policies_fit_the_budget():
    result = load_paths(["policies"])
    assert not [f for f in result.findings if f.code == "cel-cost"]


@pytest.mark.parametrize("condition", [
    'args.name.startsWith("sync.")', 'args.name.endsWith(".tmp")', 'args.kind == "ocr-text"',
    '"x" != args.kind', 'args.size < 1000', 'args.kind in ["a", "b", "c"]', 'size(args.data) > 3',
    'has(args.length) && args.length > 16777216',
])
def test_comparing_a_guest_sized_value_with_a_literal_is_not_guest_sized_work(condition):
    """Equality, ordering, prefix/suffix tests and `in [literals]` stop at the literal's length: reading a
    field to compare it with a literal is proven cheap, so it runs unmetered, and stays cheap on 1 MiB."""
    program, errors = compile_expression(condition, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                         costs=POLICY_COSTS)
    assert not errors and not program.metered and program.cost < 100
    huge = "s" * (1 << 20)
    activation = {"extension": "e", "operation": "o", "path": "/", "library": "",
                  "args": {"name": huge, "kind": huge, "size": huge, "data": huge, "length": 1 << 30}}
    with contextlib.suppress(CelError):  # a string compared with an int is an error, decided in O(1) too
        program.evaluate(activation)


@pytest.mark.parametrize("condition", [
    'args.data.contains("x")', 'args.a == args.b', 'args.data + "x" == "y"', 'args.data.matches("a+")',
    '"x" in args.list',
])
def test_work_that_grows_with_a_guest_sized_value_stays_metered(condition):
    program, errors = compile_expression(condition, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                         costs=POLICY_COSTS)
    assert not errors and program.metered
