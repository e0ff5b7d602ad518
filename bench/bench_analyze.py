"""Static analysis timings: `analyze can` on the bundled policies, `diff` of two generated 100-rule sets.

Targets (issue 16): < 200 ms per `analyze can` query; < 10 s for a diff of two 100-rule sets.
Baseline measured in the same run: loading + compiling the same policy files (what `capengine check` does
before anything else), so the ratios say how much the solver adds on top of reading the policies.

Run: python bench/bench_analyze.py [ROUNDS]   (default 3)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from capengine.analysis.can import can
from capengine.analysis.diff import diff
from capengine.analysis.domain import operation_names
from capengine.policy.engine import PolicySet
from capengine.policy.loader import load_paths

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = ["com.example.photo-ocr", "com.example.cloud-sync", "com.example.hello-wat", "com.other.app"]
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"
OPS = ["vdfs.read_file", "vdfs.list_dir", "vdfs.stat", "ai.ocr", "vdfs.read_sidecar", "credentials.get"]


def load(directory: Path) -> PolicySet:
    result = load_paths([directory])
    assert not result.has_errors, [str(f) for f in result.findings]
    return PolicySet.from_load(result)


def spread(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (f"median {statistics.median(ms):7.1f} ms  p90 {p90:7.1f} ms  max {ms[-1]:7.1f} ms  "
            f"mean {statistics.fmean(ms):7.1f} ± {statistics.pstdev(ms):5.1f} ms  (n={len(ms)})")


def bench_can(rounds: int) -> None:
    t0 = time.perf_counter()
    policy_set = load(ROOT / "policies")
    load_time = time.perf_counter() - t0
    can(policy_set, EXTENSIONS[0], "vdfs.read_file")  # warm-up: case-folding table, regex caches
    samples: list[float] = []
    answers: dict[str, int] = {}
    for _ in range(rounds):
        for ext in EXTENSIONS:
            for op in operation_names():
                t = time.perf_counter()
                answer = can(policy_set, ext, op)
                samples.append(time.perf_counter() - t)
                answers[answer.answer] = answers.get(answer.answer, 0) + 1
                if answer.witness is not None:  # the engine must agree (can() already checked; re-check here)
                    request = answer.witness.request()
                    assert request is not None and policy_set.decide(request).allowed
    print(f"analyze can, bundled policies ({len(EXTENSIONS)} extensions x {len(operation_names())} operations "
          f"x {rounds} rounds): answers {answers}")
    print(f"  per query: {spread(samples)}")
    print(f"  baseline (load + compile the policy files once): {load_time * 1000:.1f} ms; "
          f"median query / baseline = {statistics.median(samples) / load_time:.2f}x")
    print(f"  target < 200 ms per query: {'met' if statistics.median(samples) < 0.2 else 'NOT met'} (median), "
          f"{sum(s < 0.2 for s in samples)}/{len(samples)} queries under 200 ms")


def generate(n: int) -> list[dict]:
    """n rules in families of four (one extension glob, one operation, one area /areaF each): a broad allow
    (directory, glob or regex), a library-scoped allow, a deny of a private sub-directory and a second deny
    (size limit with has() for read_file, a .git glob otherwise); credentials families test the name."""
    rules = []
    for f in range(n // 4):
        op, ext, area = OPS[f % len(OPS)], f"com.vendor{f % 5}.*", f"/area{f}"
        if op == "credentials.get":
            conds = [("allow", f'args.name.startsWith("svc{f}.")'),
                     ("allow", f'args.name.matches("^svc{f}-[a-z]+$")'),
                     ("deny", 'args.name.endsWith(".root")'), ("deny", f'args.name == "svc{f}.admin"')]
        else:
            broad = [f'path.under("{area}")', f'path.glob("{area}/*.jpg")',
                     f'path.under("{area}") && path.matches("^{area}/[a-z]+\\\\.(png|jpe?g)$")'][f % 3]
            second = (f'has(args.length) && args.length > {1000 * (f + 1)}' if op == "vdfs.read_file"
                      else f'path.glob("{area}/**/.git/**")')
            conds = [("allow", broad), ("allow", f'library == "{LIB}" && path.under("{area}/shared")'),
                     ("deny", f'path.under("{area}/private")'), ("deny", second)]
        for i, (effect, cond) in enumerate(conds):
            rules.append({"id": f"f{f}-{i}", "effect": effect, "op": op, "cond": cond, "ext": ext, "family": f})
    return rules


def write_set(directory: Path, rules: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    by_ext: dict[str, list[dict]] = {}
    for r in rules:
        by_ext.setdefault(r["ext"], []).append(r)
    for i, (ext, group) in enumerate(sorted(by_ext.items())):
        lines = [f"apiVersion: capengine/v1\nkind: Policy\nmetadata: {{name: p{i}}}\nspec:\n"
                 f"  extensions: ['{ext}']\n  rules:"]
        for r in group:
            cond = r["cond"].replace("'", "''")
            lines.append(f"    - {{id: {r['id']}, effect: {r['effect']}, operations: [{r['op']}], "
                         f"condition: '{cond}'}}")
        (directory / f"p{i}.yaml").write_text("\n".join(lines) + "\n")


def mutate(rules: list[dict]) -> tuple[list[dict], list[str]]:
    """Known changes in distinct families: widen a glob, drop a deny, change a regex, remove a has() guard."""
    new = [dict(r) for r in rules]
    changes = []
    used: set[int] = set()

    def pick(test) -> dict:
        r = next(r for r in new if r["family"] not in used and test(r))
        used.add(r["family"])
        return r

    r = pick(lambda r: "path.glob" in r["cond"] and r["effect"] == "allow")
    r["cond"] = r["cond"].replace("/*.jpg", "/**")
    changes.append(f"widened glob {r['id']}")
    r = pick(lambda r: r["effect"] == "deny" and "private" in r["cond"]
             and any(o["family"] == r["family"] and o["cond"].startswith("path.under") and o["effect"] == "allow"
                     for o in new))
    new.remove(r)
    changes.append(f"dropped deny {r['id']}")
    r = pick(lambda r: "matches" in r["cond"] and "path" in r["cond"])
    r["cond"] = r["cond"].replace("[a-z]+", "[a-z0-9]+")
    changes.append(f"changed regex {r['id']}")
    r = pick(lambda r: "has(args.length)" in r["cond"])
    r["cond"] = r["cond"].replace("has(args.length) && ", "")
    changes.append(f"removed has() {r['id']}")
    return new, changes


def bench_diff(rounds: int) -> None:
    old_rules = generate(100)
    new_rules, changes = mutate(old_rules)
    with tempfile.TemporaryDirectory() as tmp:
        old_dir, new_dir = Path(tmp) / "old", Path(tmp) / "new"
        write_set(old_dir, old_rules)
        write_set(new_dir, new_rules)
        t0 = time.perf_counter()
        old_set, new_set = load(old_dir), load(new_dir)
        load_time = (time.perf_counter() - t0) / 2
        same, changed = [], []
        result = None
        for _ in range(rounds):
            t = time.perf_counter()
            diff(old_set, old_set)
            same.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = diff(old_set, new_set)
            changed.append(time.perf_counter() - t)
    assert result is not None
    print(f"diff of two 100-rule sets ({len(old_set.rules)} vs {len(new_set.rules)} rules, {rounds} rounds); "
          f"changes made: {', '.join(changes)}")
    print(f"  found: {len(result.widened)} widening(s), {len(result.narrowed)} narrowing(s), "
          f"{len(result.unsettled)} unknown; groups: "
          + ", ".join(sorted(f"{d.direction}:{d.rule}" for d in result.differences)))
    print(f"  identical sets: {spread(same)}")
    print(f"  changed sets:   {spread(changed)}")
    print(f"  baseline (load one 100-rule set): {load_time * 1000:.1f} ms; "
          f"median diff / baseline = {statistics.median(changed) / load_time:.1f}x")
    print(f"  target < 10 s: {'met' if max(changed) < 10 else 'NOT met'} (max {max(changed):.2f} s)")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    bench_can(rounds)
    bench_diff(rounds)


if __name__ == "__main__":
    main()
