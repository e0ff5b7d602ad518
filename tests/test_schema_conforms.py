"""The fast schema check (fastjsonschema) may only ever say "valid" where jsonschema does: the loader trusts its
"yes" and asks jsonschema only on "no". Mutations of real policy and test documents (wrong types, bools for
ints, 1.0 for 1, trailing newlines, non-ASCII digits, extra or missing keys, empty lists) must never be
accepted by the fast check and refused by jsonschema."""

from __future__ import annotations

import copy
import itertools

import pytest

from capengine.policy.schemas import conforms, validator

POLICY = {"apiVersion": "capengine/v1", "kind": "Policy", "metadata": {"name": "p", "description": "d"},
          "spec": {"extensions": ["com.example.*"],
                   "rules": [{"id": "r", "effect": "allow", "operations": ["vdfs.read_file", "class:reveals-content"],
                              "condition": "true", "message": "m"}],
                   "limits": [{"operations": ["ai.*"], "rate": "10/minute", "burst": 3, "cost": 1}]}}
TEST = {"apiVersion": "capengine/v1", "kind": "PolicyTest", "metadata": {"name": "t"},
        "cases": [{"name": "c", "request": {"extension": "com.example.a", "operation": "vdfs.stat", "path": "/a",
                                            "library": "", "args": {}}, "expect": "allow", "rule": "p/r"}]}
VALUES = [None, True, False, 0, 1, -1, 1.0, 2.5, "", "x", "x\n", "\nx", "a b", "١٢", "10/minute\n", "0/second",
          "p/r", "allow", "deny", "Policy", "capengine/v1", "class:reveals-content", "class:x", "**", "a" * 300,
          [], ["x"], ["x\n"], [1], {}, {"x": 1}, {"name": "n"}]


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, path + (i,))


def _mutants(doc):
    for path in list(_paths(doc)):
        if not path:
            continue
        for value in VALUES:
            mutant = copy.deepcopy(doc)
            parent = mutant
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = copy.deepcopy(value)
            yield mutant
        mutant = copy.deepcopy(doc)
        parent = mutant
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            del parent[path[-1]]
            yield mutant
            extra = copy.deepcopy(parent)
            parent.clear()
            parent.update(extra, unexpected=1)
            yield mutant


@pytest.mark.parametrize(("name", "doc"), [("policy.schema.json", POLICY), ("policy-test.schema.json", TEST)])
def test_fast_check_never_accepts_what_jsonschema_refuses(name, doc):
    check, full = conforms(name), validator(name)
    assert check(doc) and not list(full.iter_errors(doc))
    accepted = refused = 0
    for mutant in itertools.islice(_mutants(doc), 20000):
        if check(mutant):
            accepted += 1
            assert not list(full.iter_errors(mutant)), mutant
        else:
            refused += 1
    assert accepted and refused > 100  # the mutations reach both verdicts


def test_fast_check_does_not_fill_defaults_into_the_document():
    doc = copy.deepcopy(POLICY)
    conforms("policy.schema.json")(doc)
    assert doc == POLICY
