"""`cel.ast.children` is written out per node class (for speed); it must give exactly what reading the node's
fields through attrs gives (every field but `pos`, in order, through tuples), on every expression of the CEL
conformance corpus and on the policy conditions, and know every node class."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

from capengine.cel import ast
from capengine.cel.standard import STANDARD

sys.path.insert(0, str(Path(__file__).parent))
from cel_conformance import conformance_dir, iter_cases  # noqa: E402

EXPRESSIONS = sorted({case["expr"] for _, _, case in iter_cases(conformance_dir())})  # vendored: tests/cel-spec
assert EXPRESSIONS, f"no CEL conformance cases under {conformance_dir()}"
EXTRA = ['[?a, b, ?c][0] + {?"k": v, "j": w}["j"]', "m.transformMap(k, v, k != 'a', v + 1)",
         "o.optMap(v, v + 1).orValue(0)", "cel.bind(x, 1, x + 1) > 0 ? a.b.c : -d[e]",
         "args.?length.orValue(0) > 1000 && path.under('/a')", "l.map(x, x > 0, x * 2).exists_one(y, y == 2)"]


def reflected(node: ast.Node) -> list[ast.Node]:
    """The generic definition: the values of the fields other than `pos` that are nodes, through tuples."""
    out: list[ast.Node] = []

    def visit(value: object) -> None:
        if isinstance(value, tuple):
            for item in value:
                visit(item)
        elif type(value) in ast.NODE_TYPES:
            out.append(value)  # type: ignore[arg-type]

    for field in attrs.fields(type(node)):
        if field.name != "pos":
            visit(getattr(node, field.name))
    return out


def test_every_node_class_is_known():
    assert set(ast._CHILDREN) == set(ast.NODE_TYPES)


def test_children_equal_the_fields_on_the_conformance_corpus():
    assert len(EXPRESSIONS) > 1000
    seen: set[type] = set()
    parsed = 0
    for source in EXPRESSIONS + EXTRA:
        try:
            root = ast.parse(source, STANDARD.namespaced)
        except ast.CelSyntaxError:
            continue
        parsed += 1
        for node in ast.walk(root):
            seen.add(type(node))
            assert [id(c) for c in ast.children(node)] == [id(c) for c in reflected(node)], source
    assert parsed > 1000
    assert seen == set(ast.NODE_TYPES)


@pytest.mark.parametrize("source", EXTRA)
def test_walk_visits_each_node_before_its_children(source):
    root = ast.parse(source, STANDARD.namespaced)
    order = list(ast.walk(root))
    expected: list[ast.Node] = []

    def preorder(node: ast.Node) -> None:
        expected.append(node)
        for child in reflected(node):
            preorder(child)

    preorder(root)
    assert [id(n) for n in order] == [id(n) for n in expected]
