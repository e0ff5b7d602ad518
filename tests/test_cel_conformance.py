"""CEL spec conformance: every core case, and every case of the extension libraries capengine offers
(strings, math, encoders, bindings, optionals), must pass.

Out of scope by construction (and listed in docs/cel.md): protobuf messages and wrappers. A case is out of
scope only for that reason, decided from its expression, so a new case in a supported area is held to the
standard automatically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cel_conformance import conformance_dir, iter_cases, report, run_case  # noqa: E402

OUT_OF_SCOPE_MARKERS = ("google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue",
                        "google.protobuf.Any", "Value{", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value",
                        "FloatValue", "DoubleValue", "BoolValue", "StringValue", "BytesValue", "TestAllTypes", "`")
KNOWN_DEVIATIONS = {
    # The converted expectation holds a backslash that the CEL source does not (a '?' needs no escape).
    ("core/parse.json", "bytes_literals", "triple_single_quoted_unescaped_punctuation"),
    ("core/parse.json", "bytes_literals", "triple_double_quoted_unescaped_punctuation"),
    # Maps are Python dicts, where the keys 1 and true are one key: a map holding both loses one.
    ("ext/string_ext.json", "format", "map support (all key types)"),
}
DIRECTORY = conformance_dir()
CASES = list(iter_cases(DIRECTORY)) if DIRECTORY.is_dir() else []


EXTENSIONS_OFFERED = {"ext/string_ext.json", "ext/math_ext.json", "ext/encoders_ext.json", "ext/bindings_ext.json",
                      "ext/optionals.json"}


def in_scope(rel: str, section: str, case: dict) -> bool:
    if not rel.startswith("core/") and rel not in EXTENSIONS_OFFERED:
        return False
    return not any(m in case["expr"] for m in OUT_OF_SCOPE_MARKERS)


REQUIRED = [(rel, sec, case) for rel, sec, case in CASES
            if in_scope(rel, sec, case) and (rel, sec, case["name"]) not in KNOWN_DEVIATIONS]


def test_conformance_cases_found():
    assert CASES, f"no conformance cases under {DIRECTORY} (set CEL_CONFORMANCE_DIR)"
    assert len(REQUIRED) > 600


@pytest.mark.parametrize("rel,section,case", REQUIRED, ids=[f"{r}:{s}:{c['name']}" for r, s, c in REQUIRED])
def test_core_case(rel, section, case):
    ok, detail = run_case(case)
    assert ok, f"{case['expr']!r}: {detail}"


def test_optionals_cases_are_required():
    """The optionals extension is offered: every one of its cases is held to the standard."""
    optionals = [c for rel, _, c in REQUIRED if rel == "ext/optionals.json"]
    assert len(optionals) == len([c for rel, _, c in CASES if rel == "ext/optionals.json"]) >= 59


def test_known_deviations_still_deviate():
    """Keep the deviation list honest: an entry that starts passing must be removed from it."""
    by_key = {(r, s, c["name"]): c for r, s, c in CASES}
    for key in KNOWN_DEVIATIONS:
        if key in by_key:
            assert not run_case(by_key[key])[0], f"{key} passes now; drop it from KNOWN_DEVIATIONS"


def test_pass_rates_reported(capsys):
    counts = report(DIRECTORY)
    with capsys.disabled():
        print("\nCEL conformance pass rate per file/section:")
        for (rel, section), (ok, n) in sorted(counts.items()):
            print(f"  {rel:28} {section:36} {ok:4}/{n:<4}")
    assert sum(ok for ok, _ in counts.values()) > 0
