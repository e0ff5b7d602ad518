"""The cel-spec `optionals` extension: optional values, `x.?f`, `x[?k]`, and the functions over them.

An optional is a value that may be absent (`optional.of(x)` or `optional.none()`). Reading a field that may be
missing as `args.?length` yields one instead of an error, so `args.?length.orValue(0) > 1000` says what a
policy author means without the has() pitfalls (a deny on a bare `args.length` errors on every call lacking
it, and a deny counts an error as a match). The functions here follow cel-go's library; `or` and `orValue`
evaluate their argument only when the optional is empty, which the compiler arranges (see compiler.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from capengine.cel.environment import Define
from capengine.cel.types import BOOL, A, optional_of
from capengine.cel.values import (
    MAP_TYPES,
    NONE,
    CelError,
    OptionalValue,
    UInt,
    Value,
    map_lookup,
    optional,
    type_name,
)

# Functions whose argument is evaluated only when the receiver is empty (short-circuit, as in cel-go).
LAZY = frozenset({"or", "orValue"})
FUNCTIONS = frozenset({"optional.of", "optional.none", "optional.ofNonZeroValue", "value", "hasValue", *LAZY})


def _value(o: OptionalValue) -> Value:
    if not o.has_value:
        raise CelError("optional.none() dereference: the optional holds no value (test hasValue() or use "
                       "orValue(default))")
    return o.value


def is_zero(v: Value) -> bool:
    """The zero value of its type (what `optional.ofNonZeroValue` treats as absent)."""
    if v is None or v is False:
        return True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v == 0
    if isinstance(v, (str, bytes, list, tuple, *MAP_TYPES)):
        return len(v) == 0
    if isinstance(v, OptionalValue):
        return not v.has_value
    nanos = getattr(v, "nanos", None)  # a duration of 0; a timestamp never is (0 is the epoch, a real instant)
    return type_name(v) == "google.protobuf.Duration" and nanos == 0


def _of_non_zero(v: Value) -> OptionalValue:
    return NONE if is_zero(v) else optional(v)


def register(define: Define) -> None:
    opt = optional_of(A)
    define("optional.of", (A,), opt, optional)
    define("optional.ofNonZeroValue", (A,), opt, _of_non_zero)
    define("optional.none", (), opt, lambda: NONE)
    define("value", (opt,), A, _value, receiver=True)
    define("hasValue", (opt,), BOOL, lambda o: o.has_value, receiver=True)
    # Eager forms, for the checker and for dispatch tables; the compiler evaluates these lazily.
    define("or", (opt, opt), opt, lambda o, other: o if o.has_value else other, receiver=True)
    define("orValue", (opt, A), A, lambda o, default: o.value if o.has_value else default, receiver=True)


# `x.?f`, `x[?k]`, and plain selection/indexing of an optional (which yields an optional) ------------------

def _empty(container: Value) -> bool:
    return isinstance(container, OptionalValue) and not container.has_value


def _held(container: Value) -> Value:
    """What selection and indexing apply to: an optional's value (chaining), anything else as it is."""
    return container.value if isinstance(container, OptionalValue) else container


def select(container: Value, field: str) -> OptionalValue:
    """`container.?field`: the field's value, or none when the map lacks it; an empty optional stays empty."""
    if _empty(container):
        return NONE
    container = _held(container)
    if isinstance(container, MAP_TYPES):
        mapping = cast(Mapping[Value, Value], container)
        return optional(mapping[field]) if field in mapping else NONE
    raise CelError(f"type '{type_name(container)}' has no field '{field}'")


def has(container: Value, field: str) -> bool:
    """`has(o.field)` on an optional: false when it is empty, else presence in the map it holds."""
    if _empty(container):
        return False
    container = _held(container)
    if isinstance(container, MAP_TYPES):
        return field in container
    raise CelError(f"has() on a value of type {type_name(container)}")


def index(container: Value, key: Value) -> OptionalValue:
    """`container[?key]`: the element or entry, or none when the index is out of range or the key absent."""
    if _empty(container):
        return NONE
    container = _held(container)
    if isinstance(container, (list, tuple)):
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        elif type(key) is not int and type(key) is not UInt:
            raise CelError(f"list index must be int, not {type_name(key)}")
        assert isinstance(key, int)
        return optional(container[key]) if 0 <= key < len(container) else NONE
    if isinstance(container, MAP_TYPES):
        found, value = map_lookup(container, key)
        return optional(value) if found else NONE
    raise CelError(f"type '{type_name(container)}' cannot be indexed")


def element(item: Value, what: str) -> OptionalValue:
    """The optional of a `[?x]` element or `{?k: x}` entry; anything else is an error."""
    if isinstance(item, OptionalValue):
        return item
    raise CelError(f"{what} marked with '?' must be an optional, not {type_name(item)}")
