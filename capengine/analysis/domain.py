"""The symbolic request: every request the host could hand the engine for one operation, as Z3 terms.

The constraints are those the host enforces before a policy runs: the operation's JSON Schema (types, bounds,
required fields, patterns, no unknown fields), the canonical form of the path, a library UUID when the
operation needs one, and a well-formed extension id. An integer field holds a Python int, never a double:
JSON Schema calls 4.0 an integer, but the registry's Operation.validate refuses a number written with a
fraction or exponent in an integer field before the policy runs (so no JSON double reaches an int-typed `args`
field and its int operators). Where the host is stricter than what is modelled here (NFC normalisation, byte
limits on path segments) the model is a superset, so a proof still holds; a witness from the superset that
the host would refuse is caught when the witness is confirmed.

The analysis layer may not import capengine.host, so the facts the registry knows beyond the schemas are
restated in OPERATION_TRAITS; tests/test_analysis_encoding.py checks them, and the refusal of doubles in
integer fields, against the real registry.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import attrs
import z3

from capengine.analysis import regex
from capengine.analysis.regex import char_set, complement
from capengine.analysis.zstrings import NotAnalysable, zstr
from capengine.policy import schemas

_RE = z3.ReSort(z3.StringSort())


@attrs.frozen
class OperationTraits:
    """What the registry adds to a schema: the field that is the policy's `path`, whether a library id is
    required before the policy runs, and fields hidden from `args` (secrets)."""

    path_field: str | None = "path"
    needs_library: bool = True
    hidden_args: tuple[str, ...] = ()


OPERATION_TRAITS: dict[str, OperationTraits] = {
    "credentials.get": OperationTraits(None, False, ("secret",)),
    "credentials.delete": OperationTraits(None, False, ("secret",)),
    "credentials.store": OperationTraits(None, False, ("secret",)),
    "test.ping": OperationTraits(None, False),
    # the job lifecycle (capengine/host/operations/job.py): no path, no library; a checkpoint's state is hidden
    "job.checkpoint": OperationTraits(None, False, ("state",)),
    "job.interrupted": OperationTraits(None, False),
    "job.metrics": OperationTraits(None, False),
    "job.progress": OperationTraits(None, False),
    "job.state": OperationTraits(None, False),
    "job.warn": OperationTraits(None, False),
}


@cache
def operation_names() -> tuple[str, ...]:
    """Every operation with a shipped input schema (the registry's operations)."""
    folder = schemas.schema_dir() / "operations"
    suffix = ".schema.json"
    return tuple(sorted(f.name[:-len(suffix)] for f in folder.iterdir() if f.name.endswith(suffix)))


def traits(operation: str) -> OperationTraits:
    return OPERATION_TRAITS.get(operation, OperationTraits())


def operation_schema(operation: str) -> dict[str, Any]:
    return schemas.load_schema(f"operations/{operation}.schema.json")


@attrs.frozen
class ArgField:
    """One schema property. `kind` is string | int | bool | opaque (a type the encoding does not model)."""

    name: str
    kind: str
    present: z3.BoolRef
    value: Any  # z3 term of the kind; None for opaque
    hidden: bool
    required: bool


@attrs.frozen
class SymRequest:
    operation: str
    extension_name: str | None  # fixed by the question, or None: any extension id
    extension: z3.SeqRef
    path: z3.SeqRef
    library: z3.SeqRef
    args: dict[str, ArgField]
    open_args: bool  # the schema allows fields it does not name: reading one is outside the fragment
    constraints: tuple[z3.BoolRef, ...]
    notes: tuple[str, ...]  # parts of the schema not modelled (the model is then a superset)
    prefix: str

    def friendly(self) -> list[z3.BoolRef]:
        """Preferences that make a witness readable and easy to confirm: printable ASCII paths and strings."""
        printable = z3.Star(z3.Range(zstr(" "), zstr("~")))
        out = [z3.InRe(self.path, printable)]
        for f in self.args.values():
            if f.kind == "string" and not f.hidden and f.name != traits(self.operation).path_field:
                out.append(z3.InRe(f.value, printable))
        return out


_BANNED = [(0x00, 0x1F), (0x7F, 0x9F), (0xD800, 0xDFFF), (0x2028, 0x2029), (ord("\\"), ord("\\")),
           (ord("/"), ord("/"))]


def _path_char() -> z3.ReRef:
    return char_set(complement(_BANNED))


@cache
def canonical_path_language() -> z3.ReRef:
    """"/" or ("/" segment)+ where a segment is not "." or ".." and holds no "/", control character or
    backslash: exactly the strings paths.canonical_path returns unchanged (up to NFC and byte limits).

    "not . or .." is spelt out without a complement (a segment starts with a non-dot, or is "." + non-dot...,
    or ".." + at least one more character): Z3 decides emptiness of intersections far faster without one."""
    c = _path_char()
    no_dot = char_set(complement(_BANNED + [(ord("."), ord("."))]))
    dot = z3.Re(zstr("."))
    segment = z3.Union(z3.Concat(no_dot, z3.Star(c)), z3.Concat(dot, no_dot, z3.Star(c)),
                       z3.Concat(dot, dot, z3.Plus(c)))
    return z3.Union(z3.Re(zstr("/")), z3.Plus(z3.Concat(z3.Re(zstr("/")), segment)))


@cache
def uuid_language() -> z3.ReRef:
    hexdigit = z3.Union(z3.Range(zstr("0"), zstr("9")), z3.Range(zstr("a"), zstr("f")))
    parts = [z3.Loop(hexdigit, n, n) for n in (8, 4, 4, 4, 12)]
    dash = z3.Re(zstr("-"))
    return z3.Concat(parts[0], dash, parts[1], dash, parts[2], dash, parts[3], dash, parts[4])


@cache
def extension_language() -> z3.ReRef:
    """model._NAME: [A-Za-z0-9_][A-Za-z0-9_.-]{0,255}."""
    first = z3.Union(z3.Range(zstr("A"), zstr("Z")), z3.Range(zstr("a"), zstr("z")),
                     z3.Range(zstr("0"), zstr("9")), z3.Re(zstr("_")))
    rest = z3.Union(first, z3.Re(zstr(".")), z3.Re(zstr("-")))
    return z3.Concat(first, z3.Loop(rest, 0, 255))


def build_request(operation: str, extension: str | None = None, prefix: str = "") -> SymRequest:
    """A symbolic request for `operation`. `extension` fixes the extension id; None leaves it open."""
    p = prefix
    ext = zstr(extension) if extension is not None else z3.String(f"{p}extension")
    path, library = z3.String(f"{p}path"), z3.String(f"{p}library")
    t = traits(operation)
    cons: list[z3.BoolRef] = []
    notes: list[str] = []
    if extension is None:
        cons.append(z3.InRe(ext, extension_language()))
    # Only regular-membership constraints here: Z3 decides them far faster than (dis)equations and lengths.
    # The host's byte limits (4096 per path, 255 per segment) are not modelled: the model is a superset.
    empty = z3.Re(zstr(""))
    cons.append(z3.InRe(path, empty if t.path_field is None else canonical_path_language()))
    cons.append(z3.InRe(library, uuid_language() if t.needs_library else z3.Union(empty, uuid_language())))
    schema = operation_schema(operation)
    required = set(schema.get("required", ()))
    fields: dict[str, ArgField] = {}
    for name, spec in schema.get("properties", {}).items():
        f = _field(p, name, spec, name in required, name in t.hidden_args, name == t.path_field, cons, notes)
        if name == t.path_field:  # the host hands the policy the canonical path as args[path_field] too
            cons.append(f.present)
            cons.append(f.value == path)
        fields[name] = f
    open_args = schema.get("additionalProperties", True) is not False
    return SymRequest(operation, extension, ext, path, library, fields, open_args, tuple(cons), tuple(notes), p)


def _field(p: str, name: str, spec: dict, required: bool, hidden: bool, is_path: bool, cons: list[z3.BoolRef],
           notes: list[str]) -> ArgField:
    present = z3.Bool(f"{p}has.{name}")
    if required:
        cons.append(present)
    kind = {"string": "string", "integer": "int", "boolean": "bool"}.get(spec.get("type", ""), "opaque")
    value: Any = None
    if kind == "string":
        value = z3.String(f"{p}arg.{name}")
        if not is_path:  # the path field equals the canonical path: never empty, byte limit not modelled
            if "minLength" in spec:
                cons.append(z3.Length(value) >= spec["minLength"])
            if "maxLength" in spec:
                cons.append(z3.Length(value) <= spec["maxLength"])
        if "pattern" in spec:
            try:
                cons.append(z3.InRe(value, regex.search_language(spec["pattern"], "python")))
            except NotAnalysable as exc:
                notes.append(f"args.{name}: schema pattern not modelled ({exc})")
    elif kind == "int":
        value = z3.Int(f"{p}arg.{name}")
        for key, op in (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"),
                        ("exclusiveMaximum", "lt")):
            bound = spec.get(key)
            if isinstance(bound, int) and not isinstance(bound, bool):
                cons.append({"ge": value >= bound, "le": value <= bound, "gt": value > bound,
                             "lt": value < bound}[op])
    elif kind == "bool":
        value = z3.Bool(f"{p}arg.{name}")
    if "enum" in spec and kind in ("string", "int", "bool"):
        options = [v for v in spec["enum"] if _fits(kind, v)]
        cons.append(z3.Or([value == _literal(kind, v) for v in options]) if options else z3.Not(present))
    return ArgField(name, kind, present, value, hidden, required)


def _fits(kind: str, v: object) -> bool:
    return {"string": isinstance(v, str), "int": type(v) is int, "bool": type(v) is bool}[kind]


def _literal(kind: str, v: Any) -> Any:
    return zstr(v) if kind == "string" else z3.IntVal(v) if kind == "int" else z3.BoolVal(v)
