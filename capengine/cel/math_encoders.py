"""CEL's math and encoders extensions (cel-go `ext.Math`, `ext.Encoders`): math.greatest/least over mixed
numbers, rounding, abs/sign, NaN/Inf tests, bit operations; base64.encode/decode."""

from __future__ import annotations

import base64
import binascii
import math

from capengine.cel.environment import Define
from capengine.cel.types import BOOL, BYTES, DOUBLE, DYN, INT, STRING, UINT, list_of
from capengine.cel.values import INT_MIN, CelError, UInt, check_int, numeric_compare, type_name

MAX_VARIADIC = 16  # math.greatest(a, b, ...) overloads registered up to this many arguments
_NUMBERS = (int, UInt, float)


def _extreme(values, want: int, name: str):
    if len(values) == 1 and type(values[0]) in (list, tuple):
        values = values[0]
    if not values:
        raise CelError(f"math.{name}() needs at least one number")
    best = None
    for v in values:
        if type(v) not in _NUMBERS or type(v) is bool:
            raise CelError(f"math.{name}() takes numbers, not {type_name(v)}")
        if best is None:
            best = v
            continue
        order = numeric_compare(v, best)
        if order is None:  # NaN wins: it is neither greater nor smaller, as in cel-go
            best = v if isinstance(v, float) and math.isnan(v) else best
        elif order == want:
            best = v
    return best


def _round_half_away(x: float) -> float:
    if math.isnan(x) or math.isinf(x):
        return x
    return float(math.floor(x + 0.5)) if x >= 0 else -float(math.floor(-x + 0.5))


def _abs_int(x: int) -> int:
    if x == INT_MIN:
        raise CelError("int overflow in math.abs")
    return abs(x)


def _sign(x):
    if type(x) is float:
        return x if math.isnan(x) else float((x > 0) - (x < 0))
    s = (x > 0) - (x < 0)
    return UInt(s) if type(x) is UInt else s


def _wrap_int(x: int) -> int:
    x &= 0xFFFFFFFFFFFFFFFF
    return x - (1 << 64) if x >= 1 << 63 else x


def _shift(x, n: int, left: bool):
    if n < 0:
        raise CelError("math.bitShift: negative shift count")
    if n >= 64:
        return UInt(0) if type(x) is UInt else 0
    if type(x) is UInt:
        return UInt(((x << n) if left else (x >> n)) & 0xFFFFFFFFFFFFFFFF)
    if left:
        return _wrap_int(x << n)
    return _wrap_int((x & 0xFFFFFFFFFFFFFFFF) >> n)  # logical: zeros shift in, as in cel-go


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CelError("base64.decode: not valid base64") from None


LIST = list_of(DYN)


def register(define: Define) -> None:
    """Add the overloads to the function library (the standard environment includes them)."""
    for name, want in (("greatest", 1), ("least", -1)):
        for arity in range(1, MAX_VARIADIC + 1):
            define(f"math.{name}", (DYN,) * arity, DYN, lambda *v, w=want, n=name: _extreme(v, w, n))
        define(f"math.{name}", (LIST,), DYN, lambda v, w=want, n=name: _extreme((v,), w, n))
    define("math.ceil", (DOUBLE,), DOUBLE, lambda x: float(math.ceil(x)) if math.isfinite(x) else x)
    define("math.floor", (DOUBLE,), DOUBLE, lambda x: float(math.floor(x)) if math.isfinite(x) else x)
    define("math.round", (DOUBLE,), DOUBLE, _round_half_away)
    define("math.trunc", (DOUBLE,), DOUBLE, lambda x: float(math.trunc(x)) if math.isfinite(x) else x)
    define("math.abs", (INT,), INT, _abs_int)
    define("math.abs", (UINT,), UINT, lambda x: x)
    define("math.abs", (DOUBLE,), DOUBLE, abs)
    for t in (INT, UINT, DOUBLE):
        define("math.sign", (t,), t, _sign)
    define("math.isNaN", (DOUBLE,), BOOL, math.isnan)
    define("math.isInf", (DOUBLE,), BOOL, math.isinf)
    define("math.isFinite", (DOUBLE,), BOOL, math.isfinite)
    for name, op in (("bitAnd", int.__and__), ("bitOr", int.__or__), ("bitXor", int.__xor__)):
        define(f"math.{name}", (INT, INT), INT, lambda x, y, o=op: check_int(o(x, y)))
        define(f"math.{name}", (UINT, UINT), UINT, lambda x, y, o=op: UInt(o(x, y)))
    define("math.bitNot", (INT,), INT, lambda x: ~x)
    define("math.bitNot", (UINT,), UINT, lambda x: UInt(x ^ 0xFFFFFFFFFFFFFFFF))
    for t in (INT, UINT):
        define("math.bitShiftLeft", (t, INT), t, lambda x, n: _shift(x, n, left=True))
        define("math.bitShiftRight", (t, INT), t, lambda x, n: _shift(x, n, left=False))
    define("base64.encode", (BYTES,), STRING, lambda b: base64.b64encode(b).decode())
    define("base64.decode", (STRING,), BYTES, _b64decode)
