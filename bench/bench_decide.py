"""decide() p50/p99 as the policy set grows, against cel-python and Cedar (cedarpy) on equivalent policies.

Each size N has N allow rules, one per operation `svcK.op`, with the condition
`library == LIB && path.under("/dirK")`, plus one org-wide deny (`path.under("/secrets")` on `svc*.op`).
The same requests go to:
- capengine: `PolicySet.decide` (indexed candidates, compiled CEL closures);
- cel-python: the same candidate rules, each condition evaluated by cel-python's interpreter;
- Cedar: `cedarpy.is_authorized` with pre-parsed PolicySet/Entities handles on the equivalent Cedar policies.
Decisions must agree across all three (asserted). Also: one condition as a compiled program against the
same condition hand-written as a Python lambda. Timings are per call, from batches; ratios are what count.

Then mixed conditions on ONE (extension, operation), at 1,000 and 10,000 rules: allows cycling through
seven shapes (glob, under+matches, `has(args.length) && args.length == K`, library+under+offset,
`path.matches("^/mK/...")` alone, `args.offset > K || path.endsWith(...)`, `args.length >= K && args.length
< K + 3 && size(path) > 5`), plus denies on /dirK/private. The last three were unindexable until the index
learnt regex prefixes, suffixes, integer bounds and guarded disjunctions; the table prints how many rules
are still evaluated on every call ("unguarded"). Four ways, decisions asserted equal: indexed with generated
conditions (what decide() does), indexed with closures only, and the plain scan of each. p50/p99 per decide
over the requests (a middle rule's, the last rule's, no match, the deny).

Run: python bench/bench_decide.py [SIZES...]   (default 10 100 1000 10000; mixed: 1000 10000 unless sizes given)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import attrs
import cedarpy
import celpy

from capengine.policy.engine import PolicySet
from capengine.policy.loader import LoadResult, load_text
from capengine.policy.model import Request

LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
EXT = "com.example.app"


def policy_text(n: int) -> str:
    rules = ["    - {id: deny-secrets, effect: deny, operations: ['svc*.op'],"
             " condition: 'path.under(\"/secrets\")'}"]
    rules += [f"    - {{id: r{k}, effect: allow, operations: [svc{k}.op], "
              f"condition: 'library == \"{LIB}\" && path.under(\"/dir{k}\")'}}" for k in range(n)]
    return ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n"
            "  extensions: ['com.example.*']\n  rules:\n" + "\n".join(rules) + "\n")


def cedar_text(n: int) -> str:
    out = ['forbid(principal, action, resource) when { context.path == "/secrets" || '
           'context.path like "/secrets/*" };']
    out += [f'permit(principal == Extension::"{EXT}", action == Action::"svc{k}.op", resource) when '
            f'{{ context.library == "{LIB}" && (context.path == "/dir{k}" || context.path like "/dir{k}/*") }};'
            for k in range(n)]
    return "\n".join(out)


def requests(n: int) -> list[tuple[str, str, str]]:
    picks = sorted({0, n // 3, n // 2, n - 1})
    out = []
    for k in picks:
        out += [(f"svc{k}.op", f"/dir{k}/photo.jpg", LIB), (f"svc{k}.op", f"/dir{k}x/photo.jpg", LIB),
                (f"svc{k}.op", f"/dir{k}/a.jpg", "00000000-0000-4000-8000-000000000000"),
                (f"svc{k}.op", "/secrets/key", LIB)]
    return out


def build(n: int) -> PolicySet:
    loaded, findings = load_text("bench.yaml", policy_text(n))
    assert not findings, findings[:3]
    return PolicySet.from_load(LoadResult([loaded], []))


class CelPythonDecider:
    """The same decision procedure, but each candidate condition evaluated by cel-python's interpreter."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        env = celpy.Environment()
        functions = {"under": lambda p, d: celpy.celtypes.BoolType(p == d or p.startswith(d + "/"))}
        self.programs = {r.qualified_id: env.program(env.compile(r.rule.condition), functions=functions)
                         for r in policy_set.rules if r.rule.condition}

    def decide(self, request: Request) -> bool:
        denies, allows = self.policy_set.candidates(request.extension, request.operation)
        activation = {"path": celpy.celtypes.StringType(request.path),
                      "library": celpy.celtypes.StringType(request.library)}
        for rule in denies:
            if bool(self.programs[rule.qualified_id].evaluate(activation)):
                return False
        return any(bool(self.programs[rule.qualified_id].evaluate(activation)) for rule in allows)


def percentiles(fn, items, rounds: int, batch: int = 20) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        for item in items:
            start = time.perf_counter_ns()
            for _ in range(batch):
                fn(item)
            samples.append((time.perf_counter_ns() - start) / batch / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 1000, 10000]
    print(f"{'rules':>6} {'capengine p50/p99 us':>22} {'cel-python p50':>15} {'cedarpy p50/p99 us':>20} "
          f"{'cedar/capengine':>16} {'celpy/capengine':>16}")
    for n in sizes:
        policy_set = build(n)
        reqs = [Request(EXT, op, path, lib, {}) for op, path, lib in requests(n)]
        cedar_policies = cedarpy.PolicySet.from_str(cedar_text(n))
        entities = cedarpy.Entities.from_json_str("[]")
        cedar_reqs = [{"principal": f'Extension::"{r.extension}"', "action": f'Action::"{r.operation}"',
                       "resource": 'File::"f"', "context": {"path": r.path, "library": r.library}} for r in reqs]
        celpy_decider = CelPythonDecider(policy_set)
        ours = [policy_set.decide(r).allowed for r in reqs]
        cedar = [cedarpy.is_authorized(r, cedar_policies, entities).allowed for r in cedar_reqs]
        reference = [celpy_decider.decide(r) for r in reqs]
        assert ours == cedar == reference, (ours, cedar, reference)
        assert any(ours) and not all(ours)
        p50, p99 = percentiles(policy_set.decide, reqs, rounds=200)
        def cedar_decide(r, cedar_policies=cedar_policies, entities=entities):
            return cedarpy.is_authorized(r, cedar_policies, entities)

        c50, c99 = percentiles(cedar_decide, cedar_reqs, 20, 5)
        e50, _ = percentiles(celpy_decider.decide, reqs, rounds=3, batch=2)
        print(f"{n:>6} {p50:>10.2f} / {p99:<9.2f} {e50:>15.1f} {c50:>9.2f} / {c99:<8.2f} "
              f"{c50 / p50:>16.1f} {e50 / p50:>16.1f}")
    lambda_vs_compiled()
    mixed(sizes if sys.argv[1:] else [1000, 10000])


OP = "vdfs.read_file"


def mixed_text(n: int) -> str:
    shapes = [
        'path.glob("/dir{k}/**/*.png")',
        'path.under("/dir{k}") && path.matches("^/dir{k}/[a-z]+[.]jpg$")',
        'has(args.length) && args.length == {k}',
        'library == "' + LIB + '" && path.under("/dir{k}") && has(args.offset) && args.offset < 1000',
        'path.matches("^/m{k}/[a-z]+[.]gif$")',  # from here on: indexed since regex prefixes, bounds, `||`
        'has(args.offset) && args.offset > {big} || path.endsWith("/x{k}.tmp")',
        'has(args.length) && args.length >= {k} && args.length < {k} + 3 && size(path) > 5',
    ]
    rules = [f"    - {{id: deny-private{k}, effect: deny, operations: [{OP}], "
             f"condition: 'path.under(\"/dir{k}/private\")'}}" for k in range(0, n, 50)]
    rules += [f"    - {{id: r{k}, effect: allow, operations: [{OP}], "
              f"condition: '{shapes[k % len(shapes)].format(k=k, big=10**9 + k)}'}}" for k in range(n)]
    return ("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: mixed}\nspec:\n"
            "  extensions: ['com.example.*']\n  rules:\n" + "\n".join(rules) + "\n")


def mixed(sizes: list[int]) -> None:
    print("\nmixed conditions on one (extension, operation): p50/p99 us per decide")
    print(f"{'rules':>6} {'indexed+generated':>20} {'indexed+closures':>20} {'plain+generated':>20} "
          f"{'plain+closures':>20} {'closures/generated':>19} {'unguarded':>10}")
    for n in sizes:
        loaded, findings = load_text("mixed.yaml", mixed_text(n))
        assert not [f for f in findings if f.severity == "error"], findings[:3]
        closures = {k: attrs.evolve(p, generated=None) for k, p in loaded.programs.items()}
        assert all(p.generated is not None for p in loaded.programs.values())
        sets = [PolicySet(loaded.policies, programs, "bench", index_threshold=threshold)
                for threshold in (8, 1 << 30) for programs in (loaded.programs, closures)]
        mid = n // 2 - n // 2 % 7 + 1  # an under+matches rule in the middle
        last = max(k for k in range(n) if k % 7 == 4)  # the last path.matches rule (unindexed)
        reqs = [Request.parse(EXT, OP, f"/dir{mid}/photo.jpg", LIB, {"offset": 10, "length": 5}),
                Request.parse(EXT, OP, f"/m{last}/a.gif", LIB, {"offset": 10, "kind": "raw"}),
                Request.parse(EXT, OP, "/elsewhere/photo.jpg", LIB, {"offset": 10, "length": -1, "kind": "x"}),
                Request.parse(EXT, OP, "/dir0/private/x.png", LIB, {})]
        decisions = [[s.decide(r) for r in reqs] for s in sets]
        assert all(d == decisions[0] for d in decisions), "decisions differ"
        assert [d.allowed for d in decisions[0]] == [True, True, False, False], decisions[0]
        figures = []
        for k, policy_set in enumerate(sets):
            plain = k >= 2
            rounds = max(2, 20_000 // n) if plain else 200
            figures.append(percentiles(policy_set.decide, reqs, rounds=rounds, batch=2 if plain else 20))
        cells = " ".join(f"{p50:>9.1f} / {p99:<8.1f}" for p50, p99 in figures)
        index = sets[0].plan(EXT, OP).index
        unguarded = len(index.always) if index is not None else n
        print(f"{n:>6} {cells} {figures[1][0] / figures[0][0]:>10.2f} / {figures[3][0] / figures[2][0]:.2f}"
              f" {unguarded:>10}")


def lambda_vs_compiled() -> None:
    policy_set = build(1)
    rule = next(r for r in policy_set.rules if r.rule.id == "r0")
    activation = Request(EXT, "svc0.op", "/dir0/photo.jpg", LIB, {}).activation()

    def hand_written(a: dict) -> bool:
        p = a["path"]
        return a["library"] == LIB and (p == "/dir0" or p.startswith("/dir0/"))

    program = rule.program
    c50, _ = percentiles(program.evaluate, [activation], rounds=2000)
    l50, _ = percentiles(hand_written, [activation], rounds=2000)
    print(f"condition evaluation: compiled {c50:.3f} us, hand-written lambda {l50:.3f} us, "
          f"ratio {c50 / l50:.1f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
