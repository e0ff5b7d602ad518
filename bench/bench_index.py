"""decide() when many rules share one (extension, operation) — how a real org writes policies — with the rule
index against the plain scan of the same set (the baseline, measured in the same run), and against Cedar
(cedarpy) given the same per-action split.

Workloads, each at 1,000 and 10,000 rules on `vdfs.read_file` for one extension:
- paths:  allow `library == LIB && path.under("/dirK")`, plus an org-wide deny on `/secrets`;
- mixed:  allows cycling through `path.glob("/dirK/**/*.png")`, `path.under("/dirK") && path.matches(...)`,
          `has(args.length) && args.length == K`,
          `library == LIB && path.under("/dirK") && has(args.offset) && args.offset < 1000`,
          and denies on `/dirK/private`.
Requests: a middle rule's path, the last rule's, a path no rule allows, the deny. Decisions are asserted equal
(indexed vs plain, and vs Cedar on the paths workload). Figures: p50/p99 per decide in us over batches.

Run: python bench/bench_index.py [SIZES...]   (default 1000 10000)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cedarpy  # noqa: E402
from bench_decide import percentiles  # noqa: E402

from capengine.policy.engine import PolicySet  # noqa: E402
from capengine.policy.loader import load_text  # noqa: E402
from capengine.policy.model import Request  # noqa: E402

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
EXT = "com.example.app"
OP = "vdfs.read_file"


def _yaml(rules: list[str]) -> str:
    return ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n"
            "  extensions: ['com.example.*']\n  rules:\n" + "\n".join(rules) + "\n")


def paths_rules(n: int) -> list[str]:
    rules = [f"    - {{id: deny-secrets, effect: deny, operations: [{OP}], condition: 'path.under(\"/secrets\")'}}"]
    rules += [f"    - {{id: r{k}, effect: allow, operations: [{OP}], "
              f"condition: 'library == \"{LIB}\" && path.under(\"/dir{k}\")'}}" for k in range(n)]
    return rules


def mixed_rules(n: int) -> list[str]:
    shapes = [
        "path.glob(\"/dir{k}/**/*.png\")",
        "path.under(\"/dir{k}\") && path.matches(\"^/dir{k}/[a-z]+[.]jpg$\")",
        "has(args.length) && args.length == {k}",
        "library == \"" + LIB + "\" && path.under(\"/dir{k}\") && has(args.offset) && args.offset < 1000",
    ]
    rules = [f"    - {{id: deny-private{k}, effect: deny, operations: [{OP}], "
             f"condition: 'path.under(\"/dir{k}/private\")'}}" for k in range(0, n, 50)]
    rules += [f"    - {{id: r{k}, effect: allow, operations: [{OP}], condition: '{shapes[k % 4].format(k=k)}'}}"
              for k in range(n)]
    return rules


def cedar_paths(n: int) -> str:
    out = [f'forbid(principal, action == Action::"{OP}", resource) when {{ context.path == "/secrets" || '
           'context.path like "/secrets/*" };']
    out += [f'permit(principal == Extension::"{EXT}", action == Action::"{OP}", resource) when '
            f'{{ context.library == "{LIB}" && (context.path == "/dir{k}" || context.path like "/dir{k}/*") }};'
            for k in range(n)]
    return "\n".join(out)


def build(text: str, threshold: int | None) -> PolicySet:
    loaded, findings = load_text("bench.yaml", text)
    assert not [f for f in findings if f.severity == "error"], findings[:3]
    if threshold is None:
        return PolicySet(loaded.policies, loaded.programs, "bench")
    return PolicySet(loaded.policies, loaded.programs, "bench", index_threshold=threshold)


def requests(n: int) -> list[Request]:
    mid, last = n // 2, n - 1
    return [Request.parse(EXT, OP, f"/dir{mid}/photo.jpg", LIB, {"offset": 10, "length": mid}),
            Request.parse(EXT, OP, f"/dir{last}/a/b.png", LIB, {"offset": 10}),
            Request.parse(EXT, OP, "/elsewhere/photo.jpg", LIB, {"offset": 10, "length": -1}),
            Request.parse(EXT, OP, "/secrets/key", LIB, {}),
            Request.parse(EXT, OP, "/dir0/private/x.png", LIB, {})]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    print(f"{'workload':>9} {'rules':>6} {'indexed p50/p99 us':>20} {'plain p50/p99 us':>20} {'plain/indexed':>14} "
          f"{'cedar p50 us':>13} {'cedar/indexed':>14}")
    for n in sizes:
        for name, rules in (("paths", paths_rules(n)), ("mixed", mixed_rules(n))):
            text = _yaml(rules)
            indexed, plain = build(text, None), build(text, 1 << 30)
            reqs = requests(n)
            assert [indexed.decide(r) for r in reqs] == [plain.decide(r) for r in reqs]
            first = time.perf_counter_ns()
            indexed.decide(reqs[0])
            first_us = (time.perf_counter_ns() - first) / 1000
            i50, i99 = percentiles(indexed.decide, reqs, rounds=200)
            rounds = max(2, 20_000 // n)
            p50, p99 = percentiles(plain.decide, reqs, rounds=rounds, batch=2)
            cedar = ""
            if name == "paths":
                policies = cedarpy.PolicySet.from_str(cedar_paths(n))
                entities = cedarpy.Entities.from_json_str("[]")
                creqs = [{"principal": f'Extension::"{EXT}"', "action": f'Action::"{OP}"', "resource": 'File::"f"',
                          "context": {"path": r.path, "library": r.library}} for r in reqs]
                got = [cedarpy.is_authorized(r, policies, entities).allowed for r in creqs]
                assert got == [indexed.decide(r).allowed for r in reqs], got
                c50, _ = percentiles(lambda r, p=policies, e=entities: cedarpy.is_authorized(r, p, e), creqs,
                                     rounds=max(2, 2000 // n), batch=2)
                cedar = f"{c50:>13.1f} {c50 / i50:>14.0f}"
            print(f"{name:>9} {n:>6} {i50:>9.2f} / {i99:<8.2f} {p50:>9.1f} / {p99:<8.1f} {p50 / i50:>14.0f} {cedar}"
                  f"   (first decide after load: {first_us:.0f} us)")


if __name__ == "__main__":
    main()
