"""The `capengine` command line. Thin by design: every command is a call into the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from capengine import __version__
from capengine.policy import report
from capengine.policy.check import run_check

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
        from capengine.host.operations import default_registry
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
    try:
        request = _read_request(args)
    except (OSError, ValueError) as exc:
        print(f"capengine explain: cannot read the request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    policy_set = _load_policy_set(args.policies, "explain")
    if policy_set is None:
        return EXIT_FINDINGS
    explanation = policy_set.explain(request)
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


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXTENSION = ROOT / "extensions" / "photo-ocr"
DEFAULT_LIBRARY = ROOT / "extensions" / "sample-library"
DEFAULT_POLICIES = ROOT / "policies"


def _data_dir(args: argparse.Namespace) -> Path:
    from capengine.host.libraries import default_data_dir

    return Path(args.data_dir) if args.data_dir else default_data_dir()


def _load_policy_set(policies: str, command: str):
    """The compiled set, or None after printing every finding (fail closed: no partial set)."""
    from capengine.policy.engine import PolicySet
    from capengine.policy.loader import load_paths

    load = load_paths([policies])
    if load.has_errors:
        for f in load.findings:
            if f.severity == "error":
                print(f, file=sys.stderr)
        print(f"capengine {command}: the policy set has errors; fix them first (see capengine check)",
              file=sys.stderr)
        return None
    return PolicySet.from_load(load)


def _cmd_run(args: argparse.Namespace) -> int:
    from capengine.host.extension_host import Host
    from capengine.host.libraries import LibraryError
    from capengine.host.manifests import ExtensionError, load_extension
    from capengine.progress_display import ProgressDisplay

    try:
        ext = load_extension(args.extension)
        user_input = json.loads(args.input) if args.input else None
        if user_input is not None and not isinstance(user_input, dict):
            raise ValueError("--input must be a JSON object")
    except (ExtensionError, ValueError) as exc:
        print(f"capengine run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    policy_set = _load_policy_set(args.policies, "run")
    if policy_set is None:
        return EXIT_FINDINGS
    host = Host(policy_set, _data_dir(args))
    try:
        library = host.open_library(Path(args.library))
        if user_input is None:
            user_input = {"library": library.id}
        job = args.job or ext.jobs[0]
        display = ProgressDisplay()
        run = host.new_run(ext, job)
        run.on_change = display.update
        result, calls = host.run_job(ext, job, json.dumps(user_input).encode(), run)
        display.finish(run)
    except (LibraryError, OSError, ValueError) as exc:
        print(f"capengine run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        host.close()
    print(f"extension {ext.id} {ext.version}, job {job}, library {library.id} ({library.root})")
    print(f"policy revision {policy_set.revision}; {len(calls) + calls.dropped} call(s):")
    for c in calls:
        verdict = ("ALLOW" if c.allowed else "DENY ") if c.decided else "-----"
        rules = ",".join(c.rules) or ("default deny" if c.decided and not c.allowed else "-")
        outcome = c.code if c.code == "OK" and not c.message else f"{c.code}: {c.message}"
        print(f"  {verdict} {c.operation:20} {c.path or '-':32} {rules:32} {outcome}  [{c.duration_us} us]")
    if calls.dropped:
        print(f"  ... and {calls.dropped} more call(s) (see the decision log)")
    for level, text in result.logs:
        print(f"  log {('debug', 'info', 'warn', 'error')[level]}: {text}")
    print(f"job {result.status}" + (f": {result.error}" if result.error else ""))
    return EXIT_OK if result.status == "completed" else EXIT_FINDINGS


def _cmd_ops(args: argparse.Namespace) -> int:
    from capengine.host.operations import default_registry

    ops = list(default_registry())
    if args.format == "json":
        print(json.dumps([{"name": o.name, "kind": o.kind, "description": o.description, "path": o.path_field,
                           "needs_library": o.needs_library, "input_schema": o.schema} for o in ops], indent=2))
        return EXIT_OK
    for o in ops:
        fields = ", ".join(f"{k}{'' if k in o.schema.get('required', []) else '?'}" for k in o.schema["properties"])
        print(f"{o.name:20} {o.kind:6} {{{fields}}}  {o.description}")
    return EXIT_OK


def _cmd_library(args: argparse.Namespace) -> int:
    from capengine.host.libraries import LibraryCatalog, LibraryError

    catalog = LibraryCatalog(_data_dir(args))
    if args.library_command == "add":
        try:
            lib = catalog.add(args.directory, args.name, args.id)
        except (LibraryError, ValueError) as exc:
            print(f"capengine library add: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{lib.id}  {lib.name}  {lib.root}")
        return EXIT_OK
    for lib in catalog.list():
        print(f"{lib.id}  {lib.name}  {lib.root}")
    return EXIT_OK


def _cmd_daemon(args: argparse.Namespace) -> int:
    import logging
    import signal

    from capengine.daemon.decision_log import DEFAULT_MASK
    from capengine.daemon.server import Daemon, DaemonConfig, DaemonError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = _data_dir(args)
    config = DaemonConfig(Path(args.policies), Path(args.extensions), data_dir,
                          Path(args.socket) if args.socket else data_dir / "capengine.sock",
                          watch_interval=args.watch_interval, log_mask=DEFAULT_MASK + tuple(args.mask),
                          resume_interrupted=args.resume_interrupted)
    try:
        daemon = Daemon(config)
        daemon.start()
    except DaemonError as exc:
        print(f"capengine daemon: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    requests: list[str] = []
    signal.signal(signal.SIGHUP, lambda *_: requests.append("reload"))
    signal.signal(signal.SIGTERM, lambda *_: requests.append("stop"))
    signal.signal(signal.SIGINT, lambda *_: requests.append("stop"))
    print(f"capengine daemon: serving on {config.socket} (policy revision {daemon.status.revision})", flush=True)
    while "stop" not in requests:
        time.sleep(0.1)
        if "reload" in requests:
            requests.remove("reload")
            daemon.reload()
    daemon.stop()
    return EXIT_OK


def _cmd_ctl(args: argparse.Namespace) -> int:
    from capengine.daemon.server import call

    try:
        params = json.loads(args.params) if args.params else {}
        socket_path = Path(args.socket) if args.socket else _data_dir(args) / "capengine.sock"
        reply = call(socket_path, args.method, params)
    except (OSError, ValueError) as exc:
        print(f"capengine ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(reply.get("result", reply.get("error")), indent=2))
    return EXIT_OK if "result" in reply else EXIT_FINDINGS


def _cmd_replay(args: argparse.Namespace) -> int:
    from capengine.daemon.replay import replay

    policy_set = _load_policy_set(args.policies, "replay")
    if policy_set is None:
        return EXIT_FINDINGS
    try:
        report = replay(policy_set, Path(args.log))
    except OSError as exc:
        print(f"capengine replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for flip in report.flips:
        r = flip.record
        print(f"{args.log}:{flip.line}: {flip.was} -> {flip.now}  {r['extension']} {r['operation']} "
              f"{r.get('path') or '-'}  (now: {', '.join(flip.rules) or 'default deny'}; "
              f"was: {', '.join(r.get('rules', [])) or 'default deny'})")
    for line in report.unreadable:
        print(f"{args.log}:{line}: not a decision record; skipped", file=sys.stderr)
    print(f"{report.decided} decision(s) replayed under revision {policy_set.revision}: {len(report.flips)} would "
          f"flip; {report.skipped} call(s) never reached a decision")
    return EXIT_FINDINGS if report.flips else EXIT_OK


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

    run = sub.add_parser("run", help="run one job of an extension and print the calls it made")
    run.add_argument("extension", nargs="?", default=str(DEFAULT_EXTENSION), help="extension directory")
    run.add_argument("--policies", default=str(DEFAULT_POLICIES), metavar="DIR")
    run.add_argument("--library", default=str(DEFAULT_LIBRARY), metavar="DIR")
    run.add_argument("--job", help="job name (default: the manifest's first job)")
    run.add_argument("--input", help='job input as a JSON object (default: {"library": "<the library\'s id>"})')
    run.add_argument("--data-dir", metavar="DIR", help="catalogue, vault and module cache (default: XDG data)")
    run.set_defaults(func=_cmd_run)

    ops = sub.add_parser("ops", help="list the registered operations and their input schemas")
    ops.add_argument("--format", choices=["text", "json"], default="text")
    ops.set_defaults(func=_cmd_ops)

    library = sub.add_parser("library", help="manage the library catalogue")
    data_dir = _Parser(add_help=False)
    data_dir.add_argument("--data-dir", metavar="DIR", help="catalogue location (default: XDG data)")
    lib_sub = library.add_subparsers(dest="library_command", required=True, parser_class=_Parser)
    add = lib_sub.add_parser("add", help="add a directory as a library", parents=[data_dir])
    add.add_argument("directory")
    add.add_argument("--name")
    add.add_argument("--id", help="library UUID (default: DIR/.capengine/library-id, else a new one)")
    lib_sub.add_parser("list", help="list the libraries", parents=[data_dir])
    library.set_defaults(func=_cmd_library)

    daemon = sub.add_parser("daemon", help="serve extensions under the policy set (fails closed on errors)")
    daemon.add_argument("--policies", required=True, metavar="DIR")
    daemon.add_argument("--extensions", required=True, metavar="DIR")
    daemon.add_argument("--data-dir", metavar="DIR")
    daemon.add_argument("--socket", metavar="PATH", help="control socket (default: DATA_DIR/capengine.sock)")
    daemon.add_argument("--watch-interval", type=float, default=1.0, metavar="SECONDS",
                        help="poll the policy directory for changes (0: only SIGHUP/policies.reload)")
    daemon.add_argument("--mask", action="append", default=[], metavar="FIELD",
                        help="also mask this arg name in the decision log (repeatable)")
    daemon.add_argument("--resume-interrupted", action="store_true",
                        help="resume the jobs a shutdown or crash interrupted, from their last checkpoints")
    daemon.set_defaults(func=_cmd_daemon)

    ctl = sub.add_parser("ctl", help="call the daemon's control interface")
    ctl.add_argument("method", help="jobs.run, jobs.status, jobs.cancel, jobs.resume, jobs.list, extensions.list, "
                                    "policies.status, policies.reload, decisions.tail")
    ctl.add_argument("params", nargs="?", help="JSON object of parameters")
    ctl.add_argument("--socket", metavar="PATH")
    ctl.add_argument("--data-dir", metavar="DIR")
    ctl.set_defaults(func=_cmd_ctl)

    replay = sub.add_parser("replay", help="re-decide a decision log under candidate policies; list flips")
    replay.add_argument("--policies", required=True, metavar="DIR")
    replay.add_argument("log", metavar="DECISION_LOG")
    replay.set_defaults(func=_cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
