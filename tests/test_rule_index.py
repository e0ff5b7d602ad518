"""The rule index never changes a decision: the indexed and the plain evaluation of the same set agree on
every generated request (decision, deciding rule, message and the errors reported)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import LIB, policy_yaml, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths
from capengine.policy.model import Request
from capengine.policy.rule_index import guard_of

OTHER = "00000000-0000-4000-8000-000000000001"
SEGMENTS = ["a", "b", "c", "photos", "private", "x.png"]
RULES = """
- {id: d-private, effect: deny, operations: [vdfs.read_file], condition: 'path.glob("/photos/**/private/**")'}
- {id: d-under-c, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/a/c") && args.n > 3'}
- {id: d-kind, effect: deny, operations: [vdfs.read_file], condition: 'args.kind == "secret"'}
- {id: d-lib, effect: deny, operations: [vdfs.read_file], condition: 'library == "%(other)s" && path.under("/b")'}
- {id: d-or, effect: deny, operations: [vdfs.read_file], condition: 'path.under("/c/a") || args.n == 7'}
- {id: a-a, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/a")'}
- {id: a-ab, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/a/b") && args.n < 2'}
- {id: a-eq, effect: allow, operations: [vdfs.read_file], condition: 'path == "/b/a" && library == "%(lib)s"'}
- {id: a-glob, effect: allow, operations: [vdfs.read_file], condition: 'path.glob("/c/*/x.png")'}
- {id: a-kind-in, effect: allow, operations: [vdfs.read_file], condition: 'args.kind in ["doc", 3]'}
- {id: a-has, effect: allow, operations: [vdfs.read_file], condition: 'has(args.n) && args.n == 4'}
- {id: d-has, effect: deny, operations: [vdfs.read_file], condition: 'args.kind == "x" && has(args.kind)'}
- {id: a-lib, effect: allow, operations: [vdfs.read_file], condition: 'library == "%(lib)s" && args.n >= 5'}
- {id: a-root, effect: allow, operations: [vdfs.read_file], condition: 'path == "/" || path.under("/photos/b")'}
- {id: a-bad, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/b") && int(args.kind) > 0'}
- {id: a-none, effect: allow, operations: [vdfs.read_file]}
""" % {"other": OTHER, "lib": LIB}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[PolicySet, PolicySet]:
    directory: Path = tmp_path_factory.mktemp("policies")
    write(directory, "p.yaml", policy_yaml("p", RULES))
    loaded = load_paths([directory])
    assert not loaded.has_errors, [str(f) for f in loaded.findings]
    indexed = PolicySet(loaded.policies, loaded.programs, loaded.revision, index_threshold=0)
    plain = PolicySet(loaded.policies, loaded.programs, loaded.revision, index_threshold=1_000_000)
    return indexed, plain


arg_values = st.one_of(st.integers(-2, 9), st.sampled_from(["doc", "secret", "3", ""]), st.booleans(),
                       st.floats(allow_nan=False, min_value=-1, max_value=8), st.none(),
                       st.lists(st.integers(0, 3), max_size=2))
requests = st.builds(
    lambda segs, lib, args: Request.parse("com.example.app", "vdfs.read_file", "/" + "/".join(segs), lib, args),
    st.lists(st.sampled_from(SEGMENTS), max_size=4), st.sampled_from([LIB, OTHER, ""]),
    st.dictionaries(st.sampled_from(["n", "kind", "other"]), arg_values, max_size=3))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
