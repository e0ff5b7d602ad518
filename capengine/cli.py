"""The `capengine` command line. Thin by design: every command is a call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from capengine import __version__, report
from capengine.checking import run_check

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with a one-line hint, as documented
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _cmd_check(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"capengine check: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    if args.extensions and not Path(args.extensions).is_dir():
        print(f"capengine check: --extensions {args.extensions} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    outcome = run_check(args.paths, strict=args.strict, operations=_operations(),
                        extensions_dir=args.extensions, coverage=args.coverage, min_coverage=args.min_coverage)
    tests = outcome.tests
    n_cases = len(tests.results) if tests else 0
    n_failed = len(tests.failed) if tests else 0
    summary = {"files": len(outcome.load.files), "policies": len(outcome.load.policies),
               "rules": len(outcome.policy_set.rules), "errors": outcome.errors, "warnings": outcome.warnings,
               "test_cases": n_cases, "test_failures": n_failed,
               "coverage": round(tests.coverage, 1) if tests else None,
               "uncovered_rules": tests.uncovered if tests else [], "revision": outcome.load.revision}
    if args.format == "json":
        sys.stdout.write(report.as_json(list(outcome.findings), summary))
    elif args.format == "sarif":
        sys.stdout.write(report.as_sarif(list(outcome.findings)))
    else:
        text = (f"{summary['files']} file(s), {summary['policies']} policies, {summary['rules']} rules; "
                f"{n_cases - n_failed}/{n_cases} test cases passed; "
                f"{outcome.errors} error(s), {outcome.warnings} warning(s)")
        if tests and (args.coverage or args.min_coverage is not None):
            text += f"; rule coverage {tests.coverage:.1f}%"
        sys.stdout.write(report.as_text(list(outcome.findings), text))
    return EXIT_FINDINGS if outcome.errors else EXIT_OK


def _operations() -> list[str] | None:
    """Names of the registered operations, so lint can flag rules that match none."""
    try:
        from capengine.operations import default_registry
    except ImportError:
        return None
    return default_registry().names()


def _read_request(args: argparse.Namespace) -> dict:
    text = args.request
    if text.startswith("@") or (not text.lstrip().startswith("{") and Path(text).is_file()):
        text = Path(text.lstrip("@")).read_text()
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the request must be a JSON object")
    return data


def _cmd_explain(args: argparse.Namespace) -> int:
    from capengine.engine import PolicySet
    from capengine.policy_loader import load_paths

    try:
        request = _read_request(args)
    except (OSError, ValueError) as exc:
        print(f"capengine explain: cannot read the request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    load = load_paths([args.policies])
    if load.has_errors:
        for f in load.findings:
            print(f, file=sys.stderr)
        print("capengine explain: the policy set has errors; fix them first (see capengine check)", file=sys.stderr)
        return EXIT_FINDINGS
    explanation = PolicySet.from_load(load).explain(request)
    d = explanation.decision
    if args.format == "json":
        print(json.dumps({"decision": d.to_json(), "reason": explanation.reason,
                          "rules": [{"rule": t.rule, "effect": t.effect, "result": t.result,
                                     "value": t.value if isinstance(t.value, (bool, type(None))) else repr(t.value),
                                     "error": t.error} for t in explanation.trace]}, indent=2))
        return EXIT_OK
    print(f"decision: {'ALLOW' if d.allowed else 'DENY'}")
    print(f"reason:   {explanation.reason}")
    if d.message and not d.allowed:
        print(f"message:  {d.message}")
    print(f"revision: {d.revision}")
    if explanation.trace:
        print("rules considered:")
    for t in explanation.trace:
        detail = f"error: {t.error}" if t.error else f"condition = {t.value}"
        print(f"  {t.effect:5} {t.rule:40} {t.result:12} {detail}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="capengine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"capengine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="validate, type-check, lint and test policy files")
    check.add_argument("paths", nargs="*", default=["policies"], help="files or directories (default: policies)")
    check.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.add_argument("--extensions", metavar="DIR", help="flag policies whose extension globs match nothing here")
    check.add_argument("--coverage", action="store_true", help="report rules no test case exercised")
    check.add_argument("--min-coverage", type=float, metavar="N", help="fail when rule coverage is below N%%")
    check.set_defaults(func=_cmd_check)

    explain = sub.add_parser("explain", help="show how the policy set decides one request")
    explain.add_argument("--policies", required=True, metavar="DIR")
    explain.add_argument("--request", required=True, help="JSON object, or a file containing one (@file)")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(func=_cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
