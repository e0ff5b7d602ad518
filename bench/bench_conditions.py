"""Every condition shape of the bundled and bench policies, compiled, against the same logic hand-written as a
Python function (the baseline, timed in the same run). Target: compiled <= 2x hand-written.

The hand-written versions are what a careful Python programmer would write for the same semantics on the
same inputs: the request's activation dict, RE2 for regexes (linear time is required), precompiled globs.

Run: python bench/bench_conditions.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capengine.cel.compiler import compile_expression  # noqa: E402
from capengine.cel.standard import searcher  # noqa: E402
from capengine.policy.functions import POLICY_ENVIRONMENT  # noqa: E402
from capengine.policy.globs import compile_glob  # noqa: E402
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS  # noqa: E402
from capengine.policy.model import Request  # noqa: E402

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
_PNG = searcher(r"^/photos/[a-z0-9/]+[.](png|jpg)$")
_PRIVATE = compile_glob("/photos/**/private/**", "/").fullmatch
_GIT = compile_glob("/**/.git/**", "/").fullmatch


def _under(p: str, d: str) -> bool:
    return p == d or p.startswith(d + "/")


Hand = Callable[[dict[str, Any]], bool]
SHAPES: list[tuple[str, Hand, dict[str, Any]]] = [
    (f'library == "{LIB}" && path.under("/photos")',
     lambda a: a["library"] == LIB and _under(a["path"], "/photos"), {}),
    ('library != "" && (path.under("/documents") || path.under("/shared"))',
     lambda a: a["library"] != "" and (_under(a["path"], "/documents") or _under(a["path"], "/shared")), {}),
    ('path.under("/.ssh") || path.under("/secrets") || path.glob("/**/.git/**")',
     lambda a: _under(a["path"], "/.ssh") or _under(a["path"], "/secrets") or _GIT(a["path"]) is not None, {}),
    ('path.glob("/photos/**/private/**")', lambda a: _PRIVATE(a["path"]) is not None, {}),
    ('path.matches("^/photos/[a-z0-9/]+[.](png|jpg)$")', lambda a: _PNG(a["path"]), {}),
    ('has(args.length) && args.length > 16777216',
     lambda a: "length" in a["args"] and a["args"]["length"] > 16777216, {"length": 4096}),
    ('path.under("/photos") && args.kind == "ocr-text"',
     lambda a: _under(a["path"], "/photos") and a["args"]["kind"] == "ocr-text", {"kind": "ocr-text"}),
    ('args.name.startsWith("sync.")', lambda a: a["args"]["name"].startswith("sync."), {"name": "sync.token"}),
    ('args.size < 1000', lambda a: a["args"]["size"] < 1000, {"size": 10}),
    ('args.kind in ["ocr-text", "thumbnail", "summary"]',
     lambda a: a["args"]["kind"] in ("ocr-text", "thumbnail", "summary"), {"kind": "summary"}),
]


def per_call_us(fn: Callable[[Any], object], arg: Any, rounds: int = 300, batch: int = 200) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn(arg)
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def main() -> None:
    print(f"{'condition':70} {'compiled us':>11} {'hand us':>8} {'ratio':>6}")
    ratios = []
    for source, hand, args in SHAPES:
        program, errors = compile_expression(source, POLICY_DECLS, POLICY_ENVIRONMENT, total=True,
                                             costs=POLICY_COSTS)
        assert program is not None, (source, errors)
        activation = Request.parse("com.example.app", "vdfs.read_file", "/photos/2024/private/a.png", LIB,
                                   args).activation()
        assert program.evaluate(activation) == hand(activation), source
        compiled, baseline = per_call_us(program.evaluate, activation), per_call_us(hand, activation)
        ratios.append(compiled / baseline)
        shown = source if len(source) <= 70 else source[:67] + "..."
        print(f"{shown:70} {compiled:>11.3f} {baseline:>8.3f} {compiled / baseline:>5.1f}x")
    print(f"ratio median {statistics.median(ratios):.2f}x, worst {max(ratios):.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
