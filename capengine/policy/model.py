"""The policy data model: what a loaded policy file, policy test, request and decision are.

Plain frozen attrs classes with no behaviour beyond validation of the request, so that every other module
(loader, engine, lint, test runner, daemon) agrees on one vocabulary.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

from capengine.errors import CapengineError
from capengine.policy import paths
from capengine.policy.codes import Code

Effect = Literal["allow", "deny"]
Severity = Literal["error", "warning", "note"]


@attrs.frozen(order=True)
class Location:
    file: str
    line: int = 0  # 1-based; 0 when the file as a whole is meant
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file


@attrs.frozen
class Finding:
    """One problem found in a policy or test file (the unit `capengine check` reports)."""

    location: Location
    severity: Severity
    code: Code = attrs.field(converter=Code)  # a string naming an unknown code is a ValueError here
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity} {self.code} {self.message}"


@attrs.frozen
class Rule:
    policy: str
    id: str
    effect: Effect
    operations: tuple[str, ...]
    condition: str | None
    message: str | None
    location: Location
    operation_locations: tuple[Location, ...] = attrs.field(default=(), eq=False)  # one per operations entry

    @property
    def qualified_id(self) -> str:
        return f"{self.policy}/{self.id}"


@attrs.frozen
class Limit:
    operations: tuple[str, ...]
    count: int
    per_seconds: int
    burst: int
    cost: int
    location: Location
    operation_locations: tuple[Location, ...] = attrs.field(default=(), eq=False)


@attrs.frozen
class Policy:
    name: str
    description: str
    extensions: tuple[str, ...]
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    location: Location
    extension_locations: tuple[Location, ...] = attrs.field(default=(), eq=False)


class RequestError(CapengineError, ValueError):
    """A request that cannot be decided because one of its fields is malformed (e.g. a path escaping root)."""


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}")


def _dotted_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise RequestError(f"{field} must be a dotted name, got {value!r}")
    return value


def _extension_name(value: object) -> str:
    return _dotted_name("extension", value)


def _operation_name(value: object) -> str:
    return _dotted_name("operation", value)


def canonical_request_path(path: object) -> str:
    """The one spelling of a library path every policy sees ("" for none); RequestError for anything else."""
    if not isinstance(path, str):
        raise RequestError("path must be a string")
    try:
        return paths.canonical_path(path)
    except paths.PathError as exc:
        raise RequestError(f"invalid path {path!r}: {exc}") from None


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_library(library: object) -> str:
    if library in ("", None):
        return ""
    if type(library) is str and _CANONICAL_UUID.fullmatch(library):  # str(UUID(x)) == x: skip 1.5 us per call
        return library
    if not isinstance(library, str):
        raise RequestError("library must be a UUID string")
    try:
        return str(uuid.UUID(library))
    except ValueError:
        raise RequestError(f"library must be a UUID, got {library!r}") from None


_EMPTY_ARGS: Mapping[str, Any] = MappingProxyType({})
MAX_ARGS_DEPTH = 64  # nesting of args; a guest's JSON is bounded the same way (BridgeLimits.max_json_depth)
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1  # CEL int is int64, uint is uint64: nothing outside both exists


def _json_value(value: object, where: str, depth: int) -> Any:
    """`value` checked to be one a JSON document (and so a CEL condition) can hold, copied (lists and objects
    afresh, so the caller cannot change it after the check). RequestError for anything else: a NaN compares
    false with everything and an int beyond int64 makes CEL arithmetic fail, so either would slip past a deny
    written `args.size > N` that a real number trips."""
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(f"{where} holds a lone surrogate, which is not text") from None
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= UINT_MAX:
            raise RequestError(f"{where} = {value} is outside the int64/uint64 range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"{where} is {value}, which is not a JSON number")
        return value
    if depth >= MAX_ARGS_DEPTH:
        raise RequestError(f"{where} is nested more than {MAX_ARGS_DEPTH} levels deep")
    if isinstance(value, list):
        return [_json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return _json_object(value, where, depth + 1)
    raise RequestError(f"{where} is a {type(value).__name__}; request args hold only JSON values (null, bool, "
                       "number, string, array, object)")


def _json_object(value: Mapping[Any, Any], where: str, depth: int) -> dict[str, Any]:
    copy = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise RequestError(f"{where} has a key {key!r} that is not a string")
        if type(key) is str and key.isascii():  # the common case, without the f-strings naming where it is
            kind = type(item)
            if (kind is str and item.isascii()) or item is None or kind is bool \
                    or (kind is int and INT_MIN <= item <= UINT_MAX) or (kind is float and math.isfinite(item)):
                copy[key] = item
                continue
        copy[_json_value(key, f"{where} key", depth)] = _json_value(item, f"{where}.{key}", depth)
    return copy


def _args(args: object) -> Mapping[str, Any]:
    if args is None:
        return _EMPTY_ARGS
    if not isinstance(args, Mapping):
        raise RequestError("args must be an object")
    return MappingProxyType(_json_object(args, "args", 0))


@attrs.frozen
class Request:
    """A canonical request: the only shape a policy condition ever sees.

    Every field is checked or canonicalised by its converter/validator, so no caller can build a Request with
    a raw path ("/a/../b", NFD), an upper-case library id or a malformed name: `Request(...)`, `parse` and
    `from_mapping` all raise RequestError for those. `args` is a read-only view of a deep copy holding only JSON
    values (no NaN, no int beyond uint64, no tuple, set or bytes): checked once here, so `decide` never is.
    """

    extension: str = attrs.field(converter=_extension_name)
    operation: str = attrs.field(converter=_operation_name)
    path: str = attrs.field(default="", converter=canonical_request_path)
    library: str = attrs.field(default="", converter=canonical_library)
    args: Mapping[str, Any] = attrs.field(default=None, converter=_args, eq=False)

    @classmethod
    def parse(cls, extension: object, operation: object, path: object = "", library: object = "",
              args: object = None) -> Request:
        return cls(extension, operation, path, library, args)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Request:
        if not isinstance(data, Mapping):
            raise RequestError(f"the request must be an object, not {type(data).__name__}")
        unknown = set(data) - {"extension", "operation", "path", "library", "args"}
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls.parse(data.get("extension"), data.get("operation"), data.get("path", ""),
                         data.get("library", ""), data.get("args"))

    def activation(self) -> dict[str, Any]:
        return {"extension": self.extension, "operation": self.operation, "path": self.path,
                "library": self.library, "args": self.args}

    def to_json(self) -> dict[str, Any]:
        return {"extension": self.extension, "operation": self.operation, "path": self.path,
                "library": self.library, "args": dict(self.args)}


@attrs.frozen
class EvalError:
    rule: str
    message: str


@attrs.frozen
class Decision:
    allowed: bool
    rules: tuple[str, ...]  # the deciding rules, "<policy>/<rule>"; empty for the default deny
    message: str
    errors: tuple[EvalError, ...] = ()
    revision: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "decision": "allow" if self.allowed else "deny",
                "rules": list(self.rules), "message": self.message,
                "errors": [{"rule": e.rule, "message": e.message} for e in self.errors],
                "revision": self.revision}


def _read_only(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))


@attrs.frozen
class TestCase:
    name: str
    # raw (parsed when run, so an invalid request is a test of canonicalisation), read-only
    request: Mapping[str, Any] = attrs.field(converter=_read_only)
    expect: Effect
    rule: str | None
    location: Location


@attrs.frozen
class TestSuite:
    name: str
    cases: tuple[TestCase, ...]
    location: Location
