"""The operations policies can name, and what each declares it reveals or affects, read from the operation
JSON Schemas (capengine/schemas/operations/<name>.schema.json) so the policy layer knows them without importing
the host that implements them.

Each schema carries `"x-capengine": {"reveals": [...], "affects": [...]}`. A rule names a *class* of
operations as `class:reveals-content`, `class:reveals-metadata`, `class:affects-sidecars`, ...: one deny then
covers every operation that declares it, including operations registered after the policy was written.

Fail closed: an operation that declares nothing (no `x-capengine` in its schema, or no schema at all) is taken
to belong to *every* class when a deny rule asks, and to none when an allow rule asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from capengine.policy import globs
from capengine.policy.schemas import schema_dir

CLASS_PREFIX = "class:"
VERBS = ("reveals", "affects")
_SUFFIX = ".schema.json"


@attrs.frozen
class OperationInfo:
    name: str
    classes: frozenset[str]  # "reveals-content", "affects-sidecars", ...
    declared: bool  # False: the schema says nothing about what the operation reveals (fail closed)
    schema: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    source: str = ""  # where the schema was read from


@attrs.frozen
class Catalog:
    operations: Mapping[str, OperationInfo]

    def names(self) -> list[str]:
        return sorted(self.operations)

    def get(self, name: str) -> OperationInfo | None:
        return self.operations.get(name)

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(c for op in self.operations.values() for c in op.classes)

    def in_class(self, class_name: str, operation: str, deny: bool) -> bool:
        """Does `operation` belong to `class_name`? Undeclared operations belong to every class for a deny."""
        info = self.operations.get(operation)
        if info is None or not info.declared:
            return deny
        return class_name in info.classes

    def members(self, class_name: str) -> list[str]:
        return sorted(n for n, op in self.operations.items() if class_name in op.classes)

    def with_directories(self, directories: Iterable[str | Path]) -> Catalog:
        """This catalog plus the operation schemas in extra directories (operations an embedding registers
        besides the built-in ones); a later directory may not redefine an operation."""
        ops = dict(self.operations)
        for directory in directories:
            if not Path(directory).is_dir():
                raise ValueError(f"{directory} is not a directory")
            for path in sorted(Path(directory).glob("*" + _SUFFIX)):
                try:
                    schema = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: not valid JSON ({exc})") from None
                if not isinstance(schema, dict):
                    raise ValueError(f"{path}: an operation schema must be a JSON object")
                ops.setdefault(path.name[: -len(_SUFFIX)], _info(path.name[: -len(_SUFFIX)], schema, str(path)))
        return Catalog(MappingProxyType(ops))


def is_class_selector(selector: str) -> bool:
    return selector.startswith(CLASS_PREFIX)


def _info(name: str, schema: dict[str, Any], source: str) -> OperationInfo:
    declared = schema.get("x-capengine")
    classes: set[str] = set()
    if isinstance(declared, dict):
        for verb in VERBS:
            for what in declared.get(verb, ()):
                classes.add(f"{verb}-{what}")
    return OperationInfo(name, frozenset(classes), isinstance(declared, dict), MappingProxyType(schema), source)


@cache
def builtin() -> Catalog:
    """The operations whose schemas ship inside the package (what the host registers)."""
    ops = {}
    for entry in sorted((schema_dir() / "operations").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(_SUFFIX):
            name = entry.name[: -len(_SUFFIX)]
            ops[name] = _info(name, json.loads(entry.read_text(encoding="utf-8")), f"schemas/operations/{entry.name}")
    return Catalog(MappingProxyType(ops))


def selector_matches(selector: str, operation: str, deny: bool, catalog: Catalog | None = None) -> bool:
    """One entry of a rule's `operations`: a glob over names, or `class:<verb>-<what>`."""
    if is_class_selector(selector):
        return (catalog or builtin()).in_class(selector[len(CLASS_PREFIX):], operation, deny)
    return globs.glob_match(selector, operation)
