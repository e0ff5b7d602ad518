"""Typed `args`: the type of a rule's `args` from the JSON Schemas of the operations the rule can match.

A condition reading `args.lenght` (a typo) on a deny never fires; `args.kind > 3` on a string field fails on
every call. Typing `args` per rule turns both into load errors with the position and a suggestion, the way
`cedar validate --schema` does. For a rule matching several operations, `args` holds the fields all of them
take (a field only some take would error, so fail closed, on the others); a field's type is the schema's when
all agree, else dyn. A field is required when every schema requires it: reading an optional one needs `has()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from capengine.cel import ast
from capengine.cel.types import BOOL, DYN, INT, STRING, Field, Type, list_of, map_of, record_of
from capengine.policy.operations import OperationInfo

_JSON_TYPES = {"string": STRING, "integer": INT, "boolean": BOOL}


def _field_type(schema: Mapping[str, Any]) -> Type:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    if kind == "array":
        items = schema.get("items")
        return list_of(_field_type(items) if isinstance(items, dict) else DYN)
    if kind == "object":
        return map_of(STRING, DYN)
    return DYN  # "number" (a JSON number may arrive as an int or a double), unions, no type at all


def args_type(operations: Iterable[OperationInfo]) -> Type | None:
    """The record type of `args` for a rule over these operations; None when nothing is known about them."""
    ops = list(operations)
    if not ops:
        return None
    per_op: list[tuple[dict[str, Type], set[str], bool]] = []
    for op in ops:
        props = op.schema.get("properties")
        if not isinstance(props, dict):
            return None  # a schema that does not list its fields: args stays map(string, dyn)
        required = op.schema.get("required", [])
        closed = op.schema.get("additionalProperties") is False
        per_op.append(({k: _field_type(v) if isinstance(v, dict) else DYN for k, v in props.items()},
                       set(required) if isinstance(required, list) else set(), closed))
    names = set(per_op[0][0])
    for fields, _, _ in per_op[1:]:
        names &= set(fields)
    out = []
    for name in sorted(names):
        types = {fields[name] for fields, _, _ in per_op}
        out.append(Field(name, types.pop() if len(types) == 1 else DYN, all(name in req for _, req, _ in per_op)))
    closed = all(c for _, _, c in per_op)
    shown = ", ".join(op.name for op in ops[:4]) + (", ..." if len(ops) > 4 else "")
    return record_of(tuple(out), closed, f"in args of {shown}")


def unguarded_optional_reads(node: ast.Node, record: Type) -> list[tuple[str, ast.Pos]]:
    """Optional fields read as `args.x` (or `args.?x.value()`) in a condition that never tests `has(args.x)`
    (or `args.?x.hasValue()`): when the call omits the field the read errors, which a deny counts as a match
    (it denies every call lacking the field). `args.?x.orValue(d)` reads it safely and is not reported."""
    optional = {f.name for f in record.fields or () if not f.required}
    reads: list[tuple[str, ast.Pos]] = []
    guarded: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Select) and isinstance(n.operand, ast.Ident) and n.operand.name == "args" \
                and n.field in optional:
            (guarded.add(n.field) if n.test_only else reads.append((n.field, n.pos)))
        elif isinstance(n, ast.Call) and n.function in ("value", "hasValue") and n.target is not None \
                and (name := ast.optional_field(n.target, "args")) in optional:
            (guarded.add(name) if n.function == "hasValue" else reads.append((name, n.target.pos)))
    return [(name, pos) for name, pos in reads if name not in guarded]


def prefix_tests(node: ast.Node) -> list[tuple[str, ast.Pos]]:
    """String tests on `path` that are not segment-aware: `path.startsWith("/photos")` also allows
    "/photosecret/id.png", `path.contains("/private")` misses nothing but also hits "/privateer"."""
    found = []
    for n in ast.walk(node):
        if not (isinstance(n, ast.Call) and isinstance(n.target, ast.Ident) and n.target.name == "path"
                and len(n.args) == 1 and isinstance(n.args[0], ast.Literal) and isinstance(n.args[0].value, str)):
            continue
        text = n.args[0].value
        if n.function == "startsWith" and not text.endswith("/"):
            found.append((f'path.startsWith("{text}") also matches "{text}secret/..." (a string prefix, not a '
                          f'directory); use path.under("{text}")', n.pos))
        elif n.function in ("contains", "endsWith") and "/" in text and not text.endswith("/") \
                and not (n.function == "endsWith" and text.startswith("/")):
            found.append((f'path.{n.function}("{text}") is a substring test, not segment-aware; use '
                          f'path.glob("/**{text if text.startswith("/") else "/" + text}/**") or path.under()', n.pos))
    return found


