"""A set with no policy at all (a typo'd path, an emptied directory, files renamed away) is an error, not an
empty clean set: `check` fails, and the daemon refuses to start on it."""

from __future__ import annotations

import subprocess
import sys

from daemon_helpers import DaemonProcess, make_setup

from capengine.policy.check import run_check


def _codes(outcome) -> set[tuple[str, str]]:
    return {(f.severity, f.code) for f in outcome.findings}


def test_an_empty_directory_is_an_error(tmp_path):
    assert ("error", "no-policies") in _codes(run_check([tmp_path]))


def test_files_without_a_policy_document_are_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / "p.yaml.bak").write_text("apiVersion: capengine/v1\nkind: Policy\n")
    (tmp_path / "only-tests.yaml").write_text(
        "apiVersion: capengine/v1\nkind: PolicyTest\nmetadata: {name: t}\ncases:\n  - {name: c1, request: "
        "{extension: com.example.a, operation: vdfs.stat, path: /a}, expect: deny}\n")
    assert ("error", "no-policies") in _codes(run_check([tmp_path]))


def test_a_set_whose_files_fail_to_load_reports_why_not_no_policies(tmp_path):
    (tmp_path / "p.yaml").write_text("apiVersion: capengine/v1\nkind: Policy\n")
    codes = _codes(run_check([tmp_path]))
    assert ("error", "schema") in codes and ("error", "no-policies") not in codes


def test_one_empty_directory_beside_policies_is_fine(tmp_path):
    dirs = make_setup(tmp_path)
    (tmp_path / "empty").mkdir()
    assert ("error", "no-policies") not in _codes(run_check([dirs["policies"], tmp_path / "empty"]))


def test_the_cli_fails_and_names_the_path(tmp_path):
    done = subprocess.run([sys.executable, "-m", "capengine", "check", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done
    assert f"{tmp_path}: error no-policies" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_the_daemon_refuses_to_start_on_no_policies(tmp_path):
    dirs = make_setup(tmp_path)
    for path in dirs["policies"].iterdir():
        path.unlink()
    daemon = DaemonProcess(dirs)
    daemon.proc.wait(120)
    code, err = daemon.stop()
    assert code != 0 and "refusing to start" in err and "no-policies" in err and "Traceback" not in err, err
