"""The rule index never changes a decision: the indexed and the plain evaluation of the same set agree on
every generated request (decision, deciding rule, message and the errors reported); and neither does code
generation (cel/codegen.py): the indexed set with generated conditions agrees with the plain set evaluated
through the closure compiler alone."""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import pytest
from helpers import LIB
from hypothesis import given, settings
from hypothesis import strategies as st

from capengine.cel.compiler import compile_expression
from capengine.cel.values import CelError
from capengine.policy import select_codegen
from capengine.policy.engine import PolicySet
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS
from capengine.policy.model import Location, Policy, Request, Rule
from capengine.policy.rule_index import RuleIndex, guard_of

OTHER = "00000000-0000-4000-8000-000000000001"
SEGMENTS = ["a", "b", "c", "photos", "private", "x.png", "caf\u00e9", "cafe\u0301", "m1", "m10", "A", "gif", "a.gif",
            "x.tmp", "", ".", "ca"]
# paths aimed at the edges of the rules' guards: a prefix without its segment, a suffix one character off,
# NFD/NFC, case, `//` and `.` (canonicalised away by Request), the regex quantifiers and escapes above
EDGE_PATHS = ["/m1/a.gif", "/m1/ab.gif", "/m1s/a", "/m1/a", "/m1/b", "/m1", "/m1a/b", "/m10/x", "/m10/.", "/m10/x.gif",
              "/m1d/x", "/gif", "/a.gif", "/photos/caf\u00e9/p", "/photos/cafe\u0301/x", "/photos/ca", "/photos/cat",
              "/photos/c", "/A/b", "/a/b", "/a/b/c", "/a/bc", "/a//b/c", "/a/./b", "/x.png/a", "/xApng/a", "/x.png",
              "/c/x.png", "/c/x.pngx", "/c/ax.png", "/b/x.tmp", "/a/x.tmp", "/x.tmp", "/q/caf\u00e9", "/q/cafe\u0301",
              "/c/a", "/c/a/b", "/b/a", "/b", "/", ""]
HUGE = [2**63 - 1, 2**63, 2**64 - 1, -(2**63), 9223372036854775806]
# (id, effect, condition); args.n / args.kind are untyped here on purpose (programs are compiled directly,
# so every value type reaches the conditions, including the ones typed args would refuse at load).
RULES = [
    # anchored regex prefixes (directory guards), and patterns that must not be indexed
    ("d-re", "deny", 'path.matches("^/m1/[a-z]+[.]gif$")'),
    ("a-re-err", "allow", 'path.matches("^/a/b/.*") && int(args.kind) > 0'),
    ("d-re-or", "deny", 'path.matches("^/c/x[.]png") || args.kind == "doc"'),
    ("a-re-global", "allow", 'matches(path, "^/m1/(a|b)")'),
    ("d-re-bar", "deny", 'path.matches("^/m10/x|gif$")'),
    ("a-re-quant", "allow", 'path.matches("^/m1/?a") && args.n != 2'),  # the `/` is optional
    ("a-re-class", "allow", 'path.matches("^/b/[|]|c")'),
    ("a-re-uni", "allow", 'path.matches("^/photos/caf\u00e9/.") && args.n != 0'),
    ("a-re-nfd", "allow", 'path.matches("^/photos/cafe\u0301/")'),
    ("a-re-dslash", "allow", 'path.matches("^/a//b")'),
    ("a-re-case", "allow", 'path.matches("^/A/b")'),
    ("a-re-digit", "allow", r'path.matches("^/m1\\d/x")'),
    ("a-re-esc", "allow", r'path.matches("^/x\\.png/a")'),
    ("a-sw", "allow", 'path.startsWith("/photos/ca") && args.n < 3'),
    # integer ranges and one-sided bounds on args
    ("d-range", "deny", 'args.n >= 2 && args.n < 2 + 3 && size(path) > 8'),
    ("a-range", "allow", '3 <= args.n && args.n <= 5 && path.under("/c")'),
    ("a-range-neg", "allow", 'args.n > -3 && args.n <= -1 && has(args.n)'),
    ("d-mirror", "deny", '5 > args.n && args.n >= 4 && int(args.kind) == 1'),
    ("d-huge", "deny", 'args.n >= 9223372036854775806 && size(path) > 2'),
    ("a-below", "allow", 'args.n < 0 || path.endsWith(".gif")'),
    # disjunctions of guarded sides, suffixes
    ("d-above-or", "deny", 'has(args.n) && args.n > 7 || path.endsWith("/x.png") && args.kind == "secret"'),
    ("a-or-err", "allow", '(path.under("/b") && int(args.kind) > 0) || (path.endsWith(".tmp") && args.n == 1)'),
    ("d-or-err", "deny", 'path.endsWith("x.png") && int(args.kind) > 2 || args.kind in ["doc", 4]'),
    ("d-suffix-uni", "deny", 'path.endsWith("caf\u00e9") && args.n > 100'),
    ("a-suffix-nfd", "allow", 'path.endsWith("cafe\u0301")'),
    ("d-nested-or", "deny", '(path.under("/q") || args.n == 3) && size(path) > 0'),  # no guard: `||` inside
    ("a-dup", "allow", 'args.n == 1 || args.n in [1, 6] || args.n > 10 || path.under("/m1") || path.under("/m1")'),
    ("a-or-mixed", "allow", 'library == "' + OTHER + '" && args.n > 1 || path.matches("^/m10/[.]?") || args.n < -4'),
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
    ("a-empty", "allow", 'path == "" && args.n != 5'),  # no path: no directory probe can select it
    ("a-deep", "allow", 'path.under("/a/b/c") && args.n != 1'),
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
    assert sum(p.generated is not None for p in programs.values()) >= 30  # the comparison is not vacuous
    indexed = PolicySet([policy], programs, "r", index_threshold=0)
    plain = PolicySet([policy], closures, "r", index_threshold=1_000_000)
    return indexed, plain


arg_values = st.one_of(st.integers(-6, 12), st.integers(-6, 12), st.sampled_from(HUGE),
                       st.sampled_from(["doc", "secret", "3", "1", ""]), st.booleans(),
                       st.floats(allow_nan=False, min_value=-5, max_value=12), st.sampled_from([3.0, 4.0, -1.0, 1.0]),
                       st.none(), st.lists(st.integers(0, 3), max_size=2),
                       st.dictionaries(st.sampled_from(["n", "a"]), st.integers(0, 2), max_size=1))
paths = st.one_of(st.just(""), st.lists(st.sampled_from(SEGMENTS), max_size=4).map(lambda s: "/" + "/".join(s)),
                  st.sampled_from(EDGE_PATHS))
requests = st.builds(
    lambda path, lib, args: Request.parse("com.example.app", "vdfs.read_file", path, lib, args),
    paths, st.sampled_from([LIB, OTHER, ""]),
    st.dictionaries(st.sampled_from(["n", "kind", "other"]), arg_values, max_size=3))


@settings(max_examples=2000, deadline=None)
@given(request=requests)
def test_index_agrees_with_plain_evaluation(sets: tuple[PolicySet, PolicySet], request: Request) -> None:
    indexed, plain = sets
    assert indexed.decide(request) == plain.decide(request)


@settings(max_examples=3000, deadline=None)
@given(request=requests)
def test_every_rule_the_index_skips_is_false(sets: tuple[PolicySet, PolicySet], request: Request) -> None:
    """Per rule, so that no earlier match masks a wrong skip: the candidates decide() evaluates (the plan's
    generated selector) come as deny rules then allow rules, each in policy order without repeats, and every
    rule left out evaluates to exactly false (not true, not an error) on the request."""
    indexed, plain = sets
    plan = indexed.plan(request.extension, request.operation)
    assert plan.index is not None and plan.select.__code__.co_filename == "<rule index>"  # the generated one
    denies, allows = plan.select(request)
    assert all(r.deny for r in denies) and not any(r.deny for r in allows)
    for side in (denies, allows):
        assert [r.order for r in side] == sorted({r.order for r in side})
    orders = [r.order for r in [*denies, *allows]]
    activation = request.activation()
    for rule in plain.rules:
        if rule.order not in orders:
            assert rule.program is not None, rule.rule.id
            try:
                value = rule.program.evaluate(activation)
            except CelError as exc:
                value = exc
            assert value is False, (rule.rule.id, value)


RAW_PATHS = ["", "/", "a", "a/b", "/a//b", "/a//b/c", "/a/", "/a/b/", "/a/b/c/d/e", "//a", "/a/./b", "x.png",
             "/photos/cafe\u0301/x", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", "/c/x.png/", "/m1/", "/m10/x.gif"]


@settings(max_examples=2000, deadline=None)
@given(request=requests, raw=st.one_of(st.none(), st.sampled_from(RAW_PATHS),
                                       st.lists(st.sampled_from([*SEGMENTS, "/"]), max_size=6).map("/".join)))
def test_the_generated_selector_is_the_reference(sets: tuple[PolicySet, PolicySet], request: Request,
                                                 raw: str | None) -> None:
    """select_codegen's function returns exactly RuleIndex.select's rules split by effect, for canonical
    requests and for any path string at all (its directory probes skip depths by counting '/', which must not
    depend on the path being canonical), in both its shapes: directory probes unrolled, and in a loop."""
    indexed, _ = sets
    index = indexed.plan(request.extension, request.operation).index
    assert index is not None
    probe = request if raw is None else SimpleNamespace(path=raw, library=request.library, args=request.args)
    expected = select_codegen.split(index.select(probe.path, probe.library, probe.args))
    assert indexed.plan(request.extension, request.operation).select(probe) == expected
    assert select_codegen.generate(index, unroll=0)(probe) == expected


@attrs.frozen
class _Rule:
    order: int
    deny: bool
    guard_node: object


ENDINGS = ['path.endsWith("/x1.tmp")', 'path.endsWith("a/x22.tmp")', 'path.endsWith("1.tmp") && args.n > 1',
           'path.endsWith(".tmp") || path.under("/a/x1.tmp")', 'path.endsWith("2.tmp") || args.n < 0']


@settings(max_examples=500, deadline=None)
@given(path=st.lists(st.sampled_from(["a", "x1.tmp", "x22.tmp", "1.tmp", "2.tmp", ".tmp", "tmp", "x1.tm", "b"]),
                     max_size=4).map("/".join), n=st.one_of(st.none(), st.integers(-2, 3), st.just("s")))
def test_the_selector_on_suffixes_with_a_common_ending(path: str, n: object) -> None:
    """The suffix probes sit behind one test of the suffixes' common ending (`.tmp` here): a path that ends
    with a suffix is never turned away by it."""
    from capengine.cel import ast
    from capengine.policy.functions import POLICY_ENVIRONMENT

    rules = [_Rule(k, k % 2 == 1, ast.parse(c, POLICY_ENVIRONMENT.namespaced)) for k, c in enumerate(ENDINGS)]
    index = RuleIndex(rules)
    assert not index.always and index.suffix_lengths == [4, 5, 7, 9]
    for probe in (SimpleNamespace(path=path, library="", args={} if n is None else {"n": n}),
                  SimpleNamespace(path="/" + path, library="", args={})):
        expected = select_codegen.split(index.select(probe.path, probe.library, probe.args))
        assert select_codegen.generate(index)(probe) == expected


def test_the_selector_is_specialised(sets: tuple[PolicySet, PolicySet]) -> None:
    """Not a vacuous specialisation: a set of path rules only probes directories (no library, suffix or
    argument probes), and one request hitting one bucket gets that bucket's pair itself (nothing rebuilt)."""
    _, plain = sets
    rules = [r for r in plain.rules if r.rule.id in ("a-a", "a-ab", "d-under-c", "d-private", "a-deep")]
    index = RuleIndex(rules)
    select = select_codegen.generate(index)
    names = set(select.__code__.co_names)
    assert {n for n in names if n.startswith("_dir")} and not {n for n in names if n.startswith(("_suffix",
                                                                                                 "_library",
                                                                                                 "_field"))}
    request = SimpleNamespace(path="/photos/x/private/y", library=LIB, args={})
    assert select(request) is select(request)
    assert [r.rule.id for r in select(request)[0]] == ["d-private"]


def test_the_index_really_selects(sets: tuple[PolicySet, PolicySet]) -> None:
    """Not a vacuous index: a request under /a skips the rules guarded on other directories."""
    indexed, _ = sets
    plan = indexed.plan("com.example.app", "vdfs.read_file")
    assert plan.index is not None
    denies, allows = plan.select(Request.parse("com.example.app", "vdfs.read_file", "/a/x.png", LIB, {}))
    chosen = {r.rule.id for r in [*denies, *allows]}
    assert "a-a" in chosen and "a-none" in chosen
    assert not chosen & {"d-private", "d-under-c", "a-ab", "a-eq", "a-glob", "a-bad"}


UNGUARDED = {"d-re-bar", "a-re-class", "a-re-quant", "a-re-digit", "a-root", "a-none", "d-or-err",
             "d-nested-or", "a-empty"}


def test_the_new_shapes_are_indexed(sets: tuple[PolicySet, PolicySet]) -> None:
    """Regex prefixes, ranges, one-sided bounds, suffixes and guarded disjunctions are selected by the index,
    not evaluated on every call: else the differential test above would not exercise them."""
    indexed, _ = sets
    plan = indexed.plan("com.example.app", "vdfs.read_file")
    assert plan.index is not None
    unguarded = {r.rule.id for r in plan.index.always}
    assert unguarded == UNGUARDED, unguarded
    denies, allows = plan.select(Request.parse("com.example.app", "vdfs.read_file", "/q/y.txt", LIB, {"n": 9}))
    chosen = {r.rule.id for r in [*denies, *allows]}
    # the unguarded four, LIB's library guard, the bound `n > 7` that 9 passes, and the rules on the absent `kind`
    assert chosen == UNGUARDED | {"a-lib", "d-above-or", "d-kind", "d-or-err",
                      "d-re-or", "a-kind-in"}, chosen
    denies, allows = plan.select(Request.parse("com.example.app", "vdfs.read_file", "/m1/q/a.gif", OTHER,
                                               {"n": "x", "kind": 3}))
    chosen = {r.rule.id for r in [*denies, *allows]}
    # a string n selects the rules bounding it (the comparison is an error, not false), not `args.n == 4`;
    # the regex prefix /m1, the suffix .gif, `kind in [.., 3]`
    assert chosen == UNGUARDED | {"d-re", "a-re-global", "a-dup", "a-below",
                      "d-range", "a-range-neg", "d-mirror", "d-huge", "d-above-or", "a-or-mixed", "a-kind-in"}, chosen


@pytest.mark.parametrize(("condition", "guards"), [
    ('path.under("/photos/2024")', [("under", ("/photos/2024",))]),
    ('path.glob("/photos/*/raw/**")', [("under", ("/photos",))]),
    ('path.glob("/cafe\u0301/**")', [("under", ("/caf\u00e9",))]),  # NFC, as glob() normalises its pattern
    ('args.size > 1 && path.under("/a") && path.under("/a/b/c")', [("under", ("/a/b/c",))]),
    ('library == "x" && args.kind == "a"', [("library", ("x",))]),
    ('args.kind in ["a", 1]', [("arg", ((str, "a"), (int, 1)))]),
    ('path.under("/a") || path.under("/b")', [("under", ("/a",)), ("under", ("/b",))]),
    ('path.under("/a") || size(path) > 3', None),
    ('!path.under("/a")', None),
    ('path.glob("/**/x")', None),
    ('path == "/"', None),
    ('path == ""', None),
    ('args.flag == true', None),
    # anchored regexes: the literal prefix up to its last '/', conservatively
    ('path.matches("^/m5/[a-z]+[.]gif$")', [("under", ("/m5",))]),
    ('matches(path, "^/a/b/c")', [("under", ("/a/b",))]),
    ('path.matches("^/a\\\\.b/c/")', [("under", ("/a.b/c",))]),
    ('path.matches("^/a/bc*/")', [("under", ("/a",))]),  # `c*` may be empty: the literal stops before it
    ('path.matches("^/a/b?/")', [("under", ("/a",))]),
    ('path.matches("^/a/b{0}/")', [("under", ("/a",))]),
    ('path.matches("^/a/(x|y)/")', [("under", ("/a",))]),
    ('path.matches("^/a/x|/b/")', None),  # the `^` binds the first branch only
    ('path.matches("^/a/[|]|/b/")', None),
    ('path.matches("^/a/\\\\|/b/")', [("under", ("/a/|/b",))]),  # an escaped `|` is a literal
    ('path.matches("^/a/\\\\\\\\|/b/")', None),  # an escaped backslash, then a top-level `|`
    ('path.matches("/a/b/")', None),  # not anchored
    ('path.matches("(?i)^/a/b/")', None),
    ('path.matches("^(?i)/a/b/")', None),
    ('path.matches("^/a\\\\Q/x/\\\\E/")', None),
    ('path.matches("^/a/[[:alpha:]]/")', None),
    ('path.matches("^/ab")', None),  # only the root
    ('path.startsWith("/a/bc")', [("under", ("/a",))]),
    ('path.endsWith(".gif")', [("suffix", (".gif",))]),
    ('path.endsWith("")', None),
    # integer bounds on args
    ('args.n >= 3 && args.n < 3 + 3', [("arg", ((int, 3), (int, 4), (int, 5)))]),
    ('3 < args.n && 5 >= args.n', [("arg", ((int, 4), (int, 5)))]),
    ('args.n > -2 && args.n <= 0', [("arg", ((int, -1), (int, 0)))]),
    ('args.n >= 0 && args.n < 65', [("above", (0,))]),  # more than 64 values: one side only
    ('args.n > 10', [("above", (11,))]),
    ('args.n <= 10', [("below", (11,))]),
    ('args.n >= 3.0 && args.n < 5', [("below", (5,))]),  # a double bound is not an int bound
    ('args.n >= 3u && args.n < 5u', None),
    ('args.n < 9223372036854775807 + 1', None),  # overflow: an error, not a bound
    ('has(args.offset) && args.offset > 5 || path.endsWith("/x.tmp")', [("above", (6,)), ("suffix", ("/x.tmp",))]),
])
def test_guards(condition: str, guards: list[tuple[str, tuple[object, ...]]] | None) -> None:
    from capengine.cel import ast
    from capengine.policy.functions import POLICY_ENVIRONMENT

    found = guard_of(ast.parse(condition, POLICY_ENVIRONMENT.namespaced))
    assert (None if found is None else [(g.kind, g.keys) for g in found]) == guards


def test_bound_slices_come_back_in_policy_order() -> None:
    """One-sided bounds are looked up in lists sorted by bound: what select() returns is still policy order,
    each rule once, even when nothing else is selected; and so is what the generated selector returns."""
    from capengine.cel import ast
    from capengine.policy.functions import POLICY_ENVIRONMENT

    sources = ["args.n > 8", "args.n > 1 || args.n > 2", "args.n < 20", "args.n >= 0", "args.n < 3"]
    index = RuleIndex([_Rule(k, k == 3, ast.parse(s, POLICY_ENVIRONMENT.namespaced)) for k, s in enumerate(sources)])
    select = select_codegen.generate(index)
    assert not index.always
    for n, expected in ((9, [0, 1, 2, 3]), (25, [0, 1, 3]), (-5, [2, 4]), (2, [1, 2, 3, 4]), (-1, [2, 4]),
                        ("x", [0, 1, 2, 3, 4]), (None, [0, 1, 2, 3, 4])):
        args = {} if n is None else {"n": n}
        assert [r.order for r in index.select("/a", "", args)] == expected, n  # 25: lower bounds only, etc.
        denies, allows = select(SimpleNamespace(path="/a", library="", args=args))
        assert ([r.order for r in denies], [r.order for r in allows]) == ([3] if 3 in expected else [],
                                                                          [k for k in expected if k != 3]), n


@pytest.mark.parametrize(("condition", "guards"), [
    ('int(args.kind) > 0 && path.under("/a")', None),  # int() of a long string may spend the budget first
    ('path.under("/a") && int(args.kind) > 0', [("under", ("/a",))]),
    ('has(args.n) && library == "x" && path.endsWith(".x") && int(args.kind) > 0', [("library", ("x",))]),
    # `"<100 MB>" > 1` is charged by size before the path is tested: only n's bound (a string n is selected)
    ('args.n > 1 && path.under("/a")', [("above", (2,))]),
    ('has(args.n) && args.n >= 2 && args.n < 4 && int(args.kind) > 0', [("arg", ((int, 2), (int, 3)))]),
    ('args.n >= 2 && int(args.kind) > 0 && args.n < 4', [("above", (2,))]),
    ('args.m >= 2 && args.n >= 2 && args.n < 4', [("above", (2,))]),  # only m's bound leads
    ('args.kind == "x" && int(args.kind) > 0', None),  # equality charges a long string's size
    ('path.under("/a") || int(args.kind) > 0 && path.under("/b")', None),
])
def test_metered_guards(condition: str, guards: list[tuple[str, tuple[object, ...]]] | None) -> None:
    """A metered condition's budget error is absorbed by no `&&`: only guards that nothing unbounded can
    precede count."""
    from capengine.cel import ast
    from capengine.policy.functions import POLICY_ENVIRONMENT

    found = guard_of(ast.parse(condition, POLICY_ENVIRONMENT.namespaced), metered=True)
    assert (None if found is None else [(g.kind, g.keys) for g in found]) == guards


def test_a_spent_budget_before_a_false_guard_still_denies() -> None:
    """A guest-sized value can exhaust a metered condition's budget in a conjunct evaluated before the guard;
    the plain evaluation then fails closed (the deny matches), and so must the indexed one."""
    where = Location("budget.yaml", 1, 1)
    sources = ['int(args.kind) > 0 && path.under("/a")', 'args.n > 1 && path.under("/a")',
               'args.kind == "x" && path.under("/a")']
    for source in sources:
        rules = tuple(Rule("p", f"r{k}", "deny" if k == 0 else "allow", ("vdfs.read_file",),
                           source if k == 0 else f'path.under("/z{k}") || path == "/b"', None, where)
                      for k in range(12))
        programs = {}
        for rule in rules:
            program, errors = compile_expression(rule.condition, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                                 costs=POLICY_COSTS)
            assert program is not None, errors
            programs[rule.qualified_id] = program
        policy = Policy("p", "", ("com.example.*",), rules, (), where)
        indexed = PolicySet([policy], programs, "r", index_threshold=0)
        plain = PolicySet([policy], programs, "r", index_threshold=1_000_000)
        huge = "1" * 110_000_000  # ~107,000 units at one per KiB: past the 100,000-unit budget
        for args in ({"kind": huge}, {"n": huge}, {"kind": huge, "n": huge}):
            request = Request.parse("com.example.app", "vdfs.read_file", "/b", LIB, args)
            assert indexed.decide(request) == plain.decide(request), (source, list(args))
        request = Request.parse("com.example.app", "vdfs.read_file", "/b", LIB, {"kind": huge, "n": huge})
        decision = plain.decide(request)
        if programs["p/r0"].metered:
            assert not decision.allowed and "budget" in decision.errors[0].message, (source, decision)
