"""CEL runtime values as plain Python objects, and the few value rules CEL does not share with Python.

Mapping: bool->bool, int->int, uint->UInt, double->float, string->str, bytes->bytes, null->None,
list->list/tuple, map->dict, type->CelType, timestamp->Timestamp, duration->Duration,
optional_type->OptionalValue. Plain Python values
keep evaluation cheap; the places where Python and CEL disagree (True == 1, 1 + True, {1: x}[True], unbounded
ints) are handled here and in the function library, never left to Python.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias, cast

import attrs

from capengine.errors import CapengineError

if TYPE_CHECKING:  # timestamps registers its classes with this module at import time
    from capengine.cel.timestamps import Duration, Timestamp

INT_MIN, INT_MAX, UINT_MAX = -(2**63), 2**63 - 1, 2**64 - 1


class CelError(CapengineError):
    """A CEL evaluation error: a value, not a crash. `&&`, `||` and the macros may absorb it."""


class UInt(int):
    """CEL uint: a Python int that remembers it is unsigned, so that type(x) tells uint from int."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{int(self)}u"


@attrs.frozen
class CelType:
    """A type used as a value (`type(x) == string`)."""

    name: str

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class OptionalValue:
    """A value of the optionals extension: `optional.of(x)` (has_value, value x) or `optional.none()`."""

    value: Value
    has_value: bool

    def __repr__(self) -> str:
        return f"optional.of({self.value!r})" if self.has_value else "optional.none()"


NONE = OptionalValue(None, False)


def optional(value: Value) -> OptionalValue:
    return OptionalValue(value, True)


Value: TypeAlias = """(bool | int | float | str | bytes | None | list[Value] | tuple[Value, ...]
                      | dict[Value, Value] | MappingProxyType[Value, Value] | CelType | Timestamp | Duration
                      | OptionalValue)"""
"""A CEL runtime value (UInt is an int; a list may be a tuple when it is a literal)."""
Activation: TypeAlias = "dict[str, Value]"
"""Variable name -> value, what a compiled expression is evaluated against."""
Number: TypeAlias = int | float

_TYPE_NAMES: dict[type, str] = {
    bool: "bool", int: "int", UInt: "uint", float: "double", str: "string", bytes: "bytes",
    type(None): "null_type", list: "list", tuple: "list", dict: "map", MappingProxyType: "map", CelType: "type",
    OptionalValue: "optional_type",
}
MAP_TYPES = (dict, MappingProxyType)
"""A CEL map is a dict, or a read-only view of one (a request's `args`)."""


def register_type(py_type: type, name: str) -> None:
    """Let a value class from another module (timestamps, durations) take part in dispatch."""
    _TYPE_NAMES[py_type] = name


def type_name(value: Value) -> str:
    try:
        return _TYPE_NAMES[type(value)]
    except KeyError:
        raise CelError(f"unsupported value of Python type {type(value).__name__}") from None


def check_int(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise CelError("int overflow")


def check_uint(value: int) -> UInt:
    if 0 <= value <= UINT_MAX:
        return UInt(value)
    raise CelError("uint overflow")


_NUMERIC = {int, UInt, float}


def equals(x: Value, y: Value) -> bool:
    """CEL equality: numbers compare by value across int/uint/double, everything else only within its type."""
    if isinstance(x, (list, tuple)):
        if not isinstance(y, (list, tuple)):
            return False
        return len(x) == len(y) and all(equals(a, b) for a, b in zip(x, y))
    if isinstance(x, MAP_TYPES):
        if not isinstance(y, MAP_TYPES) or len(x) != len(y):
            return False
        for key, value in x.items():
            found, other = map_lookup(y, key)
            if not found or not equals(value, other):
                return False
        return True
    if isinstance(x, OptionalValue):  # none equals none; two values compare as CEL values
        if not isinstance(y, OptionalValue) or x.has_value != y.has_value:
            return False
        return not x.has_value or equals(x.value, y.value)
    tx, ty = type(x), type(y)
    if tx is ty:
        return x == y
    if tx in _NUMERIC and ty in _NUMERIC:
        return numeric_compare(cast(Number, x), cast(Number, y)) == 0
    return False


def numeric_compare(x: Number, y: Number) -> int | None:
    """Compare numbers across int/uint/double as CEL does: an integer meeting a double is compared as a
    double (so 2**63-1 < 2.0**63 is false). None when either side is NaN."""
    if type(x) is float or type(y) is float:
        x, y = float(x), float(y)
        if x != x or y != y:
            return None
    return (x > y) - (x < y)


def map_lookup(mapping: Mapping[Value, Value], key: Value) -> tuple[bool, Value]:
    """Find `key` in a CEL map. Python would match True with 1 and 1.0 with 1; CEL keys are typed, but
    numeric keys compare by value across int/uint/double (an integral double finds an int key)."""
    tk = type(key)
    if tk is str or tk is bytes:
        if key in mapping:
            return True, mapping[key]
        return False, None
    if tk is bool:
        for k, v in mapping.items():
            if type(k) is bool and k == key:
                return True, v
        return False, None
    if isinstance(key, (int, float)):
        if isinstance(key, float) and (math.isnan(key) or not key.is_integer()):
            return False, None
        for k, v in mapping.items():
            if type(k) in _NUMERIC and k == key:
                return True, v
        return False, None
    if tk is type(None):
        raise CelError("unsupported key type: null")
    raise CelError(f"unsupported key type: {type_name(key)}")


def valid_key(key: Value) -> Value:
    if type(key) not in (str, int, UInt, bool):
        raise CelError(f"unsupported map key type: {type_name(key)}")
    return key


def make_map(pairs: list[tuple[Value, Value]]) -> dict[Value, Value]:
    """A map literal: keys must be int, uint, bool or string and may not repeat (1 and 1u repeat)."""
    result: dict[Value, Value] = {}
    for key, value in pairs:
        valid_key(key)
        if map_lookup(result, key)[0]:
            raise CelError(f"duplicate map key: {key!r}")
        if key in result:  # Python sees 1 and true as one key; fail rather than lose an entry
            raise CelError(f"a map cannot hold both {key!r} and an equal key of another type (known limitation)")
        result[key] = value
    return result


def format_double(x: float) -> str:
    """Go's %g with the shortest round-trip digits, which is what CEL implementations print."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digits, exponent = decimal.Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)  # a finite number (NaN and infinities were handled above)
    text = "".join(map(str, digits))
    exp10 = len(text) + exponent - 1
    if exp10 < -4 or exp10 >= 21:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    elif exponent >= 0:
        out = text + "0" * exponent
    elif exp10 >= 0:
        out = text[: exp10 + 1] + "." + text[exp10 + 1:]
    else:
        out = "0." + "0" * (-exp10 - 1) + text
    return ("-" if sign else "") + out
