"""The rule index never changes a decision: the indexed and the plain evaluation of the same set agree on
every generated request (decision, deciding rule, message and the errors reported); and neither does code
generation (cel/codegen.py): the indexed set with generated conditions agrees with the plain set evaluated
through the closure compiler alone."""

from __future__ import annotations

import pytest
from helpers import LIB
from hypothesis import given, settings
from hypothesis import strategies as st

from capengine.cel.compiler import compile_expression
from capengine.policy.engine import PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS
from capengine.policy.model import Location, Policy, Request, Rule
from capengine.policy.rule_index import guard_of

OTHER = "00000000-0000-4000-8000-000000000001"
SEGMENTS = ["a", "b", "c", "photos", "private", "x.png", "caf\u00e9"]
# (id, effect, condition); args.n / args.kind are untyped here on purpose (programs are compiled directly,
# so every value type reaches the conditions, including the ones typed args would refuse at load).
RULES = [
    ("d-private", "deny", 'path.glob("/photos/**/private/**")'),
    ("d-under-c", "deny", 'path.under("/a/c") && args.n > 3'),
    ("d-kind", "deny", 'args.kind == "secret"'),
    ("d-lib", "deny", f'library == "{OTHER}" && path.under("/b")'),
    ("d-or", "deny", 'path.under("/c/a") || args.n == 7'),
    ("a-a", "allow", 'path.under("/a")'),
    ("a-ab", "allow", 'path.under("/a/b") && args.n < 2'),
    ("a-eq", "allow", f'path == "/b/a" && library == "{LIB}"'),
    ("a-glob", "allow", 'path.glob("/c/*/x.png")'),
    ("a-kind-in", "allow", 'args.kind in ["doc", 3]'),
    ("a-has", "allow", "has(args.n) && args.n == 4"),
    ("d-has", "deny", 'args.kind == "x" && has(args.kind)'),
    ("a-lib", "allow", f'library == "{LIB}" && args.n >= 5'),
    ("a-root", "allow", 'path == "/" || path.under("/photos/b")'),
    ("a-bad", "allow", 'path.under("/b") && int(args.kind) > 0'),
    ("a-nfd", "allow", 'path.glob("/photos/cafe\u0301/**")'),
    ("a-none", "allow", None),
]


@pytest.fixture(scope="module")
def sets() -> tuple[PolicySet, PolicySet]:
    where = Location("index-test.yaml", 1, 1)
    rules = tuple(Rule("p", rid, effect, ("vdfs.read_file",), cond, None, where)
                  for rid, effect, cond in RULES)
    policy = Policy("p", "", ("com.example.*",), rules, (), where)
    programs, closures = {}, {}
    for rule in rules:
        if rule.condition is not None:
            program, errors = compile_expression(rule.condition, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                                 costs=POLICY_COSTS)
            assert program is not None, errors
            programs[rule.qualified_id] = program
            closures[rule.qualified_id], _ = compile_expression(rule.condition, POLICY_DECLS, POLICY_ENVIRONMENT,
                                                                total=True, costs=POLICY_COSTS, generate=False)
    assert sum(p.generated is not None for p in programs.values()) >= 12  # the comparison is not vacuous
    indexed = PolicySet([policy], programs, "r", index_threshold=0)
    plain = PolicySet([policy], closures, "r", index_threshold=1_000_000)
    return indexed, plain


arg_values = st.one_of(st.integers(-2, 9), st.sampled_from(["doc", "secret", "3", ""]), st.booleans(),
                       st.floats(allow_nan=False, min_value=-1, max_value=8), st.none(),
                       st.lists(st.integers(0, 3), max_size=2))
requests = st.builds(
    lambda segs, lib, args: Request.parse("com.example.app", "vdfs.read_file", "/" + "/".join(segs), lib, args),
    st.lists(st.sampled_from(SEGMENTS), max_size=4), st.sampled_from([LIB, OTHER, ""]),
    st.dictionaries(st.sampled_from(["n", "kind", "other"]), arg_values, max_size=3))


@settings(max_examples=2000, deadline=None)
@given(request=requests)
def test_index_agrees_with_plain_evaluation(sets: tuple[PolicySet, PolicySet], request: Request) -> None:
    indexed, plain = sets
    assert indexed.decide(request) == plain.decide(request)


def test_the_index_really_selects(sets: tuple[PolicySet, PolicySet]) -> None:
    """Not a vacuous index: a request under /a skips the rules guarded on other directories."""
    indexed, _ = sets
    plan = indexed.plan("com.example.app", "vdfs.read_file")
    assert plan.index is not None
    denies, allows = plan.select(Request.parse("com.example.app", "vdfs.read_file", "/a/x.png", LIB, {}))
    chosen = {r.rule.id for r in [*denies, *allows]}
    assert "a-a" in chosen and "a-none" in chosen
    assert not chosen & {"d-private", "d-under-c", "a-ab", "a-eq", "a-glob", "a-bad"}


@pytest.mark.parametrize(("condition", "guard"), [
    ('path.under("/photos/2024")', ("under", ("/photos/2024",))),
    ('path.glob("/photos/*/raw/**")', ("under", ("/photos",))),
    ('path.glob("/cafe\u0301/**")', ("under", ("/caf\u00e9",))),  # NFC, as glob() normalises its pattern
    ('args.size > 1 && path.under("/a") && path.under("/a/b/c")', ("under", ("/a/b/c",))),
    ('library == "x" && args.kind == "a"', ("library", ("x",))),
    ('args.kind in ["a", 1]', ("arg", ((str, "a"), (int, 1)))),
    ('path.under("/a") || path.under("/b")', None),
    ('!path.under("/a")', None),
    ('path.glob("/**/x")', None),
    ('path == "/"', None),
    ('args.flag == true', None),
])
def test_guards(condition: str, guard: tuple[str, tuple[object, ...]] | None) -> None:
    from capengine.cel import ast
    from capengine.policy.functions import POLICY_ENVIRONMENT

    found = guard_of(ast.parse(condition, POLICY_ENVIRONMENT.namespaced))
    assert (None if found is None else (found.kind, found.keys)) == guard
