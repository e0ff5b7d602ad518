"""An adversarial review of the host against hostile guests (WASM extensions): what a module can make the host
do before, while and after it runs.

Every attack is a real module (WAT text or a hand-built binary). Attacks that could hang or kill the process
(a FIFO read, a compile bomb, a recursion into the host near the stack limit) run in a child process with a
timeout, so a regression fails the test instead of the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wasm_helpers import ROOT, extension, make_host, wat_bytes, wat_module

from capengine.host import module_limits
from capengine.host.manifests import ExtensionError, load_extension
from capengine.host.module_cache import ModuleCache, ModuleError
from capengine.host.runtime import Runtime

PING = '{"message":"hi"}'
CHILD_TIMEOUT = 120  # generous: a shared 2-core machine; a hang is minutes, a pass is about a second


def run(host, tmp_path, wat, **kw):
    result, calls = host.run_job(extension(tmp_path, wat, **kw), "go", b"{}")
    return result, calls


def in_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (this worktree's capengine, tests/ on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def load_in_child(tmp_path: Path) -> subprocess.CompletedProcess:
    """load_extension("bomb") in a fresh interpreter (a file that blocks or crashes takes only the child down);
    its stdout says "refused: <why>" on an ExtensionError."""
    proc = in_child("""
        from capengine.host.manifests import ExtensionError, load_extension
        try:
            load_extension("bomb")
        except ExtensionError as exc:
            print("refused:", exc)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


# --- hand-built binaries ------------------------------------------------------------------------------------------

def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + leb(len(payload)) + payload


def binary_module(functions: int, locals_each: int, custom: bytes = b"") -> bytes:
    """A module exporting memory and `execute_go` (function 0) plus `functions - 1` more functions, each declaring
    `locals_each` i64 locals in four bytes: compile work out of all proportion to the file's size."""
    types = section(1, leb(1) + b"\x60\x00\x01\x7f")  # () -> i32
    funcs = section(3, leb(functions) + b"\x00" * functions)
    memory = section(5, b"\x01\x00\x01")
    exports = section(7, leb(2) + leb(6) + b"memory" + b"\x02\x00" + leb(10) + b"execute_go" + b"\x00\x00")
    body = leb(1) + leb(locals_each) + b"\x7e" + b"\x41\x00\x0b" if locals_each else b"\x00\x41\x00\x0b"
    code = section(10, leb(functions) + (leb(len(body)) + body) * functions)
    extra = section(0, leb(7) + b"padding" + custom) if custom else b""
    return b"\0asm\x01\0\0\0" + types + funcs + memory + exports + code + extra


def binary_extension(tmp_path: Path, module: bytes) -> Path:
    directory = tmp_path / "bomb"
    directory.mkdir(exist_ok=True)
    (directory / "module.wasm").write_bytes(module)
    (directory / "manifest.yaml").write_text("id: com.example.bomb\nname: bomb\nversion: 0.1.0\n"
                                             "module: module.wasm\njobs: [go]\noperations: [test.ping]\n")
    return directory


RUN_BINARY_JOB = """
    import sys
    from pathlib import Path
    from wasm_helpers import make_host
    from capengine.host.manifests import load_extension
    host = make_host(Path("."))
    result, _ = host.run_job(load_extension(sys.argv[1] if len(sys.argv) > 1 else "bomb"), "go", b"{}")
    print(result.status)
    print(result.error)
"""


# --- compile bombs: refused before compilation, with the limit named -----------------------------------------------

@pytest.mark.parametrize("functions, locals_each, limit", [
    (5_000, 50_000, "locals"),  # 65 KB of module, ~15 s of compilation on 2 cores without the budget
    (module_limits.ModuleLimits().max_functions + 1, 0, "functions"),
])
def test_a_compile_bomb_is_refused_before_compilation(tmp_path, functions, locals_each, limit):
    binary_extension(tmp_path, binary_module(functions, locals_each))
    proc = in_child(RUN_BINARY_JOB, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, error = proc.stdout.splitlines()[:2]
    assert status == "failed"
    assert limit in error and "module.wasm" in error and "Traceback" not in proc.stderr


def join_bomb(locals_: int, params: int, ifs: int) -> bytes:
    """One function whose `locals_` i32 locals (or `params` parameters) are all live across `ifs` join points:
    Cranelift's work is their product (1,000 locals x 100,000 ifs, 1.2 MB: 24 s; 10,000 locals: minutes)."""
    count = locals_ + params
    unit = b"".join(b"\x20" + leb(i % count) + b"\x04\x40\x20" + leb(i * 13 % count) + b"\x21" + leb((i + 5) % count)
                    + b"\x0b" for i in range(ifs))
    code = unit + b"\x41\x00" + b"".join(b"\x20" + leb(i) + b"\x6a" for i in range(count))
    body = (leb(1) + leb(locals_) + b"\x7f" if locals_ else b"\x00") + code + b"\x0b"
    types = section(1, leb(2) + b"\x60\x00\x01\x7f" + b"\x60" + leb(params) + b"\x7f" * params + b"\x01\x7f")
    funcs = section(3, b"\x02\x00\x01")
    memory = section(5, b"\x01\x00\x01")
    exports = section(7, leb(2) + leb(6) + b"memory" + b"\x02\x00" + leb(10) + b"execute_go" + b"\x00\x00")
    go = b"\x00\x41\x00\x0b"
    code_section = section(10, leb(2) + leb(len(go)) + go + leb(len(body)) + body)
    return b"\0asm\x01\0\0\0" + types + funcs + memory + exports + code_section


@pytest.mark.parametrize("locals_, params", [(1000, 0), (0, 1000), (500, 500)])
def test_a_function_whose_locals_meet_many_join_points_is_refused(tmp_path, locals_, params):
    binary_extension(tmp_path, join_bomb(locals_, params, 60_000))  # ~700 KB, under the function cap
    proc = in_child(RUN_BINARY_JOB, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, error = proc.stdout.splitlines()[:2]
    assert status == "failed" and "parameters and locals" in error and "module.wasm" in error


def test_one_function_over_the_code_cap_is_refused(tmp_path):
    binary_extension(tmp_path, join_bomb(4, 0, 150_000))  # 1.35 MB in one function, few locals
    proc = in_child(RUN_BINARY_JOB, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, error = proc.stdout.splitlines()[:2]
    assert status == "failed" and "bytes of code" in error and "split it" in error


def test_millions_of_empty_local_declarations_are_refused_without_walking_them(tmp_path, monkeypatch):
    """(0 × i32) local groups are valid wasm: 16 functions of 500,000 each would be 8 M steps of the checker."""
    groups = 500_000
    body = leb(groups) + b"\x00\x7f" * groups + b"\x41\x00\x0b"
    module = (b"\0asm\x01\0\0\0" + section(1, b"\x01\x60\x00\x01\x7f") + section(3, b"\x02\x00\x00")
              + section(10, b"\x02" + (leb(len(body)) + body) * 2))
    steps = []
    real = module_limits._valtype
    monkeypatch.setattr(module_limits, "_valtype", lambda r: steps.append(1) or real(r))
    with pytest.raises(ModuleError, match="local declarations"):
        module_limits.check(module, module_limits.ModuleLimits(max_locals=600_000), "module.wasm")
    assert len(steps) <= 600_000


def test_the_same_function_with_few_locals_compiles(tmp_path):
    host = make_host(tmp_path)
    try:
        result, _ = host.run_job(load_extension(binary_extension(tmp_path, join_bomb(20, 2, 20_000))), "go", b"{}")
        assert result.status == "completed", result.error
    finally:
        host.close()


def test_a_module_over_the_size_cap_is_refused_without_compiling(tmp_path):
    cap = module_limits.ModuleLimits().max_bytes
    directory = binary_extension(tmp_path, binary_module(1, 0, custom=b"\0" * cap))
    with pytest.raises(ExtensionError, match="bytes"):  # refused as it is read, never loaded whole
        load_extension(directory)


def test_modules_within_the_budget_still_compile_and_run(tmp_path):
    host = make_host(tmp_path)
    try:
        result, _ = host.run_job(load_extension(binary_extension(tmp_path, binary_module(200, 1000))), "go", b"{}")
        assert result.status == "completed", result.error
    finally:
        host.close()


def test_the_budget_is_checked_on_wat_too(tmp_path):
    locals_ = " ".join(["i64"] * 20_000)
    funcs = "\n".join(f"(func (local {locals_}))" for _ in range(60))  # 1.2 M locals
    result, _ = run_in(tmp_path, wat_module(funcs + '(func (export "execute_go") (result i32) (i32.const 0))'))
    assert result.status == "failed" and "locals" in result.error


def run_in(tmp_path, wat):
    host = make_host(tmp_path)
    try:
        return host.run_job(extension(tmp_path, wat), "go", b"{}")
    finally:
        host.close()


def test_the_rust_and_c_examples_fit_the_budget():
    limits = module_limits.ModuleLimits()
    for path in sorted((ROOT / "extensions").glob("*/*.wasm")):
        module_limits.check(path.read_bytes(), limits, str(path))  # raises when over


def test_a_malformed_binary_is_a_clear_error_never_a_parser_crash(tmp_path):
    good = binary_module(3, 2)
    header = b"\0asm\x01\0\0\0"
    for bad in (good[:-3], good[:9], good + b"\x0a\xff\xff\xff\xff\x0f", header + b"\x0a\x05\xff\xff\xff\xff\xff"):
        with pytest.raises(ModuleError, match="module.wasm"):
            module_limits.check(bad, module_limits.ModuleLimits(), "module.wasm")


# --- proposals the ABI does not use are off: no way around the memory limit --------------------------------------

@pytest.mark.parametrize("wat", [
    # GC arrays live outside linear memory: with GC on, a guest got a second heap as large as its memory limit
    """(type $a (array (mut i8)))
       (func (export "execute_go") (result i32) (drop (array.new_default $a (i32.const 1000000))) (i32.const 0))""",
    # exception objects are allocated on the GC heap
    """(tag $e (param i32))
       (func (export "execute_go") (result i32)
         (block $h (try_table (catch $h) (throw $e (i32.const 1)))) (i32.const 0))""",
    # a second linear memory would double the memory limit (the store allows one)
    """(memory $m2 1) (func (export "execute_go") (result i32) (i32.const 0))""",
    # a 64-bit memory: the ABI's pointers are i32
    """(memory $m64 i64 1) (func (export "execute_go") (result i32) (i32.const 0))""",
])
def test_proposals_outside_the_abi_are_refused_at_compile_with_a_clear_error(host, tmp_path, wat):
    result, _ = run(host, tmp_path, wat_module(wat))
    assert result.status == "failed"
    assert "is not valid WebAssembly" in result.error and "cannot instantiate" not in result.error


def test_the_engine_config_names_every_disabled_proposal():
    with Runtime() as runtime:
        for feature in ("gc=0", "threads=0", "memory64=0", "multi_memory=0", "exceptions=0"):
            assert feature in runtime.engine_config  # a cache entry from another feature set never verifies


# --- export signatures ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("export, fragment", [
    ('(func (export "execute_go") (param i32) (result i32) (i32.const 0))', "execute_go"),
    ('(func (export "execute_go") (result i64) (i64.const 0))', "execute_go"),
    ('(func (export "execute_go") (result f32) (f32.const 0))', "execute_go"),
    ('(func (export "execute_go") (result i32 i32) (i32.const 0) (i32.const 0))', "execute_go"),
    ('(func (export "execute_go"))', "execute_go"),
    # plugin_init that "returns 0" as a float used to pass as success
    ('(func (export "plugin_init") (result f32) (f32.const 0))'
     '(func (export "execute_go") (result i32) (i32.const 0))', "plugin_init"),
    ('(func (export "plugin_init") (param i32) (result i32) (i32.const 0))'
     '(func (export "execute_go") (result i32) (i32.const 0))', "plugin_init"),
    ('(global (export "execute_go") i32 (i32.const 0))', "execute_go"),
])
def test_exports_with_the_wrong_signature_fail_the_job_naming_the_signature(host, tmp_path, export, fragment):
    result, _ = run(host, tmp_path, wat_module(export))
    assert result.status == "failed" and fragment in result.error and "() -> i32" in result.error, result.error


@pytest.mark.parametrize("memory", [
    '(module (table (export "memory") 1 funcref) (func (export "execute_go") (result i32) (i32.const 0)))',
    '(module (global (export "memory") i32 (i32.const 0)) (func (export "execute_go") (result i32) (i32.const 0)))',
])
def test_a_memory_export_that_is_not_a_memory_fails_clearly(host, tmp_path, memory):
    result, _ = run(host, tmp_path, memory)
    assert result.status == "failed" and "memory" in result.error


@pytest.mark.parametrize("imports, fragment", [
    ('(import "spacedrive" "spacedrive_call" (func (param i32 i32 i32 i32) (result i32)))', "spacedrive_call"),
    ('(import "spacedrive" "memory" (memory 1)) (export "memory" (memory 0))', "spacedrive.memory"),
    ('(import "env" "table" (table 1 funcref))', "env.table"),
    ('(import "spacedrive" "g" (global i32))', "spacedrive.g"),
    ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))', "fd_write"),
])
def test_imports_the_host_does_not_provide_fail_the_job_naming_the_import(host, tmp_path, imports, fragment):
    memory = "" if '"memory"' in imports else '(memory (export "memory") 1)'
    wat = f'(module {imports} {memory} (func (export "execute_go") (result i32) (i32.const 0)))'
    result, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and fragment in result.error and "Traceback" not in result.error


# --- start function --------------------------------------------------------------------------------------------------

def test_an_infinite_loop_in_the_start_function_is_stopped_by_the_cpu_limit(tmp_path):
    h = make_host(tmp_path, cpu_seconds=0.3)
    try:
        wat = wat_module('(func $s (loop $l (br $l))) (start $s) '
                         '(func (export "execute_go") (result i32) (i32.const 0))')
        result, _ = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert result.status == "failed" and "CPU time limit" in result.error
    finally:
        h.close()


def test_a_start_function_that_calls_the_host_then_spins_is_stopped_and_its_call_recorded(tmp_path):
    h = make_host(tmp_path, cpu_seconds=0.3)
    try:
        wat = wat_module(f'''(data (i32.const 1024) "test.ping") (data (i32.const 2048) "{wat_bytes(PING)}")
          (func $s (drop (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 2048)
                                                (i32.const {len(PING)})))
                   (loop $l (br $l)))
          (start $s) (func (export "execute_go") (result i32) (i32.const 0))''')
        result, calls = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert result.status == "failed" and "CPU time limit" in result.error
        assert [c.operation for c in calls] == ["test.ping"] and calls[0].code == "OK"
    finally:
        h.close()


def test_a_loop_right_after_a_host_call_in_plugin_init_is_stopped(tmp_path):
    h = make_host(tmp_path, cpu_seconds=0.3)
    try:
        wat = wat_module('''(func (export "plugin_init") (result i32)
            (drop (call $spacedrive_result (i32.const 0) (i32.const 0))) (loop $l (br $l)) (i32.const 0))
          (func (export "execute_go") (result i32) (i32.const 0))''')
        result, _ = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert result.status == "failed" and "CPU time limit" in result.error
    finally:
        h.close()


# --- deep recursion into the host ------------------------------------------------------------------------------------

def test_host_calls_at_every_depth_down_to_the_stack_limit_never_crash_the_host(tmp_path):
    """The guest recurses, calling the host (a 64-deep payload, the deepest JSON allowed) at every level, until
    the wasm stack overflows; the host's Python then runs on what native stack is left at the deepest level.
    In a child, on a worker thread (the daemon runs jobs on threads), so that a segfault fails the test."""
    payload = "[" * 63 + "]" * 63
    request = wat_bytes('{"a":' + payload + '}')
    wat = wat_module(f'''(data (i32.const 1024) "test.ping") (data (i32.const 2048) "{request}")
      (func $f (param i32) (result i32)
        (drop (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 2048)
                                     (i32.const {len(payload) + 6})))
        (call $f (i32.add (local.get 0) (i32.const 1))))
      (func (export "execute_go") (result i32) (call $f (i32.const 0)))''')
    (tmp_path / "deep.wat").write_text(wat)
    proc = in_child("""
        import threading
        from pathlib import Path
        from wasm_helpers import extension, make_host
        host = make_host(Path("."))
        out = []
        def job():
            out.append(host.run_job(extension(Path("."), Path("deep.wat").read_text()), "go", b"{}"))
        thread = threading.Thread(target=job)
        thread.start()
        thread.join()
        result, calls = out[0]
        print(result.status, len(calls), result.error)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("failed ") and "stack overflow" in proc.stdout


# --- extension files that are not regular files ---------------------------------------------------------------------

def fifo_extension(tmp_path: Path, name: str) -> Path:
    directory = binary_extension(tmp_path, binary_module(1, 0))
    (directory / name).unlink()
    os.mkfifo(directory / name)
    return directory


@pytest.mark.parametrize("name", ["module.wasm", "manifest.yaml"])
def test_a_fifo_in_place_of_an_extension_file_is_refused_not_waited_on(tmp_path, name):
    fifo_extension(tmp_path, name)
    proc = load_in_child(tmp_path)
    assert proc.stdout.startswith("refused:") and name in proc.stdout and "regular file" in proc.stdout


@pytest.mark.parametrize("target", ["/dev/zero", "../outside.wasm", "/etc/passwd"])
def test_a_module_that_is_a_symbolic_link_out_of_its_directory_is_refused(tmp_path, target):
    directory = binary_extension(tmp_path, binary_module(1, 0))
    (tmp_path / "outside.wasm").write_bytes(binary_module(1, 0))
    (directory / "module.wasm").unlink()
    (directory / "module.wasm").symlink_to(target)
    proc = load_in_child(tmp_path)
    assert proc.stdout.startswith("refused:") and "symbolic link leading out of" in proc.stdout


def test_links_inside_the_extension_directory_are_followed_as_a_configmap_lays_them_out(tmp_path):
    directory = binary_extension(tmp_path, binary_module(1, 0))
    (directory / "..data").mkdir()
    for name in ("module.wasm", "manifest.yaml"):
        (directory / name).rename(directory / "..data" / name)
        (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data" / "evil.wasm").symlink_to("/dev/zero")  # a link inside that leads out again
    ext = load_extension(directory)
    host = make_host(tmp_path)
    try:
        assert host.run_job(ext, "go", b"{}")[0].status == "completed"
    finally:
        host.close()
    (directory / "module.wasm").unlink()
    (directory / "module.wasm").symlink_to("..data/evil.wasm")
    with pytest.raises(ExtensionError, match="leading out of"):
        load_extension(directory)


def test_a_module_swapped_for_a_fifo_after_loading_fails_the_job_not_the_host(tmp_path):
    directory = binary_extension(tmp_path, binary_module(1, 0))
    proc = in_child("""
        import os
        from pathlib import Path
        from wasm_helpers import make_host
        from capengine.host.manifests import load_extension
        ext = load_extension("bomb")
        Path("bomb/module.wasm").unlink()
        os.mkfifo("bomb/module.wasm")
        host = make_host(Path("."))
        result, _ = host.run_job(ext, "go", b"{}")
        print(result.status, result.error)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("failed ") and "regular file" in proc.stdout
    assert directory.exists()


# --- module cache entries that are not regular files -------------------------------------------------------------

ANSWER = '(module (func (export "answer") (result i32) (i32.const 42)))'


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_cache_entry_that_is_not_a_regular_file_is_recompiled_never_waited_on(tmp_path, kind):
    proc = in_child(f"""
        import hashlib, os, wasmtime
        from pathlib import Path
        from capengine.host.runtime import Runtime
        source = {ANSWER!r}.encode()
        with Runtime(cache_dir=Path("cache")) as runtime:
            cache = runtime.cache
            cache.load(source, is_wat=True)
            entry = cache.path_for(hashlib.sha256(source).hexdigest())
            Path("stolen").write_bytes(entry.read_bytes())
            entry.unlink()
            if {kind!r} == "fifo":
                os.mkfifo(entry)
            elif {kind!r} == "symlink":
                entry.symlink_to(Path("stolen").resolve())  # a valid entry, reached through a link
            else:
                entry.mkdir()
            fresh = type(cache)(runtime.engine, Path("cache"), runtime.engine_config)
            module = fresh.load(source, is_wat=True)
            store = wasmtime.Store(runtime.engine)
            store.set_epoch_deadline(1000)
            answer = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
            print(answer, fresh.hits, fresh.misses)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["42", "0", "1"]


def test_a_cache_entry_far_larger_than_any_compiled_module_is_not_read_whole(tmp_path, monkeypatch):
    with Runtime(cache_dir=tmp_path) as runtime:
        cache = runtime.cache
        assert cache is not None
        cache.load(ANSWER.encode(), is_wat=True)
        entry = cache.path_for(__import__("hashlib").sha256(ANSWER.encode()).hexdigest())
        with entry.open("r+b") as f:  # a sparse file: huge on paper, no disk used
            f.truncate(module_limits.MAX_CACHE_ENTRY_BYTES + 1)
        reads: list[int] = []
        real_read = os.read
        monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
        fresh = ModuleCache(runtime.engine, tmp_path, runtime.engine_config)
        fresh.load(ANSWER.encode(), is_wat=True)
        assert fresh.misses == 1 and sum(reads) <= module_limits.MAX_CACHE_ENTRY_BYTES


# --- JSON payloads through a real guest -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, code", [
    ('{"message": "' + "\\ud800" + '"}', "INVALID_ARGUMENT"),
    ('{"\\udfff": 1}', "INVALID_ARGUMENT"),
    ('{"message": "\\ud83d\\ude00"}', "OK"),  # a valid pair is text
    ('{"message": "a", "m\\u0065ssage": "b"}', "INVALID_ARGUMENT"),  # duplicate once unescaped
    ('{"message": "x", "n": 1e400}', "INVALID_ARGUMENT"),
    ('{"message": "x", "n": -1e400}', "INVALID_ARGUMENT"),
    ('{"message": "x", "n": ' + "9" * 5000 + '}', "INVALID_ARGUMENT"),
    ('{"message": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + '}', "INVALID_ARGUMENT"),
    ('{"message": "x", "n": NaN}', "INVALID_ARGUMENT"),
    ('{"message": "' + "[" * 10_000 + '"}', "OK"),  # brackets inside a string are not nesting
])
def test_hostile_json_payloads_are_refused_with_invalid_argument(host, tmp_path, payload, code):
    data = f'(data (i32.const 1024) "test.ping") (data (i32.const 65536) "{wat_bytes(payload)}")'
    body = f'''(func (export "execute_go") (result i32)
        (drop (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 65536)
                                     (i32.const {len(payload.encode())})))
        (i32.const 0))'''
    result, calls = run(host, tmp_path, wat_module(body, data, pages=8))
    assert result.status == "completed" and [c.code for c in calls] == [code], [c.message for c in calls]


# --- a chatty guest: the host's memory of its calls stays bounded ----------------------------------------------------

def test_a_million_calls_keep_bounded_records_and_logs(tmp_path):
    """10^6 host calls (half refused at the ABI, half log lines): the job is stopped by its CPU limit or ends,
    and the records and logs the host keeps for it stay at their caps."""
    from capengine.host.extension_host import MAX_CALL_RECORDS

    h = make_host(tmp_path, cpu_seconds=3.0)
    try:
        wat = wat_module('''(func (export "execute_go") (result i32) (local $i i32)
            (loop $l
              (drop (call $spacedrive_call (i32.const -1) (i32.const 8) (i32.const 0) (i32.const 0) (i32.const 0)))
              (call $spacedrive_log (i32.const 1) (i32.const 0) (i32.const 4))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 500000))))
            (i32.const 0))''')
        result, calls = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert len(calls) <= MAX_CALL_RECORDS and len(calls) + calls.dropped >= MAX_CALL_RECORDS
        assert all(c.code == "FAULT_RANGE" for c in calls)
        assert len(result.logs) <= 1001 and "further log lines dropped" in result.logs[-1][1]
    finally:
        h.close()


def test_json_number_in_a_job_input_is_delivered_verbatim(host, tmp_path):
    """The job input is the host's own JSON; a guest cannot widen it (sanity for spacedrive_input)."""
    body = '''(func (export "execute_go") (result i32) (local $n i32)
        (local.set $n (call $spacedrive_input (i32.const 0) (i32.const 0)))
        (if (i32.ne (call $spacedrive_input (i32.const 4096) (local.get $n)) (local.get $n)) (then unreachable))
        (call $spacedrive_log (i32.const 1) (i32.const 4096) (local.get $n))
        (i32.const 0))'''
    text = json.dumps({"n": 1})
    result, _ = host.run_job(extension(tmp_path, wat_module(body)), "go", text.encode())
    assert result.status == "completed" and result.logs == ((1, text),)


# --- the manifest facts a module embeds are guest data too ------------------------------------------------------------

def custom_section(name: str, payload: bytes) -> bytes:
    body = leb(len(name)) + name.encode() + payload
    return section(0, body)


@pytest.mark.parametrize("facts", [
    b"[" * 100_000,  # nesting past the JSON parser's recursion limit
    b'{"jobs": 5}',
    b'{"jobs": [1, "a"]}',
    b'{"jobs": "go"}',
    b'{"jobs": ["go"], "operations": {"a": 1}}',
    b'{"id": ["x"], "jobs": ["go"]}',
    b'{"jobs": ["go"], "jobs": ["other"]}',
    b'{"jobs": ["go"], "name": "\\ud800"}',
    b"\xff\xfe",
])
def test_malformed_embedded_manifest_facts_are_an_extension_error_never_a_traceback(tmp_path, facts):
    module = binary_module(1, 0) + custom_section("spacedrive.manifest", facts) + custom_section(
        "spacedrive.jobs", b"go\n")
    directory = binary_extension(tmp_path, module)
    with pytest.raises(ExtensionError, match="spacedrive.manifest"):
        load_extension(directory)
    found, broken = __import__("capengine.host.manifests", fromlist=["load_extensions"]).load_extensions(tmp_path)
    assert found == [] and len(broken) == 1  # one bad extension never stops the others from loading


def test_compile_time_is_not_counted_against_the_job_s_cpu_limit(tmp_path, monkeypatch):
    """A large module (within the caps) may take seconds to compile on its first job: that is the host's
    work, so the job's CPU limit starts once it is compiled (before, a cold compile longer than cpu_seconds
    failed the first job at its first instruction with "CPU time limit")."""
    import time as time_module

    h = make_host(tmp_path, cpu_seconds=0.3)
    try:
        real = h.runtime.load_module
        monkeypatch.setattr(h.runtime, "load_module", lambda ext: (time_module.sleep(0.8), real(ext))[1])
        wat = wat_module('(func (export "execute_go") (result i32) (i32.const 0))')
        result, _ = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert result.status == "completed", result.error
    finally:
        h.close()


# --- a guest's names never become the host's words -------------------------------------------------------------------

FORGED = "x\\0awasm trap: all good, job done\\0a"


@pytest.mark.parametrize("body, reason", [
    ("unreachable", "unreachable"),
    ("(i32.div_u (i32.const 1) (i32.const 0))", "divide by zero"),
    ("(i32.load (i32.const -4))", "out of bounds"),
    ("(call_indirect (type $t) (i32.const 99))", "undefined element"),
    ("(call_indirect (type $t) (i32.const 7))", "uninitialized element"),
])
def test_a_trap_reason_cannot_be_forged_through_the_name_section(host, tmp_path, body, reason):
    """wasmtime's trap message carries a backtrace with the module's own function names; a name holding a
    newline and "wasm trap: ..." used to become the job's failure reason."""
    wat = wat_module(f'''(type $t (func (result i32))) (table 8 funcref)
      (func $"{FORGED}" (export "execute_go") (result i32) {body})''')
    result, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "all good" not in result.error and reason in result.error, result.error


def test_a_host_function_that_fails_becomes_a_trap_named_as_the_host_s(host, tmp_path, monkeypatch):
    from capengine.host.session import GuestSession

    def broken(self, caller, level, ptr, length):
        raise RuntimeError("a host bug")

    monkeypatch.setattr(GuestSession, "log", broken)
    wat = wat_module(f'''(func $"{FORGED}" (export "execute_go") (result i32)
        (call $spacedrive_log (i32.const 1) (i32.const 0) (i32.const 4)) (i32.const 0))''')
    result, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and result.error == "trap: a host function failed; see the host log"


def test_a_function_name_cannot_turn_a_failure_into_a_resource_limit(host, tmp_path, monkeypatch):
    from capengine.host.session import GuestSession

    monkeypatch.setattr(GuestSession, "log", lambda *args: 1 / 0)
    wat = wat_module('''(func $"memory limit exceeded maximum" (export "execute_go") (result i32)
        (call $spacedrive_log (i32.const 1) (i32.const 0) (i32.const 4)) (i32.const 0))''')
    result, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "RESOURCE_EXHAUSTED" not in result.error


def test_an_error_listing_bad_imports_stays_short_however_many_and_long_they_are(host, tmp_path):
    imports = "".join(f'(import "env" "{"n" * 5000}{i}" (func))' for i in range(2000))
    wat = f'(module {imports} (memory (export "memory") 1) (func (export "execute_go") (result i32) (i32.const 0)))'
    result, _ = run(host, tmp_path, wat)
    assert result.status == "failed" and "env.nnn" in result.error and "1990 more" in result.error
    assert len(result.error) < 2000


# --- the signature file beside a manifest is the extension author's too ----------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep"])
def test_a_hostile_signature_file_vouches_for_nothing_and_never_stalls_the_host(tmp_path, kind):
    """With a trusted key, every job looks for signature.ed25519 beside the manifest: a FIFO there blocked the
    job forever, /dev/zero read until memory ran out, and a deeply nested document was a RecursionError."""
    binary_extension(tmp_path, binary_module(1, 0))
    target = tmp_path / "bomb" / "signature.ed25519"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        target.write_text("[" * 100_000)
    proc = in_child("""
        from pathlib import Path
        from capengine.host import signatures
        from capengine.host.installed import InstalledRegistry
        from capengine.host.manifests import load_extension
        data = Path("data")
        InstalledRegistry(data).trusted.trust("publisher", signatures.generate_key(Path("k.pem")), ["com.example.*"])
        print("signer:", InstalledRegistry(data).trusted.signer(load_extension("bomb")))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "signer: None"


# --- held envelopes and memory that grows between calls (attacks that held; kept as regressions) ------------------

def test_a_held_envelope_never_outlives_the_next_call_even_a_faulted_one(host, tmp_path):
    data = f'(data (i32.const 1024) "test.ping") (data (i32.const 2048) "{wat_bytes(PING)}")'
    ping = (f"(call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 2048) "
            f"(i32.const {len(PING)}))")
    body = f'''(func (export "execute_go") (result i32) (local $n i32)
        (if (i32.ne (call $spacedrive_result (i32.const 0) (i32.const 0)) (i32.const 0)) (then unreachable))
        (local.set $n {ping})
        (if (i32.le_s (local.get $n) (i32.const 0)) (then unreachable))
        ;; twice, and with a forged (larger) capacity: the same length, the same bytes
        (if (i32.ne (call $spacedrive_result (i32.const 8192) (i32.const 1000)) (local.get $n)) (then unreachable))
        (if (i32.ne (call $spacedrive_result (i32.const 8192) (i32.const -1)) (local.get $n)) (then unreachable))
        ;; a faulted call (method range outside memory) drops the held envelope: nothing stale to fetch
        (if (i32.ne (call $spacedrive_call (i32.const -16) (i32.const 9) (i32.const 0) (i32.const 2048)
                                            (i32.const 2)) (i32.const -1)) (then unreachable))
        (if (i32.ne (call $spacedrive_result (i32.const 8192) (i32.const 1000)) (i32.const 0)) (then unreachable))
        (i32.const 0))'''
    result, calls = run(host, tmp_path, wat_module(body, data))
    assert result.status == "completed", result.error
    assert [c.code for c in calls] == ["OK", "FAULT_RANGE"]


def test_memory_grown_to_the_limit_between_calls_is_addressable_to_its_last_byte_and_not_one_past(tmp_path):
    h = make_host(tmp_path, memory_bytes=4 * 65536)
    try:
        top = 4 * 65536
        data = f'(data (i32.const 1024) "test.ping") (data (i32.const 2048) "{wat_bytes(PING)}")'
        body = f'''(func (export "execute_go") (result i32)
            (if (i32.ne (memory.grow (i32.const 2)) (i32.const 2)) (then unreachable))
            (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))  ;; past the limit
            (memory.copy (i32.const {top - len(PING)}) (i32.const 2048) (i32.const {len(PING)}))
            (if (i32.le_s (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0)
                                                 (i32.const {top - len(PING)}) (i32.const {len(PING)})) (i32.const 0))
              (then unreachable))
            (if (i32.ne (call $spacedrive_call (i32.const 1024) (i32.const 9) (i32.const 0)
                                               (i32.const {top - len(PING) + 1}) (i32.const {len(PING)}))
                        (i32.const -1))
              (then unreachable))
            (if (i32.ne (call $spacedrive_call_into (i32.const 1024) (i32.const 9) (i32.const 0) (i32.const 2048)
                                                    (i32.const {len(PING)}) (i32.const {top - 4}) (i32.const 5))
                        (i32.const -1))
              (then unreachable))
            (i32.const 0))'''
        result, calls = h.run_job(extension(tmp_path, wat_module(body, data)), "go", b"{}")
        assert result.status == "completed", result.error
        assert [c.code for c in calls] == ["OK", "FAULT_RANGE", "FAULT_RANGE"]
    finally:
        h.close()


def test_a_shutdown_during_a_cold_compile_stops_the_job_before_it_runs(tmp_path, monkeypatch):
    h = make_host(tmp_path, cpu_seconds=30.0)
    try:
        real = h.runtime.load_module

        def compile_during_shutdown(ext):
            module = real(ext)
            h.runtime.interrupt_all()  # the daemon shuts down while the module compiles
            return module

        monkeypatch.setattr(h.runtime, "load_module", compile_during_shutdown)
        wat = wat_module('(func (export "execute_go") (result i32) (loop $l (br $l)) (i32.const 0))')
        result, _ = h.run_job(extension(tmp_path, wat), "go", b"{}")
        assert result.status == "interrupted" and "shutting down" in result.error
    finally:
        h.close()


@pytest.mark.parametrize("tables", ["(table 100000 funcref)", "(table 1 funcref) " * 5])
def test_tables_over_the_limits_are_resource_exhausted(host, tmp_path, tables):
    result, _ = run(host, tmp_path, wat_module(tables + '(func (export "execute_go") (result i32) (i32.const 0))'))
    assert result.status == "failed" and result.error.startswith("RESOURCE_EXHAUSTED") and "table" in result.error


def test_hundreds_of_thousands_of_custom_sections_are_joined_in_order(tmp_path):
    """A module may split `spacedrive.jobs` into one section per byte; they are joined once, in order (the
    pairwise concatenation this replaced was quadratic: a 16 MiB module of such sections cost seconds on load)."""
    from capengine.host import module_manifest

    text = b"go\nscan\n" * 50_000
    module = b"\0asm\x01\0\0\0" + b"".join(custom_section("spacedrive.jobs", bytes([b])) for b in text)
    assert module_manifest.custom_sections(module)["spacedrive.jobs"] == text
