"""The spacedrive_call bridge end to end, with real wasm modules, including hostile ones."""

from __future__ import annotations

import base64
import json

import pytest
from wasm_helpers import LIB, call_job, expect_job, extension, make_host, wat_bytes, wat_module

from capengine.host.manifests import ExtensionError, load_extension


def run(host, tmp_path, wat, **kw):
    result, calls = host.run_job(extension(tmp_path, wat, **kw), "go", b"{}")
    envelopes = [json.loads(text) for level, text in result.logs if text.startswith("{")]
    return result, calls, envelopes


def test_allowed_read_returns_the_bytes(host, tmp_path):
    result, calls, [env] = run(host, tmp_path, call_job("vdfs.read_file", '{"path": "/docs/./hello.txt"}'))
    assert result.status == "completed"
    assert env["ok"] is True and base64.b64decode(env["result"]["data"]) == b"hello bytes"
    [call] = calls
    assert (call.allowed, call.rules, call.path) == (True, ("t/docs",), "/docs/hello.txt")


def test_denied_read_names_the_rule(host, tmp_path):
    _, calls, [env] = run(host, tmp_path, call_job("vdfs.read_file", '{"path": "/docs/sub/secret.txt"}'))
    assert env == {"ok": False, "error": {"code": "PERMISSION_DENIED", "message": "no secrets", "rule": "t/no-secret"}}
    assert calls[0].allowed is False and calls[0].rules == ("t/no-secret",)


def test_default_deny_outside_the_allowed_tree(host, tmp_path):
    _, _, [env] = run(host, tmp_path, call_job("vdfs.read_file", '{"path": "/other.txt"}'))
    assert env["error"]["code"] == "PERMISSION_DENIED" and env["error"]["rule"] is None


def test_undeclared_operation_is_denied_even_if_policy_allows(host, tmp_path):
    wat = call_job("vdfs.read_file", '{"path": "/docs/hello.txt"}')
    _, calls, [env] = run(host, tmp_path, wat, operations=("vdfs.list_dir",))
    assert env["error"] == {"code": "PERMISSION_DENIED", "rule": "manifest",
                            "message": "vdfs.read_file is not declared in the manifest of com.example.app"}
    assert calls[0].decided is False


@pytest.mark.parametrize("method,payload,library_ptr,code", [
    ("no.such_op", "{}", 64, "UNKNOWN_OPERATION"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt"}', 0, "LIBRARY_REQUIRED"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt"}', 80, "NOT_FOUND"),  # 16 zero bytes: unknown library
    ("vdfs.read_file", '{"path": 7}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt", "extra": 1}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/../../etc/passwd"}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt\\u0000"}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt", "path": "/docs/sub/secret.txt"}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt"', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '["/docs/hello.txt"]', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"a":' * 100 + "1" + "}" * 100, 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/hello.txt", "offset": NaN}', 64, "INVALID_ARGUMENT"),
    (b"vdfs.read_\xfffile", '{"path": "/docs/hello.txt"}', 64, "INVALID_ARGUMENT"),
    ("vdfs.read_file", '{"path": "/docs/missing.txt"}', 64, "NOT_FOUND"),
    ("vdfs.read_file", '{"path": "/docs/' + "x" * 300 + '"}', 64, "INVALID_ARGUMENT"),  # name over 255 bytes
    ("vdfs.read_file", '{"path": "/docs\\..\\..\\etc"}', 64, "INVALID_ARGUMENT"),  # backslashes
])
def test_bad_calls_get_error_envelopes(host, tmp_path, method, payload, library_ptr, code):
    result, _, [env] = run(host, tmp_path, call_job(method, payload, library_ptr))
    assert result.status == "completed"
    assert env["ok"] is False and env["error"]["code"] == code, env


def test_non_utf8_payload_is_invalid_argument(host, tmp_path):
    data = '  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{\\"message\\": \\"\\ff\\"}")'
    call = ("(call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096) (i32.const 15))")
    wat = wat_module(f"""(func (export "execute_go") (result i32)
        (drop {call})
        (drop (call $spacedrive_result (i32.const 32768) (i32.const 1000)))
        (call $spacedrive_log (i32.const 1) (i32.const 32768) (call $spacedrive_result (i32.const 0) (i32.const 0)))
        (i32.const 0))""", data)
    _, _, [env] = run(host, tmp_path, wat)
    assert env["error"]["code"] == "INVALID_ARGUMENT" and "UTF-8" in env["error"]["message"]


CALL = "(call $spacedrive_call (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {}))"
PAGE2 = 2 * 65536  # the test modules have two pages


@pytest.mark.parametrize("args,expected", [
    ((-16, 9, 0, 4096, 2), -1),                   # negative (= huge unsigned) method pointer
    ((1024, 9, 0, -1, 2), -1),                    # payload pointer wraps
    ((1024, 9, 0, PAGE2 - 1, 2), -1),             # ptr + len one past the end of memory
    ((1024, 9, 0, 0xFFFFFFF0, 0x20), -1),         # ptr + len overflows 32 bits
    ((1024, 9, 0, 4096, 0x7FFFFFFF), -2),         # length over the request cap
    ((1024, 9, 0, 4096, -1), -2),                 # length 0xFFFFFFFF
    ((1024, 100000, 0, 4096, 2), -2),             # method longer than any operation name
    ((1024, 9, PAGE2 - 8, 4096, 2), -1),          # library id runs past the end of memory
])
def test_abi_faults_return_negative_codes(host, tmp_path, args, expected):
    data = '  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{}")'
    result, calls, _ = run(host, tmp_path, expect_job(expected, CALL.format(*args), data))
    assert result.status == "completed", result.error
    [call] = calls  # refused at the boundary, and still recorded with what the guest got
    assert call.code == {-1: "FAULT_RANGE", -2: "FAULT_TOO_LARGE"}[expected] and call.decided is False


def test_result_buffer_too_small_copies_nothing(host, tmp_path):
    data = ('  (data (i32.const 1024) "test.ping")\n'
            '  (data (i32.const 4096) "{\\"message\\": \\"hello\\"}")')
    body = """
  (func (export "execute_go") (result i32)
    (local $n i32)
    (local.set $n (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                         (i32.const 20)))
    (i32.store8 (i32.const 8192) (i32.const 42))
    ;; too small: returns the length, writes nothing
    (if (i32.ne (call $spacedrive_result (i32.const 8192) (i32.sub (local.get $n) (i32.const 1))) (local.get $n))
      (then unreachable))
    (if (i32.ne (i32.load8_u (i32.const 8192)) (i32.const 42)) (then unreachable))
    ;; size query with cap 0
    (if (i32.ne (call $spacedrive_result (i32.const 0) (i32.const 0)) (local.get $n)) (then unreachable))
    ;; bad range
    (if (i32.ne (call $spacedrive_result (i32.const -8) (i32.const 100)) (i32.const -1)) (then unreachable))
    (if (i32.ne (call $spacedrive_input (i32.const 131071) (i32.const 100)) (i32.const -1)) (then unreachable))
    ;; exact fit copies
    (if (i32.ne (call $spacedrive_result (i32.const 8192) (local.get $n)) (local.get $n)) (then unreachable))
    (if (i32.ne (i32.load8_u (i32.const 8192)) (i32.const 123)) (then unreachable))
    (i32.const 0))"""
    result, calls, _ = run(host, tmp_path, wat_module(body, data))
    assert result.status == "completed", result.error
    assert calls[0].code == "OK"


def test_input_is_delivered(host, tmp_path):
    body = """
  (func (export "execute_go") (result i32)
    (local $n i32)
    (local.set $n (call $spacedrive_input (i32.const 0) (i32.const 0)))
    (drop (call $spacedrive_input (i32.const 8192) (local.get $n)))
    (call $spacedrive_log (i32.const 1) (i32.const 8192) (local.get $n))
    (i32.const 0))"""
    result, _ = host.run_job(extension(tmp_path, wat_module(body)), "go", b'{"x": [1, 2]}')
    assert result.logs == ((1, '{"x": [1, 2]}'),)


def test_infinite_loop_is_stopped_by_the_epoch_deadline(tmp_path):
    host = make_host(tmp_path, cpu_seconds=0.2)
    try:
        wat = wat_module('(func (export "execute_go") (result i32) (loop $l (br $l)) (i32.const 0))')
        result, _, _ = run(host, tmp_path, wat)
        assert result.status == "failed" and "RESOURCE_EXHAUSTED" in result.error and "CPU" in result.error
    finally:
        host.close()


def test_fuel_budget(tmp_path):
    host = make_host(tmp_path, fuel=100_000)
    try:
        wat = wat_module('(func (export "execute_go") (result i32) (loop $l (br $l)) (i32.const 0))')
        result, _, _ = run(host, tmp_path, wat)
        assert result.status == "failed" and "fuel" in result.error
    finally:
        host.close()


def test_memory_growth_past_the_limit_fails(host, tmp_path):
    """An allocator growing page by page hits the 4 MiB limit: memory.grow says -1 and the job fails."""
    wat = wat_module("""(func (export "execute_go") (result i32)
        (loop $more
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 2))))
          (br $more))
        (i32.const 0))""")
    result, _, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "RESOURCE_EXHAUSTED" in result.error and "memory" in result.error


def test_initial_memory_over_the_limit_cannot_instantiate(host, tmp_path):
    wat = wat_module('(func (export "execute_go") (result i32) (i32.const 0))', pages=1000)
    result, _, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "RESOURCE_EXHAUSTED" in result.error


def test_stack_overflow(host, tmp_path):
    wat = wat_module("""(func $f (param i32) (result i32) (call $f (i32.add (local.get 0) (i32.const 1))))
        (func (export "execute_go") (result i32) (call $f (i32.const 0)))""")
    result, _, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "stack overflow" in result.error


def test_traps_and_bad_modules_fail_only_their_job(host, tmp_path):
    bad = [
        wat_module('(func (export "execute_go") (result i32) unreachable)'),
        wat_module('(func (export "execute_go") (result i32) (i32.const 7))'),
        wat_module('(func (export "execute_other") (result i32) (i32.const 0))'),
        '(module (func (export "execute_go") (result i32) (i32.const 0)))',  # no memory export
        '(module (import "env" "evil" (func)) (memory (export "memory") 1))',  # unknown import
        wat_module('(func (export "plugin_init") (result i32) (i32.const 1))'
                   '(func (export "execute_go") (result i32) (i32.const 0))'),
        "(module (this is not wat",
    ]
    for wat in bad:
        result, _, _ = run(host, tmp_path, wat)
        assert result.status == "failed" and result.error, wat
    result, _, [env] = run(host, tmp_path, call_job("vdfs.read_file", '{"path": "/docs/hello.txt"}'))
    assert result.status == "completed" and env["ok"]  # the host still serves


def test_no_state_leaks_between_jobs(host, tmp_path):
    wat = wat_module("""(global $g (mut i32) (i32.const 0))
      (func (export "execute_go") (result i32)
        (if (i32.ne (i32.load (i32.const 8192)) (i32.const 0)) (then (return (i32.const 2))))
        (if (i32.ne (global.get $g) (i32.const 0)) (then (return (i32.const 2))))
        (i32.store (i32.const 8192) (i32.const 99))
        (global.set $g (i32.const 1))
        (i32.const 0))""")
    for _ in range(2):
        assert run(host, tmp_path, wat)[0].status == "completed"


def test_handler_exception_becomes_internal_envelope(host, tmp_path):
    def boom(ctx, args):
        raise RuntimeError("secret internals")

    op = host.registry.get("test.ping")
    object.__setattr__(op, "handler", boom)
    _, _, [env] = run(host, tmp_path, call_job("test.ping", '{"message": "x"}'))
    assert env["error"]["code"] == "INTERNAL" and "secret internals" not in env["error"]["message"]


def test_log_is_capped(host, tmp_path):
    wat = wat_module("""(func (export "execute_go") (result i32)
        (local $i i32)
        (loop $l
          (call $spacedrive_log (i32.const 9) (i32.const 0) (i32.const 1000000))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 1500))))
        (i32.const 0))""")
    result, _, _ = run(host, tmp_path, wat)
    assert result.status == "completed"
    assert len(result.logs) == 1001 and all(len(t) <= 4096 for _, t in result.logs)
    assert "500 further log lines dropped" in result.logs[-1][1]


def test_module_cache_hits_and_rejects_tampering(host, tmp_path):
    ext = extension(tmp_path, call_job("test.ping", '{"message": "hi"}'))
    cache = host.runtime.cache
    host.runtime.load_module(ext)
    host.runtime.load_module(ext)
    assert (cache.misses, cache.hits) == (1, 1)
    [entry] = cache.directory.glob("*.cwasm")
    blob = bytearray(entry.read_bytes())
    blob[-100] ^= 0xFF
    entry.write_bytes(bytes(blob))
    host.runtime.load_module(ext)  # tag mismatch: recompiled, never deserialized
    assert (cache.misses, cache.hits) == (2, 1)
    assert host.run_job(ext, "go", b"{}")[0].status == "completed"


def test_manifest_errors_name_file_and_line(tmp_path):
    (tmp_path / "manifest.yaml").write_text("id: com.example.x\nname: X\nversion: one\nmodule: x.wasm\n"
                                            "jobs: [go]\noperations: []\n")
    with pytest.raises(ExtensionError, match=r"manifest.yaml:3:10: version: 'one' does not match"):
        load_extension(tmp_path)


def test_wat_example_reads_allowed_file_and_is_denied_secrets(tmp_path):
    from wasm_helpers import ROOT

    host = make_host(tmp_path)
    try:
        ext = load_extension(ROOT / "extensions" / "hello-wat")
        result, calls = host.run_job(ext, "read", b'{"path": "/docs/hello.txt"}')
        assert result.status == "completed" and calls[0].library == LIB
        assert "aGVsbG8gYnl0ZXM=" in result.logs[0][1]  # base64("hello bytes") from the test library
        result, calls = host.run_job(ext, "read", b'{"path": "/docs/sub/secret.txt"}')
        assert result.status == "failed" and calls[0].code == "PERMISSION_DENIED"
        assert '"rule":"t/no-secret"' in result.logs[0][1]
    finally:
        host.close()


def test_call_records_are_capped_for_chatty_guests(tmp_path, monkeypatch):
    from capengine.host import extension_host as host_module

    monkeypatch.setattr(host_module, "MAX_CALL_RECORDS", 5)
    h = make_host(tmp_path)
    try:
        data = '  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{\\"message\\": \\"x\\"}")'
        wat = wat_module("""(func (export "execute_go") (result i32)
            (local $i i32)
            (loop $l
              (drop (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                           (i32.const 16)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 12))))
            (i32.const 0))""", data)
        result, calls = h.run_job(extension(tmp_path, wat), "go", b"{}")
    finally:
        h.close()
    assert result.status == "completed" and len(calls) == 5 and calls.dropped == 7
    assert all(c.code == "OK" for c in calls)


# --- hardening: every call recorded with what the guest got; bounded host errors; escaped guest text -----------

@pytest.mark.parametrize("payload,fragment", [
    ('{"message": "x"', "not valid JSON"),
    ('{"message": ' + "9" * 4301 + "}", "unacceptable number"),
    ('{"message": 1e400}', "out of range"),
    ('{"message": "\\ud800"}', "lone surrogate"),
    ('{"message": "x", "message": "y"}', "duplicate"),
])
def test_payloads_refused_before_dispatch_are_recorded(host, tmp_path, payload, fragment):
    result, calls, [env] = run(host, tmp_path, call_job("test.ping", payload))
    assert env["error"]["code"] == "INVALID_ARGUMENT" and fragment in env["error"]["message"]
    [call] = calls
    assert (call.code, call.operation, call.decided) == ("INVALID_ARGUMENT", "test.ping", False)
    assert fragment in call.message


def test_a_non_utf8_payload_reaches_on_call_too(tmp_path):
    records = []
    h = make_host(tmp_path)
    h.on_call = records.append  # what the daemon's decision log is fed by
    try:
        run(h, tmp_path, call_job("test.ping", '{"message": "\xff"}'.encode("latin-1").decode("utf-8", "replace")))
        data = '  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{\\"message\\": \\"\\ff\\"}")'
        call = "(call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096) (i32.const 15))"
        run(h, tmp_path, wat_module(f'(func (export "execute_go") (result i32) (drop {call}) (i32.const 0))', data))
    finally:
        h.close()
    assert records[-1].code == "INVALID_ARGUMENT" and "UTF-8" in records[-1].message


@pytest.mark.parametrize("extra", ['"offset": 1.0', '"offset": 1e300', '"length": 2.5',
                                   '"offset": 100000000000000000000', '"length": 18446744073709551616',
                                   '"offset": -1'])
def test_odd_offsets_and_lengths_are_invalid_argument_never_internal(host, tmp_path, extra):
    _, calls, [env] = run(host, tmp_path, call_job("vdfs.read_file", f'{{"path": "/docs/hello.txt", {extra}}}'))
    assert env["error"]["code"] == "INVALID_ARGUMENT" and calls[0].code == "INVALID_ARGUMENT"


def test_a_huge_but_valid_offset_reads_nothing(host, tmp_path):
    payload = '{"path": "/docs/hello.txt", "offset": 9007199254740991}'
    _, _, [env] = run(host, tmp_path, call_job("vdfs.read_file", payload))
    assert env["ok"] and env["result"]["data"] == ""


def looping_ping(times: int, payload: str = '{"message": "x"}') -> str:
    data = f'  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{wat_bytes(payload)}")'
    return wat_module(f"""(func (export "execute_go") (result i32)
        (local $i i32)
        (loop $l
          (drop (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                       (i32.const {len(payload.encode())})))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const {times}))))
        (i32.const 0))""", data)


def test_unencodable_replies_are_internal_in_the_record_and_counted_once(host, tmp_path, caplog):
    op = host.registry.get("test.ping")
    object.__setattr__(op, "handler", lambda ctx, args: {"bad": "\udc80" + args["message"]})
    caplog.set_level("ERROR")
    result, calls, _ = run(host, tmp_path, looping_ping(3000))
    assert len(calls) == 3000 and {c.code for c in calls} == {"INTERNAL"}  # what the guest really got
    assert "(x3000)" in result.error and len(result.error) < 1000
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) <= 1  # one per kind of failure per process, then counts


def test_host_errors_of_many_kinds_are_bounded(host, tmp_path):
    from capengine.host.host_errors import MAX_KINDS, HostErrors

    errors = HostErrors()
    for i in range(200):
        try:
            exec(compile("\n" * i + f"raise ValueError('guest data {i}')", f"f{i}", "exec"))
        except ValueError as exc:
            errors.add("op", exc)
    lines = list(errors)
    assert len(lines) == MAX_KINDS + 1 and lines[-1].startswith(f"{200 - MAX_KINDS} further")


def test_guest_log_text_is_escaped(host, tmp_path):
    forged = "ok\\0a2026-01-01 ERROR root: forged\\1b[2J\\1b]0;title\\07\\0d\\e2\\80\\ae"
    wat = wat_module('(func (export "execute_go") (result i32) (call $spacedrive_log (i32.const 1) (i32.const 1024)'
                     f' (i32.const {len(forged) - 2 * forged.count(chr(92))})) (i32.const 0))',
                     f'  (data (i32.const 1024) "{forged}")')
    result, _, _ = run(host, tmp_path, wat)
    [(_, text)] = result.logs
    assert text == "ok\\n2026-01-01 ERROR root: forged\\x1b[2J\\x1b]0;title\\x07\\r\\u202e"
    assert not any(ord(c) < 0x20 or c == "\x7f" or c == "\u202e" for c in text)


def test_method_names_and_messages_in_records_are_escaped(host, tmp_path):
    _, calls, [env] = run(host, tmp_path, call_job("evil\x1b[31m\nop", "{}"))
    assert env["error"]["code"] == "UNKNOWN_OPERATION"
    assert calls[0].operation == "evil\\x1b[31m\\nop" and "\x1b" not in calls[0].message


def test_credentials_store_never_overwrites_silently(tmp_path):
    policy = """
apiVersion: capengine/v1
kind: Policy
metadata: {name: v}
spec:
  extensions: ["com.example.*"]
  rules:
    - {id: store, effect: allow, operations: [credentials.store, credentials.get]}
    - {id: no-overwrite, effect: deny, operations: [credentials.store], condition: 'has(args.replace) && args.replace'}
"""
    h = make_host(tmp_path, policy)

    def call(method: str, payload: str):
        """Each call is a new module installed under the same id (an upgrade): one vault for all of them
        (a development-mode module would get a vault of its own)."""
        directory = tmp_path / "ext"
        directory.mkdir(exist_ok=True)
        (directory / "m.wat").write_text(call_job(method, payload, 0))
        (directory / "manifest.yaml").write_text("id: com.example.app\nname: X\nversion: 1.0.0\nmodule: m.wat\n"
                                                 "jobs: [go]\noperations: [credentials.*]\n")
        ext = load_extension(directory)
        h.installed.install(ext, replace=True)
        return h.run_job(ext, "go", b"{}")

    try:
        store = '{"name": "tok", "secret": "%s"%s}'
        assert call("credentials.store", store % ("first", ""))[1][0].code == "OK"
        _, calls = call("credentials.store", store % ("second", ""))
        assert calls[0].code == "ALREADY_EXISTS"
        _, calls = call("credentials.store", store % ("second", ', "replace": true'))
        assert calls[0].code == "PERMISSION_DENIED" and calls[0].args["replace"] is True
        result, calls = call("credentials.get", '{"name": "tok"}')
        assert '"secret":"first"' in result.logs[0][1]
    finally:
        h.close()


def test_capengine_run_prints_no_raw_control_characters(tmp_path, capsys):
    """The operator's terminal: forged log lines, ANSI escapes and a hostile method name arrive escaped."""
    from capengine.cli import main

    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    forged = "ok\\0a[capengine] job completed\\1b[2J\\1b[31m"
    method = "evil\\1b[5m\\0d"
    body = f"""(func (export "execute_go") (result i32)
        (call $spacedrive_log (i32.const 2) (i32.const 1024) (i32.const {len(forged) - 2 * forged.count(chr(92))}))
        (drop (call $spacedrive_call (i32.const 2048) (i32.const {len(method) - 2 * method.count(chr(92))})
                                     (i32.const 0) (i32.const 4096) (i32.const 2)))
        (i32.const 0))"""
    data = (f'  (data (i32.const 1024) "{forged}")\n  (data (i32.const 2048) "{method}")\n'
            '  (data (i32.const 4096) "{}")')
    (ext_dir / "go.wat").write_text(wat_module(body, data))
    (ext_dir / "manifest.yaml").write_text("id: com.example.evil\nname: Evil\nversion: 0.1.0\nmodule: go.wat\n"
                                           "jobs: [go]\noperations: ['**']\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("apiVersion: capengine/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n"
                                     "  extensions: ['com.example.*']\n  rules:\n"
                                     "    - {id: ping, effect: allow, operations: [test.ping]}\n")
    (tmp_path / "lib").mkdir()
    main(["run", str(ext_dir), "--policies", str(policies), "--library", str(tmp_path / "lib"),
          "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert not any(line.startswith("[capengine] job completed") for line in out.splitlines())
    assert "ok\\n[capengine] job completed\\x1b[2J\\x1b[31m" in out and "evil\\x1b[5m\\r" in out


def test_a_host_bug_outside_the_handler_is_internal_and_recorded(host, tmp_path):
    def broken_decide(request):
        raise RuntimeError("policy engine bug")

    object.__setattr__(host.policy_set, "decide", broken_decide)
    result, calls, [env] = run(host, tmp_path, call_job("test.ping", '{"message": "x"}'))
    assert env["error"]["code"] == "INTERNAL" and "engine bug" not in env["error"]["message"]
    assert calls[0].code == "INTERNAL" and "policy engine bug" in result.error


def test_a_directory_over_the_entry_cap_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    from capengine.host.operations import vdfs

    monkeypatch.setattr(vdfs, "MAX_ENTRIES", 10)
    h = make_host(tmp_path)
    try:
        for i in range(50):
            (tmp_path / "lib" / "docs" / f"f{i}").touch()
        result, calls, [env] = run(h, tmp_path, call_job("vdfs.list_dir", '{"path": "/docs"}'))
    finally:
        h.close()
    assert env["error"]["code"] == "RESOURCE_EXHAUSTED" and "more than 10 entries" in env["error"]["message"]


def test_import_names_in_job_errors_are_escaped(host, tmp_path, caplog):
    wat = ('(module (import "env" "evil\\1b[2J\\0aforged line" (func)) (memory (export "memory") 1)'
           ' (func (export "execute_go") (result i32) (i32.const 0)))')
    result, _, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "evil\\x1b[2J" in result.error and "\x1b" not in result.error
    assert not any("\x1b" in r.getMessage() for r in caplog.records)


# --- spacedrive_call_into: the envelope delivered in the same host call ------------------------------------------
PING = '{"message":"into"}'
PING_REPLY = b'{"ok":true,"result":{"message":"into"}}'
INTO_DATA = (f'  (data (i32.const 1024) "test.ping")\n  (data (i32.const 4096) "{wat_bytes(PING)}")\n'
             '  (data (i32.const 8192) "\\2a\\2a\\2a\\2a")')  # sentinel bytes where the envelope may land


def call_into_job(out_ptr: int | str, out_cap: int | str, payload_ptr: int = 4096) -> str:
    """A job that makes one spacedrive_call_into and logs its return value and the 48 bytes at 8192."""
    body = f"""
  (data $digits "0123456789")
  (func $log_int (param $v i32)
    (local $p i32)
    (local.set $p (i32.const 60000))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (i32.store8 (local.get $p) (i32.const 45)) (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
    (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $v) (i32.const 10))
                                                                   (i32.const 10))))
    (i32.store8 (i32.add (local.get $p) (i32.const 1))
                (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
    (call $spacedrive_log (i32.const 0) (i32.const 60000) (i32.sub (i32.add (local.get $p) (i32.const 2))
                                                                   (i32.const 60000))))
  (func (export "execute_go") (result i32)
    (call $log_int (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0)
                                                (i32.const {payload_ptr}) (i32.const {len(PING)})
                                                (i32.const {out_ptr}) (i32.const {out_cap})))
    (call $spacedrive_log (i32.const 1) (i32.const 8192) (i32.const {len(PING_REPLY)}))
    (i32.const 0))"""
    return wat_module(body, INTO_DATA)


def run_into(host, tmp_path, wat):
    result, calls = host.run_job(extension(tmp_path, wat), "go", b"{}")
    assert result.status == "completed" and not result.error, result.error
    returned = int(result.logs[0][1])
    return returned, result.logs[1][1].encode(), calls


def test_call_into_writes_the_envelope_when_it_fits(host, tmp_path):
    returned, at_out, [call] = run_into(host, tmp_path, call_into_job(8192, 4096))
    assert returned == len(PING_REPLY) and at_out == PING_REPLY and call.code == "OK"


def test_call_into_exact_fit_and_a_buffer_one_byte_short(host, tmp_path):
    returned, at_out, _ = run_into(host, tmp_path, call_into_job(8192, len(PING_REPLY)))
    assert (returned, at_out) == (len(PING_REPLY), PING_REPLY)
    returned, at_out, [call] = run_into(host, tmp_path, call_into_job(8192, len(PING_REPLY) - 1))
    # too small: the length comes back, nothing is written (the sentinel is intact), the call was made
    assert returned == len(PING_REPLY) and at_out.startswith(b"****") and call.code == "OK"


def test_call_into_too_small_then_result_fetches_the_held_envelope(host, tmp_path):
    body = f"""
  (func (export "execute_go") (result i32)
    (local $n i32)
    (local.set $n (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                               (i32.const {len(PING)}) (i32.const 8192) (i32.const 0)))
    (if (i32.ne (call $spacedrive_result (i32.const 16384) (local.get $n)) (local.get $n)) (then unreachable))
    (call $spacedrive_log (i32.const 1) (i32.const 16384) (local.get $n))
    (i32.const 0))"""
    result, calls = host.run_job(extension(tmp_path, wat_module(body, INTO_DATA)), "go", b"{}")
    assert result.status == "completed" and result.logs == ((1, PING_REPLY.decode()),)


@pytest.mark.parametrize("out_ptr,out_cap", [
    (131072 - 10, 4096),  # runs past the end of memory (2 pages)
    (131072, 1),  # starts at the end
    (8192, -1),  # a "negative" capacity is 4 GiB unsigned
    (-8, 100),  # a "negative" pointer is near 4 GiB
    (-1, -1),
    (0x7FFFFFFF, 0x7FFFFFFF),
])
def test_call_into_with_an_output_range_outside_memory_is_a_fault_and_the_call_is_not_made(host, tmp_path, out_ptr,
                                                                                          out_cap):
    returned, at_out, [call] = run_into(host, tmp_path, call_into_job(out_ptr, out_cap))
    assert returned == -1 and at_out.startswith(b"****")
    assert call.code == "FAULT_RANGE" and call.decided is False and "outside linear memory" in call.message


def test_call_into_output_overlapping_the_request_is_safe(host, tmp_path):
    """The request is copied before anything runs, so an output buffer over the payload (or the method) is
    allowed: the envelope overwrites the guest's request bytes after they were read."""
    returned, _, [call] = run_into(host, tmp_path, call_into_job(4096, 4096))
    assert returned == len(PING_REPLY) and call.code == "OK"
    body = f"""
  (func (export "execute_go") (result i32)
    (local $n i32)
    (local.set $n (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                               (i32.const {len(PING)}) (i32.const 1020) (i32.const 4096)))
    (call $spacedrive_log (i32.const 1) (i32.const 1020) (local.get $n))
    (i32.const 0))"""
    result, calls = host.run_job(extension(tmp_path, wat_module(body, INTO_DATA)), "go", b"{}")
    assert result.logs == ((1, PING_REPLY.decode()),) and calls[0].code == "OK"


def test_call_into_faults_on_the_request_before_the_output(host, tmp_path):
    """A request over the size cap is -2 whatever the output buffer; a request out of range is -1."""
    big = host.runtime.limits.bridge.max_request + 1
    body = f"""
  (func (export "execute_go") (result i32)
    (if (i32.ne (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 0)
                                             (i32.const {big}) (i32.const 8192) (i32.const 4096)) (i32.const -2))
      (then unreachable))
    (if (i32.ne (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 131000)
                                             (i32.const 100) (i32.const 8192) (i32.const 4096)) (i32.const -1))
      (then unreachable))
    (i32.const 0))"""
    result, calls = host.run_job(extension(tmp_path, wat_module(body, INTO_DATA)), "go", b"{}")
    assert result.status == "completed", result.error
    assert [c.code for c in calls] == ["FAULT_TOO_LARGE", "FAULT_RANGE"]


def test_call_into_from_a_start_function_reaches_memory_through_the_caller(host, tmp_path):
    """Before the instance exists (a start function) the host finds memory through the caller, not the job."""
    body = f"""
  (func $start
    (if (i32.ne (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 4096)
                                             (i32.const {len(PING)}) (i32.const 8192) (i32.const 4096))
                (i32.const {len(PING_REPLY)}))
      (then unreachable)))
  (start $start)
  (func (export "execute_go") (result i32)
    (call $spacedrive_log (i32.const 1) (i32.const 8192) (i32.const {len(PING_REPLY)}))
    (i32.const 0))"""
    result, calls = host.run_job(extension(tmp_path, wat_module(body, INTO_DATA)), "go", b"{}")
    assert result.status == "completed", result.error
    assert result.logs == ((1, PING_REPLY.decode()),) and calls[0].code == "OK"
