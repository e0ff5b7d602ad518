"""CEL parse speed: µs per parse of typical policy conditions (source -> capengine AST, no cache).

`capengine check` of thousands of policy files spends most of its time parsing conditions. Baseline measured in
the same run: cel-python's own parser (`celpy.celparser.CELParser`, what capengine used before it had its own
grammar), parse tree only, so the baseline leaves out the AST building capengine's figure includes.

Also prints the parser's one-time set-up: loading the pre-built LALR tables against building them from cel.lark.

Run: python bench/bench_cel_parse.py [ROUNDS]   (default 7 rounds of 1,000 parses per condition)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from celpy import celparser

from capengine.cel import ast, grammar

CONDITIONS = [
    'path.under("/photos") && has(args.length) && args.length < 1000',
    'library == "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6" && path.glob("/photos/**/*.jpg")',
    'args.?length.orValue(0) > 1000',
    'operation in ["vdfs.read_file", "vdfs.stat"] && !path.matches("(?i)\\\\.(key|pem)$")',
]


def time_us(parse: Callable[[str], object], source: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        parse(source)
    return (time.perf_counter() - start) / n * 1e6


def spread(us: list[float], unit: str = " µs") -> str:
    return f"median {statistics.median(us):6.2f}{unit}  min {min(us):6.2f}  max {max(us):6.2f}"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    start = time.perf_counter()
    grammar.parser()
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    grammar.build()
    built = time.perf_counter() - start
    print(f"parser set-up (once per process): pre-built tables {1000 * loaded:.0f} ms, building them from the "
          f"grammar {1000 * built:.0f} ms")
    ours = ast.parse.__wrapped__  # without the lru_cache: every call parses
    reference = celparser.CELParser()
    for source in CONDITIONS:
        try:
            reference.parse(source)
            baseline: Callable[[str], object] | None = reference.parse
        except celparser.CELParseError:
            baseline = None
        for _ in range(100):
            ours(source)
        mine, base = [], []
        for _ in range(rounds):  # interleaved, so a burst of load on the shared machine hits both
            mine.append(time_us(ours, source, 1000))
            if baseline is not None:
                base.append(time_us(baseline, source, 1000))
        print(source)
        print(f"  capengine (AST)        {spread(mine)}")
        if baseline is None:
            print("  cel-python             cannot parse it (no optionals syntax)")
            continue
        ratios = [b / m for b, m in zip(base, mine)]
        print(f"  cel-python (tree only) {spread(base)}")
        print(f"  cel-python / capengine {spread(ratios, '×')}")


if __name__ == "__main__":
    main()
