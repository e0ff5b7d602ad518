"""The JSON Schemas shipped inside the package (capengine/schemas/, also reachable as the top-level
`schemas/` of a checkout), read with importlib.resources so an installed wheel finds them wherever it lives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import fastjsonschema
import jsonschema
from referencing import Registry, Resource


def schema_dir() -> Traversable:
    return resources.files("capengine") / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """`name` relative to the schema directory, e.g. "policy.schema.json" or "operations/vdfs.stat.schema.json"."""
    node = schema_dir()
    for part in name.split("/"):
        node = node / part
    loaded: dict[str, Any] = json.loads(node.read_text(encoding="utf-8"))
    return loaded


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one top-level schema, able to resolve `$ref`s to its siblings by file name or `$id`."""
    schema = load_schema(name)
    siblings = [(f.name, load_schema(f.name)) for f in schema_dir().iterdir() if f.name.endswith(".schema.json")]
    registry: Registry[Any] = Registry().with_resources(
        (key, Resource.from_contents(doc))
        for file_name, doc in siblings for key in (file_name, doc.get("$id", file_name)))
    cls = jsonschema.validators.extend(jsonschema.validators.validator_for(schema), {"pattern": _pattern})
    instance: jsonschema.protocols.Validator = cls(schema, registry=registry)
    return instance


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    """`pattern` with the ECMA-262 meaning JSON Schema gives it. jsonschema runs Python's `re.search`, whose
    `$` also matches before a final newline: "10/second\\n" passed `^...(second|minute|hour)$` (and the loader
    then failed on it), so did a rule id or policy name ending in a newline, which splits every log line
    naming it. Here `$` is the end of the text, and `\\d`/`\\w` are ASCII as in ECMA-262 (so is `\\s`: no
    shipped schema uses it)."""
    if validator.is_type(instance, "string") and _ecma_regex(pattern).search(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled with each `$` outside a character class as `\\Z` (the end of the text only)."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append("\\Z" if char == "$" and not in_class else char)
        i += 1
    return re.compile("".join(out), re.ASCII)


@cache
def conforms(name: str) -> Callable[[Any], bool]:
    """A fast yes/no for one top-level schema: fastjsonschema compiles it to Python once (about 20x faster than
    jsonschema's interpreter on a policy document). Only a "yes" is trusted: a document it accepts jsonschema
    (with the ECMA-262 `$` of _pattern, which fastjsonschema's matches) accepts too
    (tests/test_schema_conforms.py attacks that); on "no" the caller asks `validator(name)` for
    the errors, worded as before, and jsonschema's verdict stands."""
    compiled = fastjsonschema.compile(load_schema(name), handlers={"https": _sibling}, use_default=False)

    def check(instance: Any) -> bool:
        try:
            compiled(instance)
        except fastjsonschema.JsonSchemaException:
            return False
        return True
    return check


def _sibling(uri: str) -> dict[str, Any]:
    """`$ref`s by `$id` (https://capengine.dev/schemas/<file>) resolve to the shipped file, never the network."""
    name = uri.rsplit("/", 1)[-1]
    if not name.endswith(".schema.json") or "/" in name:
        raise fastjsonschema.JsonSchemaDefinitionException(f"unknown schema reference {uri}")
    return load_schema(name)
