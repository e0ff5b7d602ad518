"""CEL timestamps and durations: values, RFC 3339 / Go-style duration parsing and printing, and their functions.

Both are whole nanoseconds. Timestamps span 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z and
durations ±315,576,000,000 s (protobuf's ranges); the difference of two timestamps must also fit a signed
64-bit count of nanoseconds (what CEL implementations compute it in). Anything out of range is an error.
"""

from __future__ import annotations

import datetime as dt
import re
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from capengine.cel.environment import Define
from capengine.cel.types import DURATION as DUR
from capengine.cel.types import INT, STRING
from capengine.cel.types import TIMESTAMP as TS
from capengine.cel.values import CelError, register_type

NANOS = 10**9
MIN_TS = -62135596800 * NANOS
MAX_TS = 253402300799 * NANOS + NANOS - 1
MAX_DURATION = 315576000000 * NANOS + NANOS - 1
INT64_MAX = 2**63 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@attrs.frozen(order=True)
class Timestamp:
    nanos: int  # since the Unix epoch, UTC


@attrs.frozen(order=True)
class Duration:
    nanos: int


register_type(Timestamp, "google.protobuf.Timestamp")
register_type(Duration, "google.protobuf.Duration")


def timestamp(nanos: int) -> Timestamp:
    if not MIN_TS <= nanos <= MAX_TS:
        raise CelError("timestamp out of range")
    return Timestamp(nanos)


def duration(nanos: int) -> Duration:
    if not -MAX_DURATION <= nanos <= MAX_DURATION:
        raise CelError("duration out of range")
    return Duration(nanos)


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_timestamp(text: str) -> Timestamp:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise CelError(f"cannot parse timestamp {text!r} (RFC 3339, e.g. 2009-02-13T23:31:30Z)")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError as exc:
        raise CelError(f"timestamp out of range: {exc}") from None
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * (1 if m.group(9) == "+" else -1)
    seconds = (when - _EPOCH) // dt.timedelta(seconds=1) - offset
    return timestamp(seconds * NANOS + int((m.group(7) or "").ljust(9, "0")))


_UNITS = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10**6, "s": NANOS, "m": 60 * NANOS, "h": 3600 * NANOS}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> Duration:
    """Go's duration syntax, as CEL uses it: "1h2m3.5s", "-1.5s", "100ms", "0"."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return Duration(0)
    pos, total = 0, Fraction(0)
    while pos < len(body):
        m = _PART.match(body, pos)
        if m is None:
            raise CelError(f"cannot parse duration {text[:64]!r} (e.g. 1.5s, 2h45m, 100ms)")
        try:
            total += Fraction(m.group(1)) * _UNITS[m.group(2)]
        except ValueError:  # Fraction(): more than 4300 digits, far beyond any duration
            raise CelError(f"duration out of range: {text[:64]!r}") from None
        pos = m.end()
    if not body:
        raise CelError(f"cannot parse duration {text!r}")
    nanos = int(total)
    return duration(-nanos if text.startswith("-") else nanos)


def format_timestamp(ts: Timestamp) -> str:
    seconds, nanos = divmod(ts.nanos, NANOS)
    when = _EPOCH + dt.timedelta(seconds=seconds)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if len(text) < 19:  # strftime does not pad years below 1000 on every platform
        text = f"{when.year:04d}" + text[text.index("-"):]
    return text + (f".{nanos:09d}".rstrip("0") if nanos else "") + "Z"


def format_duration(d: Duration) -> str:
    sign = "-" if d.nanos < 0 else ""
    seconds, nanos = divmod(abs(d.nanos), NANOS)
    if not nanos:
        return f"{sign}{seconds}s"
    frac = f"{nanos:09d}"
    while frac.endswith("000"):
        frac = frac[:-3]
    return f"{sign}{seconds}.{frac}s"


def _zone(name: str) -> dt.tzinfo:
    m = re.fullmatch(r"([+-])?(\d{2}):(\d{2})", name)
    if m:
        delta = dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return dt.timezone(-delta if m.group(1) == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CelError(f"unknown time zone {name!r}") from None


def _local(ts: Timestamp, zone: str | None = None) -> dt.datetime:
    when = _EPOCH + dt.timedelta(microseconds=ts.nanos // 1000)
    return when.astimezone(_zone(zone)) if zone is not None else when


_GETTERS = {
    "getFullYear": lambda d, ns: d.year,
    "getMonth": lambda d, ns: d.month - 1,
    "getDate": lambda d, ns: d.day,
    "getDayOfMonth": lambda d, ns: d.day - 1,
    "getDayOfWeek": lambda d, ns: (d.weekday() + 1) % 7,  # Sunday is 0
    "getDayOfYear": lambda d, ns: d.timetuple().tm_yday - 1,
    "getHours": lambda d, ns: d.hour,
    "getMinutes": lambda d, ns: d.minute,
    "getSeconds": lambda d, ns: d.second,
    "getMilliseconds": lambda d, ns: (ns % NANOS) // 10**6,
}


def _trunc_div(x: int, y: int) -> int:
    q = abs(x) // y
    return q if x >= 0 else -q


_DURATION_GETTERS = {
    "getHours": lambda n: _trunc_div(n, 3600 * NANOS),
    "getMinutes": lambda n: _trunc_div(n, 60 * NANOS),
    "getSeconds": lambda n: _trunc_div(n, NANOS),
    "getMilliseconds": lambda n: _trunc_div(n, 10**6) % 1000 if n >= 0 else -(_trunc_div(-n, 10**6) % 1000),
}


def _ts_minus_ts(x: Timestamp, y: Timestamp) -> Duration:
    nanos = x.nanos - y.nanos
    if abs(nanos) > INT64_MAX:
        raise CelError("duration out of range")
    return duration(nanos)


def register(define: Define) -> None:
    """Add the timestamp/duration overloads to the function library (the standard environment includes them)."""
    define("timestamp", (STRING,), TS, parse_timestamp)
    define("timestamp", (INT,), TS, lambda s: timestamp(s * NANOS))
    define("timestamp", (TS,), TS, lambda t: t)
    define("duration", (STRING,), DUR, parse_duration)
    define("duration", (DUR,), DUR, lambda d: d)
    define("int", (TS,), INT, lambda t: t.nanos // NANOS)
    define("string", (TS,), STRING, format_timestamp)
    define("string", (DUR,), STRING, format_duration)
    define("_+_", (TS, DUR), TS, lambda t, d: timestamp(t.nanos + d.nanos))
    define("_+_", (DUR, TS), TS, lambda d, t: timestamp(t.nanos + d.nanos))
    define("_+_", (DUR, DUR), DUR, lambda x, y: duration(x.nanos + y.nanos))
    define("_-_", (TS, DUR), TS, lambda t, d: timestamp(t.nanos - d.nanos))
    define("_-_", (TS, TS), DUR, _ts_minus_ts)
    define("_-_", (DUR, DUR), DUR, lambda x, y: duration(x.nanos - y.nanos))
    define("-_", (DUR,), DUR, lambda d: duration(-d.nanos))
    for name, get in _GETTERS.items():
        define(name, (TS,), INT, lambda t, g=get: g(_local(t), t.nanos), receiver=True)
        define(name, (TS, STRING), INT, lambda t, z, g=get: g(_local(t, z), t.nanos), receiver=True)
    for name, get_part in _DURATION_GETTERS.items():
        define(name, (DUR,), INT, lambda d, g=get_part: g(d.nanos), receiver=True)
