"""Start-up costs: loading/checking/compiling 1,000 policy files (what the daemon does before serving), the
first decide per (extension, operation) after that load against a warm one (target at 10,000 files: <= 50 us),
and loading an extension module from source versus from the verified compiled-module cache.

Run: python bench/bench_startup.py [FILES]   (default 1000; the first-decide target is for 10000)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from capengine.daemon.server import check_policies
from capengine.host.manifests import load_extension
from capengine.host.operations import default_registry
from capengine.host.rate_limiter import RateLimiter
from capengine.host.runtime import Limits, Runtime
from capengine.policy.engine import PolicySet
from capengine.policy.model import Request

ROOT = Path(__file__).resolve().parent.parent
LIB = "6c1f0e4a-2b3d-4c5e-8f90-a1b2c3d4e5f6"


def write_policies(directory: Path, files: int) -> None:
    for i in range(files):
        (directory / f"p{i:04}.yaml").write_text(
            f"apiVersion: capengine/v1\nkind: Policy\nmetadata: {{name: p{i}}}\nspec:\n"
            f"  extensions: ['com.example.ext{i}']\n  rules:\n"
            f"    - {{id: read, effect: allow, operations: [vdfs.read_file, vdfs.stat],\n"
            f"       condition: 'library == \"{LIB}\" && path.under(\"/d{i}\") && !path.endsWith(\".key\")'}}\n"
            f"    - {{id: no-big, effect: deny, operations: [vdfs.read_file],\n"
            f"       condition: 'has(args.length) && args.length > {1000 + i}'}}\n"
            f"  limits:\n    - {{operations: ['vdfs.*'], rate: 100/second, burst: 10}}\n")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def first_decides(policy_set: PolicySet, files: int, samples: int = 300) -> None:
    """The first decide (and rate-limit acquire, as the dispatcher does next) for `samples` extensions spread
    over the set, each one's first call after the load, against the second call of the same request (warm, the
    baseline) in the same run."""
    limiter = RateLimiter(policy_set.policies)
    first: list[float] = []
    warm: list[float] = []
    for i in range(0, files, max(1, files // samples)):
        request = Request(f"com.example.ext{i}", "vdfs.read_file", f"/d{i}/a.txt", LIB, {"length": 10})
        for out in (first, warm):
            start = time.perf_counter()
            decision = policy_set.decide(request)
            limiter.acquire(request.extension, request.operation)
            out.append((time.perf_counter() - start) * 1e6)
            assert decision.allowed, decision
    ratios = sorted(f / w for f, w in zip(first, warm))
    print(f"first decide + rate-limit acquire per extension after loading {files} files ({len(first)} extensions): "
          f"p50 {statistics.median(first):.1f} us, p99 {sorted(first)[int(0.99 * len(first))]:.1f} us, "
          f"max {max(first):.1f} us; warm (second call) p50 {statistics.median(warm):.1f} us; first / warm p50 "
          f"{statistics.median(ratios):.1f}x (p10-p90 {ratios[len(ratios) // 10]:.1f}-"
          f"{ratios[9 * len(ratios) // 10]:.1f}x)")


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    ops = default_registry().names()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        many.mkdir()
        write_policies(one, 1)
        write_policies(many, files)
        t1, (ps1, errors, _) = timed(lambda: check_policies(one, ops))
        tn, (psn, errors, _) = timed(lambda: check_policies(many, ops))
        assert psn is not None and not errors, errors[:3]
        print(f"policy check+compile: 1 file {t1 * 1000:.1f} ms; {files} files {tn * 1000:.0f} ms "
              f"({tn / files * 1000:.2f} ms/file, {len(psn.rules)} rules); ratio {tn / t1:.0f}x for {files}x files")
        first_decides(psn, files)

        ext = load_extension(ROOT / "extensions" / "photo-ocr") \
            if (ROOT / "extensions" / "photo-ocr" / "photo_ocr.wasm").exists() else load_extension(
                ROOT / "extensions" / "hello-wat")
        cache_dir = Path(tmp) / "cache"
        with Runtime(Limits()) as runtime:
            uncached, _ = timed(lambda: runtime.load_module(ext))
        with Runtime(Limits(), cache_dir=cache_dir) as runtime:
            runtime.load_module(ext)  # fills the cache
        with Runtime(Limits(), cache_dir=cache_dir) as runtime:
            cached, _ = timed(lambda: runtime.load_module(ext))
            assert runtime.cache.hits == 1
        print(f"extension {ext.id} ({ext.module_path.name}): compile {uncached * 1000:.1f} ms, "
              f"verified cache {cached * 1000:.1f} ms; ratio {uncached / cached:.1f}x")


if __name__ == "__main__":
    main()
