"""Property-based fuzzing of the ABI boundary through a real wasm guest.

The guest takes its orders from the job input: which host function to call (spacedrive_call / _result /
_input / _log / _call_into), with which seven i32 arguments, over which bytes (the input is copied into guest memory at
DATA, so pointers can aim at fuzzed bytes). After the fuzzed call it makes an ordinary test.ping and fails
the job unless that ping still succeeds. Asserted for every example: the job completes (so no trap, no hang:
a hang would end in the CPU limit and fail), no host error was raised, and every spacedrive_call was recorded
with a code from the documented set.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasm_helpers import LIB, extension, make_host, wat_bytes, wat_module

from capengine.host.envelope import FAULT_RANGE, FAULT_TOO_LARGE, OK, ErrorCode
from capengine.host.operations import default_registry

DATA = 16384  # where the guest copies its input; fuzzed bytes start at DATA + 32
PAYLOAD = DATA + 32
MEMORY = 2 * 65536
CODES = {OK, FAULT_RANGE, FAULT_TOO_LARGE, *(str(c) for c in ErrorCode)}
PING = '{"message":"ok"}'

GUEST = wat_module(f"""
  (data $method "test.ping")
  (data $ping "{wat_bytes(PING)}")
  (func (export "execute_go") (result i32)
    (local $n i32) (local $op i32) (local $r i32)
    (local.set $n (call $spacedrive_input (i32.const 0) (i32.const 0)))
    (if (i32.gt_u (local.get $n) (i32.const {MEMORY - DATA})) (then (return (i32.const 2))))
    (drop (call $spacedrive_input (i32.const {DATA}) (local.get $n)))
    (local.set $op (i32.load (i32.const {DATA})))
    (if (i32.eq (local.get $op) (i32.const 0))
      (then (drop (call $spacedrive_call (i32.load (i32.const {DATA + 4})) (i32.load (i32.const {DATA + 8}))
                                         (i32.load (i32.const {DATA + 12})) (i32.load (i32.const {DATA + 16}))
                                         (i32.load (i32.const {DATA + 20}))))))
    (if (i32.eq (local.get $op) (i32.const 1))
      (then (drop (call $spacedrive_result (i32.load (i32.const {DATA + 4})) (i32.load (i32.const {DATA + 8}))))))
    (if (i32.eq (local.get $op) (i32.const 2))
      (then (drop (call $spacedrive_input (i32.load (i32.const {DATA + 4})) (i32.load (i32.const {DATA + 8}))))))
    (if (i32.eq (local.get $op) (i32.const 3))
      (then (call $spacedrive_log (i32.load (i32.const {DATA + 4})) (i32.load (i32.const {DATA + 8}))
                                  (i32.load (i32.const {DATA + 12})))))
    (if (i32.eq (local.get $op) (i32.const 5))
      (then (drop (call $spacedrive_call_into (i32.load (i32.const {DATA + 4})) (i32.load (i32.const {DATA + 8}))
                                              (i32.load (i32.const {DATA + 12})) (i32.load (i32.const {DATA + 16}))
                                              (i32.load (i32.const {DATA + 20})) (i32.load (i32.const {DATA + 24}))
                                              (i32.load (i32.const {DATA + 28}))))))
    ;; the fuzzed call may have written anywhere: lay the ping out again, then it must still work
    (memory.init $method (i32.const 1024) (i32.const 0) (i32.const 9))
    (memory.init $ping (i32.const 1040) (i32.const 0) (i32.const {len(PING)}))
    (local.set $r (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 1040)
                                         (i32.const {len(PING)})))
    (if (i32.or (i32.lt_s (local.get $r) (i32.const 8)) (i32.gt_s (local.get $r) (i32.const 4096)))
      (then (return (i32.const 2))))
    (if (i32.ne (call $spacedrive_result (i32.const 8192) (local.get $r)) (local.get $r)) (then (return (i32.const 2))))
    ;; {{"ok":true : byte 6 is 't'
    (if (i32.ne (i32.load8_u (i32.const 8198)) (i32.const 116)) (then (return (i32.const 2))))
    (i32.const 0))""")

I32_EDGES = [0, 1, -1, 8, 9, 64, 1024, DATA, PAYLOAD, MEMORY - 1, MEMORY, MEMORY + 1, 0x7FFFFFFF, -0x80000000,
             1024 * 1024, 1024 * 1024 + 1, 256, 257]
i32 = st.one_of(st.sampled_from(I32_EDGES), st.integers(-0x80000000, 0x7FFFFFFF))

OPERATIONS = ["test.ping", "vdfs.read_file", "vdfs.list_dir", "vdfs.stat", "vdfs.read_sidecar", "credentials.get",
              "no.such", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
json_payloads = st.one_of(
    st.dictionaries(st.sampled_from(["path", "message", "offset", "length", "kind", "name", "x"]), json_values,
                    max_size=4).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"path": st.text(max_size=60)}).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@st.composite
def well_aimed_calls(draw):
    """A spacedrive_call (or _call_into, with an output buffer that fits, is too small, overlaps the request or
    lies outside memory) whose method and payload point at the fuzzed bytes, with a plausible length."""
    method = draw(st.sampled_from(OPERATIONS)).encode()
    payload = draw(json_payloads)
    library = draw(st.sampled_from([0, 1]))
    body = method + payload + bytes.fromhex(LIB.replace("-", ""))
    args = [PAYLOAD, len(method), PAYLOAD + len(method) + len(payload) if library else 0,
            PAYLOAD + len(method), draw(st.sampled_from([len(payload), len(payload) + 1, 0])) or len(payload)]
    op = draw(st.sampled_from([0, 5]))
    out = draw(st.sampled_from([(32768, 4096), (32768, 3), (32768, 0), (0, 0), (PAYLOAD, 4096), (DATA, 64),
                                (MEMORY - 8, 4096), (MEMORY, 1), (-1, 16), (32768, -1), (0x7FFFFFFF, 2)]))
    return op, [*args, *out], body


@st.composite
def raw_calls(draw):
    op = draw(st.integers(0, 5))
    return op, [draw(i32) for _ in range(7)], draw(st.binary(max_size=2000))


def job_input(op: int, args: list[int], body: bytes) -> bytes:
    return struct.pack("<8i", op, *args) + body


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    h = make_host(tmp, cpu_seconds=5.0, memory_bytes=4 * 1024 * 1024)
    h.fuzz_ext = extension(tmp, GUEST)  # type: ignore[attr-defined]
    yield h
    h.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(call=st.one_of(well_aimed_calls(), raw_calls()))
def test_the_abi_boundary_survives_anything(host, call):
    op, args, body = call
    result, calls = host.run_job(host.fuzz_ext, "go", job_input(op, args, body))
    assert result.status == "completed", (result.error, calls)
    assert "host errors" not in result.error
    assert {c.code for c in calls} <= CODES
    assert calls[-1].operation == "test.ping" and calls[-1].code == OK  # the host still serves the next call
    if op in (0, 5):
        assert len(calls) == 2  # the fuzzed call was recorded too, whatever happened to it


def test_the_guest_itself_fails_when_the_host_stops_serving(host, monkeypatch):
    """The property above could not fail if the sanity ping were broken: show that it detects a dead host."""
    from capengine.host.session import GuestSession

    monkeypatch.setattr(GuestSession, "result", lambda self, caller, ptr, cap: -1)
    result, _ = host.run_job(host.fuzz_ext, "go", job_input(4, [0] * 7, b""))
    assert result.status == "failed"


FIELDS = ["path", "message", "offset", "length", "kind", "name", "secret", "data", "writer", "replace", "language"]
field_values = st.one_of(
    st.text(max_size=30), st.sampled_from(["/docs/hello.txt", "/docs", "/", "/docs/sub/secret.txt", "/nope",
                                           "/docs/../x", "ocr-text", "eng", "/DOCS/HELLO.txt", "/docs/caf\u00e9",
                                           "/Docs/Sub/Secret.TXT", "/docs/hello.txt/x"]),
    st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=3))


ALLOW_ALL = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: all}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: all, effect: allow, operations: ["**"]}
"""


@pytest.fixture(scope="module")
def open_host(tmp_path_factory):
    """Every operation allowed, so fuzzed input reaches the handlers instead of stopping at the policy; the
    library is recorded case-insensitive, so every path also goes through the on-disk spelling lookup."""
    import attrs

    tmp = tmp_path_factory.mktemp("fuzz-open")
    h = make_host(tmp, ALLOW_ALL)
    h.catalog._known[LIB] = attrs.evolve(h.catalog.get(LIB), case_insensitive=True)
    for name in ("Hello.TXT", "cafe\u0301", "caf\u00e9", "Docs2"):
        (tmp / "lib" / "docs" / name).write_text(name)
    h.fuzz_ext = extension(tmp, GUEST)  # type: ignore[attr-defined]
    yield h
    h.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(sorted(default_registry().names())),
       payload=st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5))
def test_no_payload_makes_an_operation_fail_inside_the_host(open_host, method, payload):
    """Every operation, every shape of input that parses: a defined code, never INTERNAL (a host bug)."""
    from capengine.host.dispatcher import Dispatcher
    from capengine.host.host_errors import HostErrors

    records = []
    errors = HostErrors()
    host = open_host
    dispatcher = Dispatcher(host.active, host.registry, host.catalog, host.data_dir, records.append)
    reply = json.loads(dispatcher.reply(host.fuzz_ext, method, LIB, payload, None, errors))
    [record] = records
    code = "OK" if reply["ok"] else reply["error"]["code"]
    assert record.code == code and code in CODES and code != "INTERNAL", (reply, list(errors))
