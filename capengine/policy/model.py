"""The policy data model: what a loaded policy file, policy test, request and decision are.

Plain frozen attrs classes with no behaviour beyond validation of the request, so that every other module
(loader, engine, lint, test runner, daemon) agrees on one vocabulary.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

import attrs

from capengine.errors import CapengineError
from capengine.policy import paths

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
    code: str
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


@attrs.frozen
class Policy:
    name: str
    description: str
    extensions: tuple[str, ...]
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    location: Location


class RequestError(CapengineError, ValueError):
    """A request that cannot be decided because one of its fields is malformed (e.g. a path escaping root)."""


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}")


@attrs.frozen
class Request:
    """A canonical request: the only shape a policy condition ever sees. Build it with `Request.parse`."""

    extension: str
    operation: str
    path: str = ""
    library: str = ""
    args: dict = attrs.field(factory=dict, eq=False)

    @classmethod
    def parse(cls, extension: object, operation: object, path: object = "", library: object = "",
              args: object = None) -> Request:
        for field, value in (("extension", extension), ("operation", operation)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise RequestError(f"{field} must be a dotted name, got {value!r}")
        if not isinstance(path, str):
            raise RequestError("path must be a string")
        try:
            canonical = paths.canonical_path(path)
        except paths.PathError as exc:
            raise RequestError(f"invalid path {path!r}: {exc}") from None
        return cls(extension, operation, canonical, canonical_library(library), _args(args))

    @classmethod
    def from_mapping(cls, data: dict) -> Request:
        unknown = set(data) - {"extension", "operation", "path", "library", "args"}
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        return cls.parse(data.get("extension"), data.get("operation"), data.get("path", ""),
                         data.get("library", ""), data.get("args"))

    def activation(self) -> dict:
        return {"extension": self.extension, "operation": self.operation, "path": self.path,
                "library": self.library, "args": self.args}

    def to_json(self) -> dict:
        return {"extension": self.extension, "operation": self.operation, "path": self.path,
                "library": self.library, "args": self.args}


def canonical_library(library: object) -> str:
    if library in ("", None):
        return ""
    if not isinstance(library, str):
        raise RequestError("library must be a UUID string")
    try:
        return str(uuid.UUID(library))
    except ValueError:
        raise RequestError(f"library must be a UUID, got {library!r}") from None


def _args(args: object) -> dict:
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise RequestError("args must be an object")
    return args


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

    def to_json(self) -> dict:
        return {"allowed": self.allowed, "decision": "allow" if self.allowed else "deny",
                "rules": list(self.rules), "message": self.message,
                "errors": [{"rule": e.rule, "message": e.message} for e in self.errors],
                "revision": self.revision}


@attrs.frozen
class TestCase:
    name: str
    request: dict  # raw; parsed when run, so an invalid request is a test of canonicalisation
    expect: Effect
    rule: str | None
    location: Location


@attrs.frozen
class TestSuite:
    name: str
    cases: tuple[TestCase, ...]
    location: Location
