"""CEL static types, and the unification the checker uses to pick overloads."""

from __future__ import annotations

import attrs


@attrs.frozen
class Field:
    """A known key of a map with a schema (a policy's `args` typed from the operation schemas)."""

    name: str
    type: Type
    required: bool


@attrs.frozen
class Type:
    name: str
    params: tuple[Type, ...] = ()
    is_param: bool = False  # a type variable (A, B) inside an overload signature
    # For map(string, V) only: the keys it can hold, each with its own type. `closed`: no other key exists,
    # so selecting one is a type error (a misspelt `args.lenght`). Unifies like the plain map type.
    fields: tuple[Field, ...] | None = attrs.field(default=None, eq=False)
    closed: bool = attrs.field(default=False, eq=False)
    describe: str = attrs.field(default="", eq=False)  # what the fields come from, for messages

    def field(self, name: str) -> Field | None:
        for f in self.fields or ():
            if f.name == name:
                return f
        return None

    def __str__(self) -> str:
        if self.params:
            return f"{self.name}({', '.join(map(str, self.params))})"
        return self.name


BOOL, INT, UINT, DOUBLE = Type("bool"), Type("int"), Type("uint"), Type("double")
STRING, BYTES, NULL, DYN = Type("string"), Type("bytes"), Type("null_type"), Type("dyn")
TYPE, TIMESTAMP, DURATION = Type("type"), Type("google.protobuf.Timestamp"), Type("google.protobuf.Duration")
A, B = Type("A", is_param=True), Type("B", is_param=True)


def list_of(elem: Type) -> Type:
    return Type("list", (elem,))


def map_of(key: Type, value: Type) -> Type:
    return Type("map", (key, value))


def optional_of(value: Type) -> Type:
    """optional_type(T): a value of T, or none (the cel-spec optionals extension)."""
    return Type("optional_type", (value,))


def record_of(fields: tuple[Field, ...], closed: bool, describe: str = "") -> Type:
    """map(string, dyn) whose keys are known: a JSON object described by a schema."""
    return Type("map", (Type("string"), Type("dyn")), fields=fields, closed=closed, describe=describe)


# Names usable as type values in expressions (`type(x) == string`) and in declarations.
TYPE_IDENTS = {
    "bool": BOOL, "int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES,
    "null_type": NULL, "dyn": DYN, "type": TYPE, "list": list_of(DYN), "map": map_of(DYN, DYN),
    "google.protobuf.Timestamp": TIMESTAMP, "google.protobuf.Duration": DURATION,
    "optional_type": optional_of(DYN),
}


def parse_decl(text: str) -> Type:
    """Declaration shorthand used by tests and conformance files: int, list, map, dyn, ..."""
    try:
        return {"null": NULL, "timestamp": TIMESTAMP, "duration": DURATION}.get(text) or TYPE_IDENTS[text]
    except KeyError:
        raise ValueError(f"unknown type name {text!r}") from None


def unify(param: Type, arg: Type, bindings: dict[str, Type]) -> bool:
    """Can `arg` be passed where `param` is expected? Binds type variables in `bindings`.

    A variable once bound to dyn stays dyn (and a dyn argument makes the variables of its parameter dyn): in
    `orValue(optional(A), A)` with `args.?n` (A = dyn) and the default `0`, the result may be any value, not an
    int. Binding A to int there would let the compiler pick the int overload statically for what follows, and
    Python would then run `true < 100` as `1 < 100` where CEL has no such overload."""
    if param.is_param:
        bound = bindings.get(param.name)
        if bound is None:
            bindings[param.name] = arg
            return True
        if bound == DYN or arg == DYN:
            bindings[param.name] = DYN
            return True
        return unify(bound, arg, {}) or unify(arg, bound, {})
    if arg == DYN:
        _bind_dyn(param, bindings)
        return True
    if param == DYN:
        return True
    if param.name != arg.name or len(param.params) != len(arg.params):
        return False
    return all(unify(p, a, bindings) for p, a in zip(param.params, arg.params))


def _bind_dyn(param: Type, bindings: dict[str, Type]) -> None:
    """A dyn argument for `param` (`list(A)` given a dyn value): each of its variables may be anything."""
    if param.is_param:
        bindings[param.name] = DYN
    for p in param.params:
        _bind_dyn(p, bindings)


def substitute(t: Type, bindings: dict[str, Type]) -> Type:
    if t.is_param:
        return bindings.get(t.name, DYN)
    if t.params:
        return Type(t.name, tuple(substitute(p, bindings) for p in t.params))
    return t


def join(types: list[Type]) -> Type:
    """The common type of list elements or conditional branches; dyn where they differ."""
    if not types:
        return DYN
    first = types[0]
    return first if all(t == first for t in types) else DYN
