"""Property-based fuzzing of the JSON-RPC server: random bytes, random JSON, random lengths. Always a defined
error code (or a result), never an exception, and the daemon still serves the next request."""

from __future__ import annotations

import json
import socket

import pytest
from daemon_helpers import make_setup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capengine.daemon import rpc
from capengine.daemon.config import DaemonConfig
from capengine.daemon.server import Daemon

CODES = {-32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
METHODS = st.sampled_from(["jobs.run", "jobs.list", "extensions.list", "policies.status", "decisions.tail", "health",
                           "nope", ""])


def _check(reply_line: bytes | None) -> None:
    if reply_line is None:
        return
    assert reply_line.endswith(b"\n") and reply_line.count(b"\n") == 1
    reply = json.loads(reply_line)
    for item in reply if isinstance(reply, list) else [reply]:
        assert item["jsonrpc"] == "2.0"
        assert ("result" in item) != ("error" in item)
        if "error" in item:
            assert item["error"]["code"] in CODES, item


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    dirs = make_setup(tmp)
    d = Daemon(DaemonConfig(dirs["policies"], dirs["extensions"], dirs["data"], dirs["socket"], watch_interval=0,
                            max_line_bytes=4096))
    d.start()
    yield d
    d.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=300))
def test_random_bytes(daemon, line):
    _check(rpc.answer(line, daemon.handle))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, params=JSON, request_id=JSON, version=st.sampled_from(["2.0", "1.0", None]))
def test_random_requests(daemon, method, params, request_id, version):
    request = {"jsonrpc": version, "id": request_id, "method": method, "params": params}
    if method == "jobs.run" and isinstance(params, dict):
        params.setdefault("wait_ms", 0)  # never wait for a slot in a fuzz run
    _check(rpc.answer(json.dumps(request).encode(), daemon.handle))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=6000), min_size=1, max_size=4))
def test_random_bytes_over_the_socket_then_the_next_request_is_served(daemon, chunks):
    path = str(daemon.config.socket)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        try:
            for chunk in chunks:
                s.sendall(chunk.replace(b"\n", b" ") + b"\n")
        except OSError:
            pass  # closed by the line cap: allowed
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "health"}\n')
        assert "result" in json.loads(s.makefile("rb").readline())
