"""Where `capengine check` spends its time on a large set, phase by phase (cProfile, one process).

The same files as bench_check_scale.py. Each phase is the cumulative time of the functions that implement it;
cProfile inflates pure-Python phases more than C ones, so compare the shares between runs, not the seconds
with bench_check_scale's whole-process figure. The files load in this one process ($CAPENGINE_CHECK_PROCESSES=1):
cProfile does not see into the children check would otherwise fork.

Run: python bench/bench_check_phases.py [FILES]   (default 2000)
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_check_scale import write_policies  # noqa: E402

# phase -> (file suffix, function name) pairs whose cumulative times add up to it
PHASES = {
    "load (all of the next)": [("policy/loader.py", "load_paths")],
    "YAML": [("policy/yaml_source.py", "load_documents")],
    "schema (fast check)": [("policy/schemas.py", "check")],
    "schema (jsonschema)": [("jsonschema/validators.py", "iter_errors")],
    "CEL parse": [("cel/ast.py", "parse")],
    "CEL compile incl. parse": [("cel/compiler.py", "compile_expression")],
    "args types": [("policy/loader.py", "_args_record")],
    "lint": [("policy/lint.py", "lint")],
    "overlap": [("policy/overlap.py", "find")],
    "policy set": [("policy/engine.py", "__init__")],
    "policy tests": [("policy/suites.py", "run_suites")],
    "run_check": [("policy/check.py", "run_check")],
    "whole command": [("capengine/cli.py", "main")],
}


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    os.environ["CAPENGINE_CHECK_PROCESSES"] = "1"
    from capengine.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "policies"
        write_policies(directory, files)
        profile = cProfile.Profile()
        with contextlib.redirect_stdout(io.StringIO()):
            profile.enable()
            with contextlib.suppress(SystemExit):
                cli(["check", str(directory)])
            profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(ct for (file, _, name), (_, _, _, ct, _) in stats.items()
                if file.endswith("capengine/cli.py") and name == "main")
    print(f"check of {files} files under cProfile: {total:.1f} s")
    for phase, keys in PHASES.items():
        seconds = sum(ct for (file, _, name), (_, _, _, ct, _) in stats.items()
                      if any(file.endswith(suffix) and name == func for suffix, func in keys))
        print(f"  {phase:<26} {seconds:6.2f} s  {seconds / total:5.1%}")


if __name__ == "__main__":
    main()
