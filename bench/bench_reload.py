"""Reload cost when one policy file of many changed: what the daemon pays on every edit.

The baseline is the cold check of the same set in the same run (every file parsed, validated, compiled);
then one file is edited and the set checked again (what a reload does: `run_check`), and once more with no
change. Target: reload after 1 of 1,000 files changed <= 50 ms.

Run: python bench/bench_reload.py [FILES]   (default 1000)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_check_scale import write_policies  # noqa: E402

from capengine.host.operations import default_registry  # noqa: E402
from capengine.policy.check import run_check  # noqa: E402


def seconds(directory: Path, operations: list[str]) -> float:
    start = time.perf_counter()
    outcome = run_check([directory], operations=operations)
    elapsed = time.perf_counter() - start
    assert not outcome.errors, [str(f) for f in outcome.findings if f.severity == "error"][:3]
    return elapsed


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    operations = default_registry().names()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "policies"
        write_policies(directory, files)
        cold = seconds(directory, operations)
        edited, unchanged = [], []
        for i in range(5):
            target = directory / f"p{i:05}.yaml"
            target.write_text(target.read_text().replace("> 1", f"> {i + 2}", 1))
            edited.append(seconds(directory, operations))
            unchanged.append(seconds(directory, operations))
        print(f"{files} files: cold check {cold * 1000:.0f} ms; after editing 1 file "
              f"{statistics.median(edited) * 1000:.0f} ms (min {min(edited) * 1000:.0f}, max "
              f"{max(edited) * 1000:.0f}); nothing changed {statistics.median(unchanged) * 1000:.0f} ms; "
              f"cold / edited {cold / statistics.median(edited):.0f}x")


if __name__ == "__main__":
    main()
