"""The JSON Schemas shipped inside the package (capengine/schemas/, also reachable as the top-level
`schemas/` of a checkout), read with importlib.resources so an installed wheel finds them wherever it lives.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

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
    cls = jsonschema.validators.validator_for(schema)
    instance: jsonschema.protocols.Validator = cls(schema, registry=registry)
    return instance
