"""Small builders shared by the tests: write policy YAML to a temp dir and load it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def policy_yaml(name: str, rules: str, extensions: str = '["com.example.*"]') -> str:
    return (f"apiVersion: capengine/v1\nkind: Policy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  extensions: {extensions}\n  rules:\n"
            + textwrap.indent(textwrap.dedent(rules).lstrip("\n"), "    "))


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text) if not text.startswith("apiVersion") else text)
    return path


def load_set(directory: Path) -> PolicySet:
    result = load_paths([directory])
    assert not result.has_errors, [str(f) for f in result.findings]
    return PolicySet.from_load(result)


def request(operation: str = "vdfs.read_file", path: str = "/photos/a.jpg", extension: str = "com.example.app",
            library: str = LIB, **args) -> dict:
    return {"extension": extension, "operation": operation, "path": path, "library": library, "args": args}
