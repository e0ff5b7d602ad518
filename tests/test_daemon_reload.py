"""Reload attacks on a real daemon: in-place writes under a SIGHUP storm and the watcher, truncation, vanished
files and directories, the Kubernetes ConfigMap layout and `current` symlink swaps, rate limits across reloads.
The invariant: a reload never activates a set that lost a policy or rule without being told to."""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

from daemon_helpers import DENY_PRIVATE, DaemonProcess, make_setup, read_log
from helpers import policy_yaml, write

READ = {"extension": "com.example.reader", "job": "go"}


def _hammer(d: DaemonProcess, stop: threading.Event, codes: list[str]) -> None:
    while not stop.is_set():
        reply = d.call("jobs.run", READ)
        if "result" in reply:
            codes.extend(c["code"] for c in reply["result"]["calls"])


def _rewrite_in_place(path: Path, text: str, stop: threading.Event, hold_empty: float = 0.0) -> None:
    """What an editor or `generator > file` does: truncate, then write in pieces."""
    data = text.encode()
    while not stop.is_set():
        with path.open("wb") as f:
            f.flush()
            if hold_empty:
                time.sleep(hold_empty)
            for i in range(0, len(data), 40):
                f.write(data[i:i + 40])
                f.flush()
                time.sleep(0.0005)
        time.sleep(random.uniform(0, 0.01))


def _storm(d: DaemonProcess, policy_file: Path, seconds: float, sighup: bool, hold_empty: float = 0.0) -> list[str]:
    stop = threading.Event()
    codes: list[str] = []
    text = policy_file.read_text()
    threads = [threading.Thread(target=_hammer, args=(d, stop, codes)) for _ in range(2)]
    threads.append(threading.Thread(target=_rewrite_in_place, args=(policy_file, text, stop, hold_empty)))
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sighup:
            d.signal(signal.SIGHUP)
        time.sleep(0.002)
    stop.set()
    for t in threads:
        t.join()
    policy_file.write_text(text)
    return codes


def test_in_place_writes_and_sighup_storm_never_allow_a_forbidden_read(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    try:
        before = d.result("policies.status")["revision"]
        codes = _storm(d, dirs["policies"] / "deny.yaml", 6, sighup=True)
        assert codes and set(codes) == {"PERMISSION_DENIED"}, {c: codes.count(c) for c in set(codes)}
        health = d.result("health")
        assert health["status"] in ("ok", "degraded") and health["policy"]["revision"] == before
        ok, failed = health["policy"]["reloads_ok"], health["policy"]["reloads_failed"]
        assert 0 < ok + failed < 6 / 0.002 / 4  # thousands of SIGHUPs coalesced into far fewer reloads
        assert d.stop()[0] == 0
    finally:
        d.kill()
    assert not [r for r in read_log(dirs["data"]) if r["operation"] == "vdfs.read_file" and r["decision"] == "allow"]


def test_watcher_with_truncating_generator_never_allows_a_forbidden_read(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0.02").wait_ready()
    try:
        codes = _storm(d, dirs["policies"] / "deny.yaml", 4, sighup=False, hold_empty=0.1)  # empty > settle time
        assert codes and set(codes) == {"PERMISSION_DENIED"}, {c: codes.count(c) for c in set(codes)}
        status = d.result("policies.status")
        assert d.result("health")["threads"]["watcher"]["alive"]
    finally:
        d.stop()
        d.kill()
    assert status["files"] == 2


def test_emptied_or_vanished_file_keeps_last_known_good_until_accepted(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    try:
        deny = dirs["policies"] / "deny.yaml"
        deny.write_text("")
        result = d.result("policies.reload")
        assert not result["reloaded"] and "held policies deny and now holds none" in result["errors"][0]
        deny.write_text(policy_yaml("deny", DENY_PRIVATE)[:-25])  # cut short, still YAML
        result = d.result("policies.reload")
        assert not result["reloaded"], result
        deny.unlink()
        result = d.result("policies.reload")
        assert not result["reloaded"] and "is gone" in result["errors"][0]
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert d.result("health")["policy"]["last_reload_error"]
        # the operator says so: the removal goes through
        assert d.call("policies.reload", {"accept_removals": "yes"})["error"]["code"] == -32602
        assert d.result("policies.reload", {"accept_removals": True})["reloaded"]
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "OK"
    finally:
        d.stop()
        d.kill()


def test_directory_vanishing_mid_walk_never_kills_daemon_or_watcher(tmp_path):
    dirs = make_setup(tmp_path)
    d = DaemonProcess(dirs, "--watch-interval", "0.01").wait_ready()
    stop = threading.Event()

    def churn():
        sub = dirs["policies"] / "sub"
        while not stop.is_set():
            (sub / "deep").mkdir(parents=True, exist_ok=True)
            write(sub / "deep", "x.yaml", policy_yaml("x", "- {id: r, effect: allow, operations: [test.ping]}\n"))
            shutil.rmtree(sub, ignore_errors=True)

    t = threading.Thread(target=churn)
    t.start()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            d.signal(signal.SIGHUP)
            time.sleep(0.005)
        stop.set()
        t.join()
        assert d.proc.poll() is None
        health = d.result("health")
        assert all(state["alive"] for state in health["threads"].values()), health["threads"]
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        assert d.stop()[0] == 0
    finally:
        stop.set()
        d.kill()


def _configmap(root: Path, version: str, files: dict[str, str]) -> None:
    """What the kubelet does: a timestamped directory, `..data` flipped atomically, top-level file links."""
    stamp = root / f"..2026_11_26_{version}"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp.name)
    tmp.rename(root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_kubernetes_configmap_layout_loads_and_flips(tmp_path):
    dirs = make_setup(tmp_path)
    cm = tmp_path / "configmap"
    cm.mkdir()
    allow, deny = (dirs["policies"] / "allow.yaml").read_text(), (dirs["policies"] / "deny.yaml").read_text()
    _configmap(cm, "01", {"allow.yaml": allow, "deny.yaml": deny})
    dirs["policies"] = cm
    d = DaemonProcess(dirs, "--watch-interval", "0.05").wait_ready()
    try:
        status = d.result("policies.status")
        assert status["files"] == 2 and status["root"].endswith("..2026_11_26_01")
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        _configmap(cm, "02", {"allow.yaml": allow, "deny.yaml": policy_yaml("deny", "- {id: other, effect: deny, "
                                                                              "operations: [vdfs.stat]}\n")})
        deadline = time.monotonic() + 10  # the watcher sees the flip; a flip is a deliberate swap
        while not d.result("policies.status")["root"].endswith("_02"):
            assert time.monotonic() < deadline, d.result("policies.status")
            time.sleep(0.05)
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "OK"
        shutil.rmtree(cm / "..2026_11_26_01")  # the kubelet cleans up the old version
        assert d.result("policies.reload")["reloaded"]
    finally:
        d.stop()
        d.kill()


def test_current_symlink_swap(tmp_path):
    dirs = make_setup(tmp_path)
    releases = tmp_path / "releases"
    shutil.copytree(dirs["policies"], releases / "v1")
    shutil.copytree(dirs["policies"], releases / "v2")
    (releases / "v2" / "deny.yaml").unlink()
    (releases / "current").symlink_to("v1")
    dirs["policies"] = releases
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    try:
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "PERMISSION_DENIED"
        (releases / "next").symlink_to("v2")
        os.replace(releases / "next", releases / "current")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not d.result("policies.status")["root"].endswith("v2"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert d.result("jobs.run", READ)["calls"][0]["code"] == "OK"
    finally:
        d.stop()
        d.kill()


LIMITED = ("- {id: ping, effect: allow, operations: [test.ping]}\n")


def test_reload_that_changes_nothing_keeps_rate_limit_buckets(tmp_path):
    dirs = make_setup(tmp_path)
    write(dirs["policies"], "allow.yaml", policy_yaml("allow", "- {id: read, effect: allow, operations: "
                                                      "[vdfs.read_file, test.ping]}\n")
          + "  limits:\n    - {operations: [test.ping], rate: 1/minute, burst: 3}\n")
    d = DaemonProcess(dirs, "--watch-interval", "0").wait_ready()
    ping = {"extension": "com.example.pinger", "job": "go"}
    try:
        codes = [d.result("jobs.run", ping)["calls"][0]["code"] for _ in range(4)]
        assert codes == ["OK", "OK", "OK", "RATE_LIMITED"]
        for _ in range(5):
            d.signal(signal.SIGHUP)
            time.sleep(0.1)
        assert d.result("policies.reload")["reloaded"]
        write(dirs["policies"], "deny.yaml", policy_yaml("deny", DENY_PRIVATE + "- {id: more, effect: deny, "
                                                         "operations: [vdfs.stat]}\n"))
        assert d.result("policies.reload")["changed"]  # another policy changed; this limit did not
        assert d.result("jobs.run", ping)["calls"][0]["code"] == "RATE_LIMITED"
    finally:
        d.stop()
        d.kill()
