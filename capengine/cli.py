"""The `capengine` command line. Thin by design: every command is a call into the library."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from capengine import bundled
from capengine.daemon.job_table import DEFAULT_KEEP, DEFAULT_MAX_AGE, Retention
from capengine.policy import report
from capengine.policy.branches import cel_text, operand_values
from capengine.policy.check import run_check
from capengine.version import __version__

if TYPE_CHECKING:
    from capengine.host.libraries import LibraryCatalog

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command killed by SIGPIPE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2 with a one-line hint, as documented
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _default_policies() -> str:
    """`./policies` where the user keeps them, else the examples that come with capengine."""
    return "policies" if Path("policies").is_dir() else str(bundled.policies())


def _cmd_check(args: argparse.Namespace) -> int:
    if not args.paths:
        args.paths = [_default_policies()]
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"capengine check: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    if args.extensions and not Path(args.extensions).is_dir():
        print(f"capengine check: --extensions {args.extensions} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    gc.disable()  # the process ends after the report: no collection when the check ends (see below)
    outcome = run_check(args.paths, strict=args.strict, operations=_operations(),
                        extensions_dir=args.extensions, coverage=args.coverage, min_coverage=args.min_coverage,
                        generate=False,  # it decides test cases only: closures, without generation's load time
                        processes=None)  # large sets load on every core ($CAPENGINE_CHECK_PROCESSES=1: one)
    # The process ends after the report: the loaded set (millions of objects, no garbage cycles) need not be
    # walked again by the cyclic collector, after the check nor at exit (27% of a 3,000-file check's CPU).
    gc.freeze()
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


def _operations() -> list[str]:
    """Names of the registered operations, so lint can flag rules that match none."""
    from capengine.host.operations import default_registry

    return default_registry().names()


def _json_object(text: str, what: str) -> dict:
    """`text` parsed as one JSON object; ValueError naming `what` (the flag or file) otherwise. NaN and
    Infinity (also as 1e400) are refused: Python's json accepts them, but no JSON or CEL value is NaN
    (`args.n > 5` is false for NaN, so a deny written that way would not fire)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):  # 1e400 parses to inf
            raise ValueError(f"{number} is beyond the range of a number")
        return value

    try:
        data = json.loads(text, parse_constant=refuse, parse_float=finite)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


def _read_request(args: argparse.Namespace) -> dict:
    text, what = args.request, "--request"
    if text.startswith("@") or (not text.lstrip().startswith("{") and Path(text).is_file()):
        what = f"--request file {text.lstrip('@')}"
        try:
            text = Path(text.lstrip("@")).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {what}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8 text") from None
    return _json_object(text, what)


def _cmd_explain(args: argparse.Namespace) -> int:
    try:
        request = _read_request(args)
    except ValueError as exc:
        print(f"capengine explain: cannot read the request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    policy_set = _load_policy_set(args.policies or _default_policies(), "explain")
    if policy_set is None:
        return EXIT_FINDINGS
    explanation = policy_set.explain(request)
    d = explanation.decision
    activation = _activation(request)
    rules = [{"rule": t.rule, "effect": t.effect, "result": t.result, "condition": t.condition,
              "value": cel_text(t.value) if t.error is None else None, "error": t.error,
              "operands": [{"operand": o, "value": v} for o, v in
                           (operand_values(t.condition, activation) if t.condition and activation else [])]}
             for t in explanation.trace]
    if args.format == "json":
        print(json.dumps({"decision": d.to_json(), "reason": explanation.reason, "rules": rules,
                          "not_applicable": [{"rule": r, "why": why} for r, why in explanation.skipped]},
                         indent=2))
        return EXIT_OK
    print(f"decision: {'ALLOW' if d.allowed else 'DENY'}")
    print(f"reason:   {explanation.reason}")
    if d.message and not d.allowed:
        print(f"message:  {d.message}")
    print(f"revision: {d.revision}")
    if rules:
        print("rules considered (in order; deny rules first):")
    for r in rules:
        outcome = f"error: {r['error']}" if r["error"] else f"condition = {r['value']}"
        print(f"  {r['effect']:5} {r['rule']:40} {r['result']:12} {outcome}")
        if r["condition"]:
            print(f"        {r['condition'].strip()}")
        for operand in r["operands"]:
            print(f"          {operand['operand']}  ->  {operand['value']}")
    if explanation.skipped:
        print("rules that did not apply:")
    for rule, why in explanation.skipped:
        print(f"  {rule:46} {why}")
    return EXIT_OK


def _activation(raw: dict) -> dict | None:
    """The request as conditions see it (None when it is not a valid request: explain says why)."""
    from capengine.policy.model import Request, RequestError

    try:
        return Request.from_mapping(raw).activation()
    except RequestError:
        return None


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


def _extension_dir(name: str) -> str:
    """A directory as given, else a bundled example of that name (`capengine run hello-wat` works from a wheel)."""
    if not Path(name).exists() and "/" not in name and bundled.extension(name).is_dir():
        return str(bundled.extension(name))
    return name


def _cmd_run(args: argparse.Namespace) -> int:
    from capengine.errors import CapengineError
    from capengine.host.extension_host import Host
    from capengine.host.manifests import ExtensionError, load_extension
    from capengine.progress_display import ProgressDisplay

    try:
        ext = load_extension(_extension_dir(args.extension))
        user_input = _json_object(args.input, "--input") if args.input else None
    except (ExtensionError, ValueError) as exc:
        print(f"capengine run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    policy_set = _load_policy_set(args.policies, "run")
    if policy_set is None:
        return EXIT_FINDINGS
    try:
        host = Host(policy_set, _data_dir(args))
    except CapengineError as exc:  # an unusable data dir, a damaged key file
        print(f"capengine run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ext = host.bind(ext)
        library = host.open_library(Path(args.library) if args.library else bundled.sample_library(host.data_dir))
        if user_input is None:
            user_input = {"library": library.id}
        job = args.job or ext.jobs[0]
        display = ProgressDisplay()
        run = host.new_run(ext, job)
        run.on_change = display.update
        result, calls = host.run_job(ext, job, json.dumps(user_input).encode(), run)
        display.finish(run)
    except (CapengineError, OSError, ValueError) as exc:
        print(f"capengine run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        host.close()
    if ext.namespace != ext.id:
        print(f"development mode: {ext.id} is not installed in {host.data_dir}, so it runs in a namespace of its "
              f"own, {ext.namespace} (its own vault, sidecars and rate limits; never an installed extension's). "
              f"To run it as {ext.id}: capengine ext install {ext.directory}")
    print(f"extension {ext.id} {ext.version}, job {job}, library {library.id} ({library.root})")
    print(f"policy revision {policy_set.revision}; {len(calls) + calls.dropped} call(s):")
    from capengine.host.safe_text import escape  # guest-chosen text never reaches the terminal raw

    for c in calls:
        verdict = ("ALLOW" if c.allowed else "DENY ") if c.decided else "-----"
        rules = ",".join(c.rules) or ("default deny" if c.decided and not c.allowed else "-")
        outcome = c.code if c.code == "OK" and not c.message else f"{c.code}: {c.message}"
        print(f"  {verdict} {c.operation:20} {escape(c.path) or '-':32} {rules:32} {outcome}  [{c.duration_us} us]")
    if calls.dropped:
        print(f"  ... and {calls.dropped} more call(s) (see the decision log)")
    for level, text in result.logs:
        print(f"  log {('debug', 'info', 'warn', 'error')[level]}: {text}")
    print(f"job {result.status}" + (f": {escape(result.error)}" if result.error else ""))
    return EXIT_OK if result.status == "completed" else EXIT_FINDINGS


def _cmd_ext(args: argparse.Namespace) -> int:
    """The operator vouches for an extension: its id counts only for the module and manifest installed here."""
    from capengine.errors import CapengineError
    from capengine.host import signatures
    from capengine.host.installed import InstalledRegistry
    from capengine.host.manifests import load_extension

    command = f"capengine ext {args.ext_command}"
    try:
        if args.ext_command == "keygen":
            print(f"public key {signatures.generate_key(Path(args.path))}  (private key in {args.path}; trust the "
                  f"public one with: capengine ext trust NAME KEY --ids GLOB)")
            return EXIT_OK
        if args.ext_command == "sign":
            signed, pub = signatures.sign(Path(args.directory), Path(args.key))
            print(f"signed {signed.id} {signed.version} with {pub}: {Path(args.directory) / signatures.SIGNATURE_FILE}")
            return EXIT_OK
        registry = InstalledRegistry(_data_dir(args))
        if args.ext_command == "trust":
            trusted = registry.trusted.trust(args.name, args.key, args.ids)
            print(f"trusted {trusted.name} ({trusted.public_key}) to sign {', '.join(trusted.ids)}")
        elif args.ext_command == "untrust":
            if registry.trusted.untrust(args.name) is None:
                print(f"{command}: no trusted key named {args.name}", file=sys.stderr)
                return EXIT_FINDINGS
            print(f"no longer trusted: {args.name}")
        elif args.ext_command == "install":
            entry, changed = registry.install(load_extension(args.directory), replace=args.replace)
            print(f"{'installed' if changed else 'already installed'}: {entry.id} {entry.version}\n"
                  f"  module sha256   {entry.module_sha256}\n  manifest sha256 {entry.manifest_sha256}")
        elif args.ext_command == "remove":
            if registry.remove(args.id) is None:
                print(f"{command}: {args.id} is not installed in {registry.data_dir} (see capengine ext list)",
                      file=sys.stderr)
                return EXIT_FINDINGS
            print(f"removed {args.id} (its vault entries stay; installing the same id again reaches them)")
        else:
            for entry in registry.entries().values():
                print(f"{entry.id}  {entry.version}  module sha256 {entry.module_sha256}  manifest sha256 "
                      f"{entry.manifest_sha256}  from {entry.directory}  installed {entry.installed_at}")
            for key in registry.trusted.entries().values():
                print(f"trusted key {key.name}  {key.public_key}  may sign {', '.join(key.ids)}")
    except CapengineError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


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
    try:
        if args.library_command == "add":
            lib = catalog.add(args.directory, args.name, args.id, allow_hardlinks=args.allow_hardlinks)
            notes = [note for flag, note in ((lib.case_insensitive, "case-insensitive volume: policies judge "
                                              "on-disk spellings"), (lib.allow_hardlinks, "hard links allowed"))
                     if flag]
            print(f"{lib.id}  {lib.name}  {lib.root}" + "".join(f"  ({note})" for note in notes))
            return EXIT_OK
        if args.library_command == "remove":
            lib = catalog.remove(args.id)
            print(f"removed {lib.id}  {lib.name}  {lib.root} (its files are untouched)")
            return EXIT_OK
        if args.library_command == "move":
            lib = catalog.move(args.id, args.directory)
        else:
            for lib in catalog.list():
                print(f"{lib.id}  {lib.name}  {lib.root}")
            return EXIT_OK
    except (LibraryError, ValueError) as exc:
        print(f"capengine library {args.library_command}: {exc}", file=sys.stderr)
        if args.library_command == "add":
            _print_move_hint(catalog, Path(args.directory), args.id)
        return EXIT_USAGE
    print(f"{lib.id}  {lib.name}  {lib.root}")
    return EXIT_OK


def _print_move_hint(catalog: LibraryCatalog, directory: Path, library_id: str | None) -> None:
    """A second clone or a moved checkout carries a known id: say how to point that id here."""
    from capengine.host.libraries import LIBRARY_ID_FILE

    id_file = directory / LIBRARY_ID_FILE
    wanted = library_id or (id_file.read_text().strip() if id_file.is_file() else None)
    known = catalog.get(wanted) if wanted else None
    if known is not None and known.root != directory.resolve():
        print(f"  library {known.id} is at {known.root}; to use {directory} instead: "
              f"capengine library move {known.id} {directory}", file=sys.stderr)


def _workers(text: str) -> int:
    from capengine.daemon.worker_pool import default_size

    if text == "auto":
        return default_size()
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of worker processes (0, 1, 2, ... or auto)")
    return value


def _cmd_daemon(args: argparse.Namespace) -> int:
    import signal

    from capengine.daemon.config import DaemonConfig, DaemonError
    from capengine.daemon.decision_log import DEFAULT_MASK
    from capengine.daemon.logformat import configure_logging
    from capengine.daemon.server import Daemon

    configure_logging(args.log_format)
    requests: list[str] = []  # handlers first: a SIGTERM right after READY=1 must be a graceful stop
    signal.signal(signal.SIGHUP, lambda *_: requests.append("reload"))
    signal.signal(signal.SIGUSR1, lambda *_: requests.append("reopen"))
    signal.signal(signal.SIGTERM, lambda *_: requests.append("stop"))
    signal.signal(signal.SIGINT, lambda *_: requests.append("stop"))
    data_dir = _data_dir(args)
    try:
        config = DaemonConfig(Path(args.policies), Path(args.extensions), data_dir,
                              Path(args.socket) if args.socket else data_dir / "capengine.sock",
                              watch_interval=args.watch_interval, log_mask=DEFAULT_MASK + tuple(args.mask),
                              max_jobs_per_extension=args.max_jobs, queue_timeout=args.queue_timeout,
                              metrics_port=args.metrics_port,
                              metrics_textfile=Path(args.metrics_textfile) if args.metrics_textfile else None,
                              resume_interrupted=args.resume_interrupted, shutdown_grace=args.shutdown_grace,
                              workers=args.workers,
                              job_retention=Retention(args.keep_jobs, args.keep_jobs_days * 86400))
        daemon = Daemon(config)
        daemon.start()
    except (DaemonError, ValueError, OSError) as exc:
        print(f"capengine daemon: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    print(f"capengine daemon: serving on {config.socket} (policy revision {daemon.status.revision})", flush=True)
    while "stop" not in requests:
        time.sleep(0.05)
        while requests and requests[0] != "stop":  # a storm of SIGHUPs is one request: reloads coalesce
            what = requests.pop(0)
            if what == "reload":
                daemon.request_reload()
            elif what == "reopen":
                daemon.decisions.reopen()
    daemon.stop()
    return EXIT_OK


EXIT_NO_DAEMON = 3  # ctl: nothing listening at the socket (or it went away mid-call)


def _cmd_ctl(args: argparse.Namespace) -> int:
    """Exit 0 on success; 1 when the call failed (a JSON-RPC error, a job that did not complete, a rejected
    reload); 2 for bad usage; 3 when no daemon answers. Results go to stdout, errors to stderr."""
    from capengine.daemon.client import NoDaemon, call

    try:
        params = json.loads(args.params) if args.params else {}
        if not isinstance(params, dict):
            raise ValueError("PARAMS must be a JSON object")
    except ValueError as exc:
        print(f"capengine ctl: bad PARAMS: {exc}", file=sys.stderr)
        return EXIT_USAGE
    socket_path = Path(args.socket) if args.socket else _data_dir(args) / "capengine.sock"
    try:
        reply = call(socket_path, args.method, params, timeout=args.timeout, wait=args.wait)
    except NoDaemon as exc:
        print(f"capengine ctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except (OSError, ValueError) as exc:
        print(f"capengine ctl: {socket_path}: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    if "error" in reply:
        print(json.dumps(reply["error"], indent=2), file=sys.stderr)
        return EXIT_FINDINGS
    result = reply.get("result")
    print(json.dumps(result, indent=2))
    failed = isinstance(result, dict) and (result.get("reloaded") is False or result.get("status") in (
        "failed", "interrupted"))
    return EXIT_FINDINGS if failed else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    """Exit 0: nothing flips; 1: some decisions flip; 2: bad input (not a decision log, unreadable, or a
    candidate policy set with errors)."""
    from capengine.daemon.replay import NotADecisionLog, replay

    policy_set = _load_policy_set(args.policies, "replay")
    if policy_set is None:
        return EXIT_USAGE
    try:
        report = replay(policy_set, args.logs)
    except NotADecisionLog as exc:
        print(f"capengine replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for flip in report.flips:
        r = flip.record
        print(f"{flip.file}:{flip.line}: {flip.was} -> {flip.now}  {r['extension']} {r['operation']} "
              f"{r.get('path') or '-'}  (now: {', '.join(flip.rules) or 'default deny'}; "
              f"was: {', '.join(r.get('rules', [])) or 'default deny'})")
    for file, line in report.unreadable:
        print(f"{file}:{line}: not a decision record; skipped", file=sys.stderr)
    print(f"{report.decided} decision(s) from {len(report.files)} file(s) replayed under revision "
          f"{policy_set.revision}: {len(report.flips)} would flip; {report.skipped} call(s) never reached a decision")
    return EXIT_FINDINGS if report.flips else EXIT_OK


def _analysis_set(policies: str, command: str):
    if not Path(policies).exists():
        print(f"capengine {command}: no such file or directory: {policies}", file=sys.stderr)
        return None
    return _load_policy_set(policies, command)


def _cmd_analyze_can(args: argparse.Namespace) -> int:
    from capengine.analysis.can import AnalysisError, can

    policy_set = _analysis_set(args.policies, "analyze can")
    if policy_set is None:
        return EXIT_USAGE
    try:
        answer = can(policy_set, args.extension, args.operation, args.path, args.library, args.timeout)
    except AnalysisError as exc:
        print(f"capengine analyze can: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False) if args.format == "json" else answer.text())
    return {"never": EXIT_OK, "yes": EXIT_FINDINGS}.get(answer.answer, EXIT_UNKNOWN)


def _cmd_analyze_permissions(args: argparse.Namespace) -> int:
    from capengine.analysis.can import AnalysisError
    from capengine.analysis.domain import operation_names
    from capengine.analysis.permissions import declared_operations, permissions, policy_operations

    policy_set = _analysis_set(args.policies, "analyze permissions")
    if policy_set is None:
        return EXIT_USAGE
    try:
        if args.extensions:
            operations = declared_operations(args.extensions, args.extension)
        else:
            operations = policy_operations(policy_set, args.extension, operation_names())
        summaries = permissions(policy_set, args.extension, operations, args.timeout)
    except AnalysisError as exc:
        print(f"capengine analyze permissions: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "json":
        print(json.dumps({"extension": args.extension, "operations": [s.to_json() for s in summaries]}, indent=2,
                         ensure_ascii=False))
    else:
        print(f"{args.extension}: {len(summaries)} operation(s)")
        for summary in summaries:
            print(summary.text())
    return EXIT_OK


def _cmd_analyze_lint(args: argparse.Namespace) -> int:
    from capengine.analysis.lints import lint
    from capengine.analysis.render import lint_output

    policy_set = _analysis_set(args.policies, "analyze lint")
    if policy_set is None:
        return EXIT_USAGE
    found = lint(policy_set, args.timeout)
    sys.stdout.write(lint_output(found, args.format, args.strict))
    return EXIT_FINDINGS if found and args.strict else EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from capengine.analysis.diff import diff
    from capengine.analysis.render import diff_output

    old_set = _analysis_set(args.old, "diff")
    new_set = _analysis_set(args.new, "diff") if old_set is not None else None
    if old_set is None or new_set is None:
        return EXIT_USAGE
    result = diff(old_set, new_set, timeout_ms=args.timeout)
    sys.stdout.write(diff_output(result, args.format, args.allow_widening))
    return EXIT_FINDINGS if result.may_widen and not args.allow_widening else EXIT_OK


def _cmd_test(args: argparse.Namespace) -> int:
    """Exit 0 all cases pass, 1 a case failed, 2 usage or policy load errors (nothing was tested)."""
    import re

    from capengine.policy import test_output, testrun

    paths = args.paths or [_default_policies()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        print(f"capengine test: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pattern = re.compile(args.run) if args.run is not None else None
    except re.error as exc:
        print(f"capengine test: --run {args.run!r} is not a regular expression: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcome = run_check(paths, operations=_operations(), run_tests=False)
    errors = [f for f in outcome.findings if f.severity == "error"]
    if errors:
        sys.stderr.write(report.as_text(errors, f"capengine test: the policy set has {len(errors)} error(s); "
                                                "nothing was tested (see capengine check)"))
        return EXIT_USAGE
    if not outcome.load.suites:
        print(f"capengine test: no PolicyTest file in {', '.join(paths)}", file=sys.stderr)
        return EXIT_USAGE
    selected = testrun.select(outcome.load.suites, pattern)
    if not selected:
        total = sum(len(s.cases) for s in outcome.load.suites)
        print(f"capengine test: --run {args.run!r} matches none of the {total} test cases (names are "
              "'suite / case')", file=sys.stderr)
        return EXIT_USAGE
    run = testrun.run(outcome.policy_set, selected)
    if args.format == "json":
        sys.stdout.write(test_output.as_json(run))
    elif args.format == "junit":
        sys.stdout.write(test_output.as_junit(run))
    else:
        sys.stdout.write(test_output.as_text(run, args.verbose))
    return EXIT_FINDINGS if run.report.failed else EXIT_OK


def _cmd_fmt(args: argparse.Namespace) -> int:
    """Exit 0 formatted (or, with --check, already canonical), 1 --check found files to reformat (each shown as
    a diff), 2 a file fmt refuses (invalid YAML, anchors, not a regular file, ...) or a missing path."""
    import difflib
    import signal

    from capengine.policy import fmt_files
    from capengine.policy.fmt import FormatError, format_text

    if hasattr(signal, "SIGXFSZ"):  # a file size limit fails the write (and the original stays) instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    code, changed = EXIT_OK, 0
    for found in fmt_files.discover(args.paths or [_default_policies()]):
        path = found.path
        try:
            if found.problem:
                raise fmt_files.FileProblem(found.problem)
            text = fmt_files.read(path)
            formatted = format_text(text)
            if formatted == text:
                continue
            changed += 1
            if args.check:
                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                           f"{path}", f"{path} (formatted)"))
                code = max(code, EXIT_FINDINGS)
                continue
            fmt_files.replace(path, formatted)
            print(f"formatted {path}")
        except (FormatError, fmt_files.FileProblem) as exc:
            column = getattr(exc, "column", 0)
            where = f"{path}:{exc.line}:{column}" if exc.line and column else f"{path}:{exc.line}" if exc.line \
                else str(path)
            print(f"capengine fmt: {where}: {exc.message}", file=sys.stderr)
            code = EXIT_USAGE
    if args.check and changed:
        print(f"capengine fmt: {changed} file(s) would be reformatted; run capengine fmt", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="capengine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"capengine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="validate, type-check, lint and test policy files")
    check.add_argument("paths", nargs="*", help="files or directories (default: ./policies, else the bundled ones)")
    check.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.add_argument("--extensions", metavar="DIR", help="flag policies whose extension globs match nothing here")
    check.add_argument("--coverage", action="store_true", help="report rules no test case exercised")
    check.add_argument("--min-coverage", type=float, metavar="N", help="fail when rule coverage is below N%%")
    check.set_defaults(func=_cmd_check)

    test = sub.add_parser("test", help="run the PolicyTest suites; rule and branch coverage")
    test.add_argument("paths", nargs="*", help="files or directories (default: ./policies, else the bundled ones)")
    test.add_argument("--run", metavar="REGEX", help="only the cases whose 'suite / case' name matches")
    test.add_argument("-v", "--verbose", action="store_true", help="list every case with its deciding rule")
    test.add_argument("--format", choices=["text", "json", "junit"], default="text")
    test.set_defaults(func=_cmd_test)

    fmt = sub.add_parser("fmt", help="rewrite policy and policy-test files in the canonical YAML layout")
    fmt.add_argument("paths", nargs="*", help="files or directories (default: ./policies, else the bundled ones)")
    fmt.add_argument("--check", action="store_true", help="change nothing; list files that would change (exit 1)")
    fmt.set_defaults(func=_cmd_fmt)

    explain = sub.add_parser("explain", help="show how the policy set decides one request")
    explain.add_argument("--policies", metavar="DIR",
                         help="policy directory (default: ./policies, else the bundled ones)")
    explain.add_argument("--request", required=True, help="JSON object, or a file containing one (@file)")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(func=_cmd_explain)

    run = sub.add_parser("run", help="run one job of an extension and print the calls it made")
    run.add_argument("extension", nargs="?", default=str(bundled.extension()),
                     help="extension directory, or the name of a bundled one such as hello-wat "
                          "(default: the bundled photo-ocr)")
    run.add_argument("--policies", default=str(bundled.policies()), metavar="DIR",
                     help="policy directory (default: the bundled policies)")
    run.add_argument("--library", metavar="DIR", help="library root (default: the bundled sample library)")
    run.add_argument("--job", help="job name (default: the manifest's first job)")
    run.add_argument("--input", help='job input as a JSON object (default: {"library": "<the library\'s id>"})')
    run.add_argument("--data-dir", metavar="DIR", help="catalogue, vault and module cache (default: XDG data)")
    run.set_defaults(func=_cmd_run)

    ext = sub.add_parser("ext", help="install, list and remove the extensions the daemon may run")
    ext_data_dir = _Parser(add_help=False)
    ext_data_dir.add_argument("--data-dir", metavar="DIR", help="where the registry lives (default: XDG data)")
    ext_sub = ext.add_subparsers(dest="ext_command", required=True, parser_class=_Parser)
    install = ext_sub.add_parser("install", help="vouch for the module and manifest in DIR under their id",
                                 parents=[ext_data_dir])
    install.add_argument("directory", metavar="DIR")
    install.add_argument("--replace", action="store_true",
                         help="replace an installed extension of the same id that has other digests")
    ext_sub.add_parser("list", help="list the installed extensions and their digests", parents=[ext_data_dir])
    remove = ext_sub.add_parser("remove", help="withdraw an installed extension", parents=[ext_data_dir])
    remove.add_argument("id", metavar="ID")
    keygen = ext_sub.add_parser("keygen", help="make an Ed25519 signing key (PEM, 0600) and print its public key")
    keygen.add_argument("path", metavar="PRIVATE_KEY_FILE")
    sign = ext_sub.add_parser("sign", help="sign DIR's id, manifest and module (writes DIR/signature.ed25519)")
    sign.add_argument("directory", metavar="DIR")
    sign.add_argument("--key", required=True, metavar="PRIVATE_KEY_FILE")
    trust = ext_sub.add_parser("trust", help="accept extensions signed by KEY for ids matching GLOB without install",
                               parents=[ext_data_dir])
    trust.add_argument("name", metavar="NAME")
    trust.add_argument("key", metavar="PUBLIC_KEY", help="base64, as ext keygen prints it")
    trust.add_argument("--ids", nargs="+", required=True, metavar="GLOB", help="ids the key may sign for")
    untrust = ext_sub.add_parser("untrust", help="withdraw a trusted key", parents=[ext_data_dir])
    untrust.add_argument("name", metavar="NAME")
    ext.set_defaults(func=_cmd_ext)

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
    add.add_argument("--allow-hardlinks", action="store_true",
                     help="open regular files with more than one hard link (refused by default; docs/operations.md)")
    lib_sub.add_parser("list", help="list the libraries", parents=[data_dir])
    remove = lib_sub.add_parser("remove", help="forget a library (its files are untouched)", parents=[data_dir])
    remove.add_argument("id", help="library UUID")
    move = lib_sub.add_parser("move", help="re-root a known library id (a moved checkout or a second clone)",
                              parents=[data_dir])
    move.add_argument("id", help="library UUID")
    move.add_argument("directory")
    library.set_defaults(func=_cmd_library)

    daemon = sub.add_parser("daemon", help="serve extensions under the policy set (fails closed on errors)")
    daemon.add_argument("--policies", required=True, metavar="DIR")
    daemon.add_argument("--extensions", required=True, metavar="DIR")
    daemon.add_argument("--data-dir", metavar="DIR")
    daemon.add_argument("--socket", metavar="PATH", help="control socket (default: DATA_DIR/capengine.sock)")
    daemon.add_argument("--watch-interval", type=float, default=1.0, metavar="SECONDS",
                        help="watch the policy directory with inotify and reload on changes; SECONDS: how often the "
                             "directory itself is checked for being replaced, and the polling period where inotify "
                             "is unavailable (0: no watching, only SIGHUP/policies.reload)")
    daemon.add_argument("--mask", action="append", default=[], metavar="FIELD",
                        help="also mask this arg name in the decision log (repeatable)")
    daemon.add_argument("--max-jobs", type=int, default=2, metavar="N", help="jobs run at once per extension")
    daemon.add_argument("--queue-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long jobs.run waits for a free slot before -32001")
    daemon.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1")
    daemon.add_argument("--metrics-textfile", metavar="PATH", help="write Prometheus metrics for node_exporter")
    daemon.add_argument("--log-format", choices=["text", "json"], default="text", help="the daemon's own log")
    daemon.add_argument("--resume-interrupted", action="store_true",
                        help="resume the jobs a shutdown or crash interrupted, from their last checkpoints")
    daemon.add_argument("--shutdown-grace", type=float, default=2.0, metavar="SECONDS",
                        help="how long running jobs get at shutdown to checkpoint and return before they are stopped")
    daemon.add_argument("--workers", type=_workers, default=0, metavar="N|auto",
                        help="run jobs in N worker processes (auto: one per CPU); 0 (default): threads in the daemon")
    daemon.add_argument("--keep-jobs", type=int, default=DEFAULT_KEEP, metavar="N",
                        help=f"finished job records kept, the newest first (default {DEFAULT_KEEP:,}); older ones "
                             "are removed with their checkpoints")
    daemon.add_argument("--keep-jobs-days", type=float, default=DEFAULT_MAX_AGE / 86400, metavar="DAYS",
                        help=f"and none older than DAYS (default {DEFAULT_MAX_AGE / 86400:g}); jobs a restart would "
                             "resume are always kept")
    daemon.set_defaults(func=_cmd_daemon)

    ctl = sub.add_parser("ctl", help="call the daemon's control interface (exit 0 ok, 1 failed, 3 no daemon)")
    ctl.add_argument("method", help="jobs.run, jobs.status, jobs.cancel, jobs.resume, jobs.list, extensions.list, "
                                    "policies.status, policies.reload, decisions.tail, health")
    ctl.add_argument("params", nargs="?", help="JSON object of parameters")
    ctl.add_argument("--socket", metavar="PATH")
    ctl.add_argument("--data-dir", metavar="DIR")
    ctl.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait up to SECONDS for the daemon to be listening (it may still be starting)")
    ctl.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="for the reply")
    ctl.set_defaults(func=_cmd_ctl)

    replay = sub.add_parser("replay", help="re-decide decision logs under candidate policies; list flips "
                                           "(exit 1: flips, 2: bad input)")
    replay.add_argument("--policies", required=True, metavar="DIR")
    replay.add_argument("logs", nargs="+", metavar="LOG",
                        help="decision-log files, globs, or a data dir (all rotated files, oldest first)")
    replay.set_defaults(func=_cmd_replay)

    timeout = _Parser(add_help=False)
    timeout.add_argument("--timeout", type=int, default=10_000, metavar="MS",
                         help="solver time limit per query; a query that runs out answers 'unknown', never 'no'")
    analyze = sub.add_parser("analyze", help="prove properties of a policy set with an SMT solver")
    an_sub = analyze.add_subparsers(dest="analyze_command", required=True, parser_class=_Parser)
    can = an_sub.add_parser("can", parents=[timeout],
                            help="can EXT ever be allowed OP? 'never (proved)' or a witness request (exit 0/1/3)")
    can.add_argument("extension")
    can.add_argument("operation")
    can.add_argument("--policies", required=True, metavar="DIR")
    can.add_argument("--path", metavar="GLOB", help="only paths matching this glob")
    can.add_argument("--library", metavar="ID", help="only this library UUID")
    can.add_argument("--format", choices=["text", "json"], default="text")
    can.set_defaults(func=_cmd_analyze_can)
    perms = an_sub.add_parser("permissions", parents=[timeout],
                              help="what EXT may do, per operation: path regions, libraries, argument limits")
    perms.add_argument("extension")
    perms.add_argument("--policies", required=True, metavar="DIR")
    perms.add_argument("--extensions", metavar="DIR", help="read the declared operations from the manifest here")
    perms.add_argument("--format", choices=["text", "json"], default="text")
    perms.set_defaults(func=_cmd_analyze_permissions)
    alint = an_sub.add_parser("lint", parents=[timeout], help="lints the solver proves (shadowed, redundant, ...)")
    alint.add_argument("--policies", required=True, metavar="DIR")
    alint.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    alint.add_argument("--strict", action="store_true", help="findings are errors (exit 1)")
    alint.set_defaults(func=_cmd_analyze_lint)

    diff = sub.add_parser("diff", parents=[timeout],
                          help="requests one policy set allows and the other denies, with witnesses")
    diff.add_argument("old", metavar="OLD_DIR")
    diff.add_argument("new", metavar="NEW_DIR")
    diff.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    diff.add_argument("--allow-widening", action="store_true", help="exit 0 even when NEW allows more than OLD")
    diff.set_defaults(func=_cmd_diff)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every command's errors end here once: a CapengineError (bad input, a damaged data dir; its text names
    the file and the fix) is one line and exit 2, never a traceback; a reader that closed the pipe early
    (`capengine ops --format json | head -1`) ends the command quietly."""
    from capengine.errors import CapengineError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit where it cannot be caught
        return code
    except BrokenPipeError:
        # Python would complain again flushing stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CapengineError as exc:
        print(f"capengine {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
