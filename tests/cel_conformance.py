"""Runner for the CEL conformance cases vendored in tests/cel-spec (format: that folder's README).

Used by tests/test_cel_conformance.py, and runnable on its own to print pass rates per file and section:
    python tests/cel_conformance.py [DIR]
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

from capengine.cel.compiler import compile_expression
from capengine.cel.standard import STANDARD
from capengine.cel.types import parse_decl
from capengine.cel.values import CelError, CelType, UInt, equals, type_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "tests" / "cel-spec"


def conformance_dir() -> Path:
    return Path(os.environ.get("CEL_CONFORMANCE_DIR", DEFAULT_DIR))


def decode(v: dict) -> object:
    t, raw = v["type"], v.get("value")
    if t == "int":
        return int(raw)
    if t == "uint":
        return UInt(int(raw))
    if t == "double":
        return float(raw)
    if t == "bytes":
        return base64.b64decode(raw)
    if t in ("string", "bool", "null"):
        return raw
    if t == "list":
        return [decode(x) for x in raw]
    if t == "map":
        return {decode(k): decode(x) for k, x in raw}
    if t == "type":
        return CelType({"timestamp": "google.protobuf.Timestamp",
                        "duration": "google.protobuf.Duration"}.get(raw, raw))
    from capengine.cel.timestamps import parse_duration, parse_timestamp

    if t == "timestamp":
        return parse_timestamp(raw)
    if t == "duration":
        return parse_duration(raw)
    raise ValueError(f"unknown value type {t}")


def same(actual: object, expected: object) -> bool:
    """Exact comparison: same CEL type all the way down (equals() would accept 1 == 1u)."""
    if type_name(actual) != type_name(expected):
        return False
    if type(actual) is float:
        return (math.isnan(actual) and math.isnan(expected)) or (
            actual == expected and math.copysign(1, actual) == math.copysign(1, expected))
    if type(actual) in (list, tuple):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected))
    if type(actual) is dict:
        return len(actual) == len(expected) and all(
            any(equals(k, ek) and type_name(k) == type_name(ek) and same(v, ev) for ek, ev in expected.items())
            for k, v in actual.items())
    return actual == expected


def run_case(case: dict) -> tuple[bool, str]:
    decls = None if case.get("disable_check") else {k: parse_decl(v) for k, v in case.get("type_env", {}).items()}
    try:
        bindings = {k: decode(v) for k, v in case.get("bindings", {}).items()}
    except Exception as exc:  # a binding type this engine does not model
        return False, f"binding not supported: {exc}"
    program, errors = compile_expression(case["expr"], decls, STANDARD)
    expect_error = "error" in case["expect"]
    if errors:
        return expect_error, f"compile error: {getattr(errors[0], 'message', errors[0])}"
    try:
        result = program.evaluate(bindings)
    except CelError as exc:
        return expect_error, f"eval error: {exc}"
    if expect_error:
        return False, f"expected an error, got {result!r}"
    try:
        expected = decode(case["expect"]["value"])
    except Exception as exc:
        return False, f"expected value not supported: {exc}"
    return same(result, expected), f"got {result!r}, expected {expected!r}"


def iter_cases(directory: Path):
    for path in sorted(directory.rglob("*.json")):
        data = json.loads(path.read_text())
        rel = path.relative_to(directory).as_posix()
        for section in data["sections"]:
            for case in section["tests"]:
                yield rel, section["name"], case


def report(directory: Path) -> dict[tuple[str, str], list[int]]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for rel, section, case in iter_cases(directory):
        ok, _ = run_case(case)
        counts[(rel, section)][0] += ok
        counts[(rel, section)][1] += 1
    return counts


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else conformance_dir()
    totals = [0, 0]
    for (rel, section), (ok, n) in sorted(report(directory).items()):
        totals[0] += ok
        totals[1] += n
        print(f"{rel:28} {section:36} {ok:4}/{n:<4} {100 * ok / n:5.1f}%")
    print(f"{'total':65} {totals[0]:4}/{totals[1]:<4} {100 * totals[0] / max(totals[1], 1):5.1f}%")
