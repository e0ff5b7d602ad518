"""Every condition shape of the bundled policies (policies/) and of the bench policies (bench_decide, bench_index,
bench_analyze, bench_startup), compiled as the loader compiles it (args typed from the operation's schema, cost
estimated), against the same logic hand-written as a Python function: the baseline, timed in the same run.
Target: generated (cel/codegen.py) <= 2x hand-written. The closure compiler's ratio is printed alongside.

The hand-written versions are what a careful Python programmer would write for the same semantics on the
same inputs: the request's activation dict, RE2 for regexes (linear time is required, called as
standard.searcher does), precompiled globs. Each shape is checked to agree with its hand-written version on a
matching and a non-matching request before it is timed.

Spread: ROUNDS rounds, each timing generated, closures and hand-written interleaved (median of batches); the
ratio is printed as the median over rounds and its min-max.

Run: python bench/bench_conditions.py [ROUNDS]
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
from capengine.policy import arg_types, operations  # noqa: E402
from capengine.policy.functions import POLICY_ENVIRONMENT  # noqa: E402
from capengine.policy.globs import compile_glob  # noqa: E402
from capengine.policy.loader import POLICY_COSTS, POLICY_DECLS, load_paths  # noqa: E402
from capengine.policy.model import Request  # noqa: E402

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
ROOT = Path(__file__).resolve().parent.parent
_IMAGE = searcher(r"(?i)\.(png|jpe?g|tiff?|webp)$")
_JPG7 = searcher(r"^/dir7/[a-z]+[.]jpg$")
_SVC7 = searcher(r"^svc7-[a-z]+$")
_PRIVATE = compile_glob("/photos/**/private/**", "/", trailing_zero=True).fullmatch
_GIT = compile_glob("/**/.git/**", "/", trailing_zero=True).fullmatch
_PNG7 = compile_glob("/dir7/**/*.png", "/", trailing_zero=True).fullmatch
_AREA7 = compile_glob("/area7/*.jpg", "/", trailing_zero=True).fullmatch


def _under(p: str, d: str) -> bool:
    return p == d or p.startswith(d + "/")


Hand = Callable[[dict[str, Any]], bool]


class Shape:
    """A condition, the operation its rule names (which types `args`), a hand-written twin, and two requests
    (path, args): one it matches and one it does not."""

    def __init__(self, source: str, operation: str | None, hand: Hand, hit: tuple[str, dict[str, Any]],
                 miss: tuple[str, dict[str, Any]], where: str) -> None:
        self.source, self.operation, self.hand, self.hit, self.miss, self.where = \
            source, operation, hand, hit, miss, where


SHAPES = [
    # policies/ (every condition the bundled policies hold; checked below)
    Shape('args.name.startsWith("sync.")', "credentials.get", lambda a: a["args"]["name"].startswith("sync."),
          ("/", {"name": "sync.token"}), ("/", {"name": "mail.token"}), "cloud-sync"),
    Shape('library != "" && (path.under("/documents") || path.under("/shared"))', "vdfs.read_file",
          lambda a: a["library"] != "" and (_under(a["path"], "/documents") or _under(a["path"], "/shared")),
          ("/shared/a.txt", {}), ("/photos/a.png", {}), "cloud-sync"),
    Shape(f'library == "{LIB}" && path.under("/docs")', "vdfs.read_file",
          lambda a: a["library"] == LIB and _under(a["path"], "/docs"), ("/docs/a", {}), ("/docsx/a", {}),
          "hello-wat"),
    Shape('path.under("/.ssh") || path.under("/secrets") || path.glob("/**/.git/**")', "vdfs.read_file",
          lambda a: _under(a["path"], "/.ssh") or _under(a["path"], "/secrets") or _GIT(a["path"]) is not None,
          ("/src/.git/config", {}), ("/photos/a.png", {}), "org-baseline"),
    Shape('path.under("/.capengine")', "vdfs.read_file", lambda a: _under(a["path"], "/.capengine"),
          ("/.capengine/keys", {}), ("/photos/a.png", {}), "org-baseline"),
    Shape('has(args.length) && args.length > 16777216', "vdfs.read_file",
          lambda a: "length" in a["args"] and a["args"]["length"] > 16777216,
          ("/a", {"length": 2**25}), ("/a", {"length": 4096}), "org-baseline"),
    Shape(f'library == "{LIB}" && path.under("/photos")', "vdfs.stat",
          lambda a: a["library"] == LIB and _under(a["path"], "/photos"), ("/photos/a.png", {}), ("/docs/a", {}),
          "photo-ocr"),
    Shape(f'library == "{LIB}" && path.under("/photos") && path.matches("(?i)\\\\.(png|jpe?g|tiff?|webp)$")\n',
          "vdfs.read_file",
          lambda a: a["library"] == LIB and _under(a["path"], "/photos") and _IMAGE(a["path"]),
          ("/photos/2024/a.PNG", {}), ("/photos/2024/a.txt", {}), "photo-ocr"),
    Shape('path.under("/photos") && args.kind == "ocr-text"', "vdfs.write_sidecar",
          lambda a: _under(a["path"], "/photos") and a["args"]["kind"] == "ocr-text",
          ("/photos/a.png", {"kind": "ocr-text"}), ("/photos/a.png", {"kind": "thumb"}), "photo-ocr"),
    Shape('path.glob("/photos/**/private/**")', "vdfs.read_file", lambda a: _PRIVATE(a["path"]) is not None,
          ("/photos/2024/private/a.png", {}), ("/photos/2024/a.png", {}), "photo-ocr"),
    # bench_index (mixed workload; bench_decide's shapes are photo-ocr's and org-baseline's)
    Shape('path.glob("/dir7/**/*.png")', "vdfs.read_file", lambda a: _PNG7(a["path"]) is not None,
          ("/dir7/a/b.png", {}), ("/dir7/a/b.jpg", {}), "bench_index"),
    Shape('path.under("/dir7") && path.matches("^/dir7/[a-z]+[.]jpg$")', "vdfs.read_file",
          lambda a: _under(a["path"], "/dir7") and _JPG7(a["path"]), ("/dir7/photo.jpg", {}),
          ("/dir7/photo.png", {}), "bench_index"),
    Shape('has(args.length) && args.length == 7', "vdfs.read_file",
          lambda a: "length" in a["args"] and a["args"]["length"] == 7, ("/a", {"length": 7}), ("/a", {"length": 8}),
          "bench_index"),
    Shape(f'library == "{LIB}" && path.under("/dir7") && has(args.offset) && args.offset < 1000', "vdfs.read_file",
          lambda a: a["library"] == LIB and _under(a["path"], "/dir7") and "offset" in a["args"]
          and a["args"]["offset"] < 1000, ("/dir7/a", {"offset": 10}), ("/dir7/a", {"offset": 5000}), "bench_index"),
    # bench_analyze
    Shape('args.name.matches("^svc7-[a-z]+$")', "credentials.get", lambda a: _SVC7(a["args"]["name"]),
          ("/", {"name": "svc7-mail"}), ("/", {"name": "svc8-mail"}), "bench_analyze"),
    Shape('args.name.endsWith(".root")', "credentials.get", lambda a: a["args"]["name"].endswith(".root"),
          ("/", {"name": "svc7.root"}), ("/", {"name": "svc7.user"}), "bench_analyze"),
    Shape('args.name == "svc7.admin"', "credentials.get", lambda a: a["args"]["name"] == "svc7.admin",
          ("/", {"name": "svc7.admin"}), ("/", {"name": "svc7.user"}), "bench_analyze"),
    Shape('path.glob("/area7/*.jpg")', "vdfs.read_file", lambda a: _AREA7(a["path"]) is not None,
          ("/area7/a.jpg", {}), ("/area7/a/b.jpg", {}), "bench_analyze"),
    # bench_startup
    Shape(f'library == "{LIB}" && path.under("/d7") && !path.endsWith(".key")', "vdfs.read_file",
          lambda a: a["library"] == LIB and _under(a["path"], "/d7") and not a["path"].endswith(".key"),
          ("/d7/a.txt", {}), ("/d7/a.key", {}), "bench_startup"),
    # args of an operation with no schema (untyped: every value's type is checked at run time)
    Shape('args.size < 1000', None, lambda a: a["args"]["size"] < 1000, ("/", {"size": 10}), ("/", {"size": 5000}),
          "untyped"),
    Shape('args.kind in ["ocr-text", "thumbnail", "summary"]', None,
          lambda a: a["args"]["kind"] in ("ocr-text", "thumbnail", "summary"), ("/", {"kind": "summary"}),
          ("/", {"kind": "raw"}), "untyped"),
    Shape('args.name.matches("^svc7-[a-z]+$")', None, lambda a: _SVC7(a["args"]["name"]),
          ("/", {"name": "svc7-mail"}), ("/", {"name": "svc8-mail"}), "untyped"),
]


def per_call_us(fn: Callable[[Any], object], arg: Any, rounds: int = 40, batch: int = 200) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn(arg)
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):4.2f}x [{min(values):.2f}-{max(values):.2f}]"


def check_coverage() -> None:
    """Every condition of the bundled policies is a shape here (a new policy must add its twin)."""
    loaded = load_paths([ROOT / "policies"])
    conditions = {r.condition for p in loaded.policies for r in p.rules if r.condition}
    missing = conditions - {s.source for s in SHAPES}
    assert not missing, f"bundled conditions without a hand-written twin: {missing}"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    check_coverage()
    catalog = operations.builtin()
    print(f"{'condition':62} {'from':13} {'gen us':>7} {'hand us':>7} {'generated/hand':>20} {'closures/hand':>20}")
    medians, closure_medians = [], []
    for shape in SHAPES:
        info = catalog.get(shape.operation) if shape.operation else None
        record = arg_types.args_type([info]) if info is not None else None
        decls = POLICY_DECLS if record is None else {**POLICY_DECLS, "args": record}
        program, errors = compile_expression(shape.source, decls, POLICY_ENVIRONMENT, total=True, costs=POLICY_COSTS)
        assert program is not None and program.generated is not None, (shape.source, errors)
        hit, miss = (Request.parse("com.example.app", shape.operation or "bench.op", path, LIB, args).activation()
                     for path, args in (shape.hit, shape.miss))
        for activation, want in ((hit, True), (miss, False)):
            assert program.evaluate(activation) is want and bool(shape.hand(activation)) is want, shape.source
            assert program.evaluate_closures(activation) is want, shape.source
        ratios, closure_ratios, gen_us, hand_us = [], [], [], []
        for _ in range(rounds):
            g = per_call_us(program.evaluate, hit)
            c = per_call_us(program.evaluate_closures, hit)
            h = per_call_us(shape.hand, hit)
            ratios.append(g / h)
            closure_ratios.append(c / h)
            gen_us.append(g)
            hand_us.append(h)
        medians.append(statistics.median(ratios))
        closure_medians.append(statistics.median(closure_ratios))
        text = shape.source.strip().replace(LIB, "LIB")
        shown = text if len(text) <= 62 else text[:59] + "..."
        metered = "*" if program.metered else " "
        print(f"{shown:62} {shape.where:12}{metered} {statistics.median(gen_us):>7.3f} "
              f"{statistics.median(hand_us):>7.3f} {spread(ratios):>20} {spread(closure_ratios):>20}")
    print(f"(* metered: cost charged at run time, guest-sized input)  {len(SHAPES)} shapes, {rounds} rounds")
    print(f"generated/hand: median of medians {statistics.median(medians):.2f}x, worst median {max(medians):.2f}x "
          f"(target <= 2x: {'met' if max(medians) <= 2 else 'NOT met'}); closures/hand: median "
          f"{statistics.median(closure_medians):.2f}x, worst {max(closure_medians):.2f}x")


if __name__ == "__main__":
    main()
