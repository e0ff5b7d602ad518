"""The module cache: an entry is used only for the module, wasmtime and engine config it was made for, and a
cache that cannot be written costs a compilation, never a job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import wasmtime

from capengine.host.module_cache import ModuleCache
from capengine.host.runtime import Limits, Runtime

ROOT = Path(__file__).resolve().parent.parent


def answer(value: int) -> bytes:
    return f'(module (func (export "answer") (result i32) (i32.const {value})))'.encode()


def run_answer(engine: wasmtime.Engine, module: wasmtime.Module) -> int:
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1_000_000)
    result = wasmtime.Instance(store, module, []).exports(store)["answer"](store)
    assert isinstance(result, int)
    return result


def test_entry_copied_under_another_digest_is_rejected_and_recompiled(tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    with Runtime(cache_dir=cache_dir) as runtime:
        assert runtime.cache is not None
        runtime.cache.load(answer(1), is_wat=True)
        runtime.cache.load(answer(2), is_wat=True)
        [a_path] = [p for p in cache_dir.glob("*.cwasm") if p.name.startswith(digest(answer(1)))]
        b_path = runtime.cache.path_for(digest(answer(2)))
        shutil.copyfile(a_path, b_path)  # A's valid entry (valid tag under this key) planted as B's
    with Runtime(cache_dir=cache_dir) as runtime:
        cache = runtime.cache
        assert cache is not None
        module = cache.load(answer(2), is_wat=True)
        assert run_answer(runtime.engine, module) == 2  # B runs as B, never as A
        assert (cache.hits, cache.misses) == (0, 1) and "failed verification" in caplog.text
        assert run_answer(runtime.engine, cache.load(answer(2), is_wat=True)) == 2 and cache.hits == 1
        assert run_answer(runtime.engine, cache.load(answer(1), is_wat=True)) == 1 and cache.hits == 2


def test_entry_from_another_engine_config_is_not_used(tmp_path):
    cache_dir = tmp_path / "cache"
    with Runtime(cache_dir=cache_dir) as plain:
        assert plain.cache is not None
        plain.cache.load(answer(7), is_wat=True)
        plain_path = plain.cache.path_for(digest(answer(7)))
    with Runtime(Limits(fuel=10_000), cache_dir=cache_dir) as fueled:
        cache = fueled.cache
        assert cache is not None
        fueled_path = cache.path_for(digest(answer(7)))
        assert fueled_path != plain_path
        shutil.copyfile(plain_path, fueled_path)  # an entry compiled without fuel metering, renamed
        cache.load(answer(7), is_wat=True)
        assert (cache.hits, cache.misses) == (0, 1)


def test_tampered_entry_is_recompiled(tmp_path):
    with Runtime(cache_dir=tmp_path) as runtime:
        cache = runtime.cache
        assert cache is not None
        cache.load(answer(3), is_wat=True)
        path = cache.path_for(digest(answer(3)))
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 1
        path.write_bytes(bytes(blob))
        fresh = ModuleCache(runtime.engine, tmp_path, runtime.engine_config)
        assert run_answer(runtime.engine, fresh.load(answer(3), is_wat=True)) == 3 and fresh.misses == 1


def test_threads_filling_a_fresh_cache_never_share_a_temp_file(tmp_path):
    with Runtime(cache_dir=tmp_path / "cache") as runtime:
        caches = [ModuleCache(runtime.engine, tmp_path / "cache", runtime.engine_config) for _ in range(8)]
        barrier = threading.Barrier(len(caches))
        failures: list[BaseException] = []

        def load(cache: ModuleCache) -> None:
            barrier.wait()
            try:
                for value in range(6):
                    assert run_answer(runtime.engine, cache.load(answer(value), is_wat=True)) == value
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=load, args=(c,)) for c in caches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".cwasm"] * 6 + [".key"]
        fresh = ModuleCache(runtime.engine, tmp_path / "cache", runtime.engine_config)
        for value in range(6):
            fresh.load(answer(value), is_wat=True)
        assert fresh.hits == 6  # every entry written concurrently is whole and verifies


FULL_DISK = """
import json, logging, resource, sys
from pathlib import Path
logging.basicConfig()
from capengine.host.runtime import Runtime
cache_dir, limit = Path(sys.argv[1]), int(sys.argv[2])
runtime = Runtime(cache_dir=cache_dir) if limit < 0 else None  # negative: the key is made before the disk fills
resource.setrlimit(resource.RLIMIT_FSIZE, (max(limit, 0), max(limit, 0)))  # writing past it fails with EFBIG
runtime = runtime or Runtime(cache_dir=cache_dir)
module = runtime.cache.load(b'(module (func (export "answer") (result i32) (i32.const 9)))', True)
store = __import__("wasmtime").Store(runtime.engine)
store.set_epoch_deadline(1000000)
answer = __import__("wasmtime").Instance(store, module, []).exports(store)["answer"](store)
print(json.dumps({"cached": runtime.cache.enabled, "answer": answer}))
runtime.close()
"""


def full_disk(cache_dir: Path, limit: int) -> subprocess.CompletedProcess:
    """Run FULL_DISK in a child whose file size limit is `limit` bytes (from the start, or after the cache key
    exists when negative) - a full disk without needing a tmpfs."""
    return subprocess.run([sys.executable, "-c", FULL_DISK, str(cache_dir), str(limit)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_a_full_disk_costs_a_compilation_never_a_job(tmp_path):
    proc = full_disk(tmp_path / "cache", -1)  # key written, then no file may grow: the entry write fails
    assert proc.returncode == 0 and '"cached": true, "answer": 9' in proc.stdout, proc.stderr
    assert "cannot write cache entry" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cache.key"]  # no temp file or torn entry left


def test_a_full_disk_on_a_fresh_cache_leaves_no_empty_key(tmp_path):
    proc = full_disk(tmp_path / "cache", 0)  # not even the key fits: the cache is off, the job still runs
    assert proc.returncode == 0 and '"cached": false, "answer": 9' in proc.stdout, proc.stderr
    assert "module cache disabled" in proc.stderr and "nothing was written" in proc.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # no 0-byte cache.key to brick the next start
    proc = full_disk(tmp_path / "cache", 1 << 30)  # space again: the key is created and the cache works
    assert proc.returncode == 0 and '"cached": true' in proc.stdout, proc.stderr
    assert len((tmp_path / "cache" / "cache.key").read_bytes()) == 32


def test_job_completes_when_the_cache_entry_cannot_be_written(tmp_path):
    """Through the whole job path: the Host's runtime, a real guest, a cache write that fails."""
    script = """
import logging, resource, sys
from pathlib import Path
logging.basicConfig()
sys.path.insert(0, sys.argv[2])
from wasm_helpers import call_job, extension, make_host
tmp = Path(sys.argv[1])
host = make_host(tmp)  # the data dir, catalogue and cache key exist before the disk fills
wat = call_job("test.ping", '{"message": "x"}', 0)
pad = "".join(f"(func (result i32) (i32.add (i32.const {i}) (i32.const 7)))" for i in range(3000))
ext = extension(tmp, wat[:wat.rindex(")")] + pad + ")")  # compiled: about 400 KiB
# 256 KiB: enough for wasmtime's memfd memory image, too little for the compiled module
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
result, calls = host.run_job(ext, "go", b"{}")
host.close()
print(result.status, result.error, [c.code for c in calls])
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(ROOT / "tests")], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["completed", "['OK']"]
    assert "cannot write cache entry" in proc.stderr
    assert not list((tmp_path / "data" / "module-cache").glob("*.tmp"))


def digest(source: bytes) -> str:
    import hashlib

    return hashlib.sha256(source).hexdigest()
