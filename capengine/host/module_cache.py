"""Compiled modules on disk, so a daemon restart or the next `capengine run` skips compilation."""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
from pathlib import Path

import wasmtime

from capengine.host import data_dir as private
from capengine.host.module_limits import DEFAULT, MAX_CACHE_ENTRY_BYTES, ModuleError, ModuleLimits, check, read_regular

log = logging.getLogger("capengine.host.module_cache")
KEY_FIX = "delete it (the module cache is rebuilt; nothing else depends on that key)"
TAG_DOMAIN = b"capengine module cache v2"


__all__ = ["ModuleCache", "ModuleError", "compile_module"]


def compile_module(engine: wasmtime.Engine, source: bytes, is_wat: bool, name: str = "the module",
                   limits: ModuleLimits = DEFAULT) -> wasmtime.Module:
    """Raises ModuleError naming `name` (the file) for text that is not UTF-8, a module wasmtime rejects, or
    one over `limits` (checked on the binary after validation and before compilation: module_limits)."""
    kind = "WebAssembly text (.wat)" if is_wat else "WebAssembly binary (.wasm)"
    try:
        binary = bytes(wasmtime.wat2wasm(source.decode("utf-8"))) if is_wat else source
        wasmtime.Module.validate(engine, binary)  # linear and fast; compilation is neither
        check(binary, limits, name)
        return wasmtime.Module(engine, binary)
    except UnicodeDecodeError as exc:
        raise ModuleError(f"{name} is not valid {kind}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "fix or rebuild it") from None
    except wasmtime.WasmtimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModuleError(f"{name} is not valid {kind}: {'; '.join(lines[:3]) or 'rejected by wasmtime'}; fix or "
                          "rebuild it") from None


class ModuleCache:
    """Compiled modules on disk, keyed by the source's sha256, the wasmtime version and the engine config.

    `Module.deserialize` runs native code from the file and is unsafe on untrusted bytes, so each entry carries
    an HMAC-SHA256 tag under a key only this data directory holds (0600). The tag covers the source digest, the
    wasmtime version and the engine configuration as well as the compiled bytes: an entry copied under another
    module's name, or made by another wasmtime or config, does not verify and is recompiled, never deserialized.
    A cache that cannot be written (full or read-only disk) costs a compilation, never a job.
    """

    def __init__(self, engine: wasmtime.Engine, directory: Path, engine_config: str,
                 limits: ModuleLimits = DEFAULT) -> None:
        self.engine, self.limits = engine, limits
        self.directory = Path(directory)
        self.version = importlib.metadata.version("wasmtime")
        self.engine_config = engine_config
        self._config_id = hashlib.sha256(f"{self.version}\0{engine_config}".encode()).hexdigest()[:16]
        self._key = self._load_key()
        self.hits = self.misses = 0

    def _load_key(self) -> bytes | None:
        """The HMAC key; None (no caching, with a warning) when it cannot be created: a full or read-only disk
        must not stop jobs. A damaged key is an error the operator must see (KeyFileError)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (FileExistsError, NotADirectoryError):  # damage the operator must see, not a full disk
            raise private.DataDirError(f"the module cache {self.directory} is not a directory; remove it (the "
                                       "cache is rebuilt on the next start)") from None
        except OSError as exc:
            log.warning("module cache disabled: cannot create %s: %s", self.directory, exc.strerror)
            return None
        try:
            return private.load_or_create_key(self.directory / "cache.key", 32, KEY_FIX)
        except private.KeyFileError as exc:
            if exc.corrupt:
                raise
            log.warning("module cache disabled: %s", exc)
            return None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _tag(self, digest: str, data: bytes) -> bytes:
        mac = hmac.new(self._key or b"", digestmod=hashlib.sha256)
        for part in (TAG_DOMAIN, digest.encode(), self.version.encode(), self.engine_config.encode()):
            mac.update(len(part).to_bytes(8, "big") + part)  # length-prefixed: no two field lists collide
        mac.update(data)
        return mac.digest()

    def path_for(self, digest: str) -> Path:
        return self.directory / f"{digest}-wasmtime{self.version}-{self._config_id}.cwasm"

    def load(self, source: bytes, is_wat: bool, digest: str | None = None, name: str = "the module"
             ) -> wasmtime.Module:
        digest = digest or hashlib.sha256(source).hexdigest()
        if self._key is None:
            self.misses += 1
            return compile_module(self.engine, source, is_wat, name, self.limits)
        path = self.path_for(digest)
        try:  # never a FIFO (it would block), a link or a huge file: any of them is not an entry
            blob = read_regular(path, MAX_CACHE_ENTRY_BYTES, "a module cache entry")
        except FileNotFoundError:
            blob = b""
        except (OSError, ModuleError) as exc:
            log.warning("cache entry %s is unusable (%s); recompiling", path.name, exc)
            blob = b""
        tag, data = blob[:32], blob[32:]
        if data and hmac.compare_digest(tag, self._tag(digest, data)):
            try:
                module = wasmtime.Module.deserialize(self.engine, data)
                self.hits += 1
                return module
            except wasmtime.WasmtimeError:
                log.warning("cache entry %s does not deserialize; recompiling", path.name)
        elif blob:
            log.warning("cache entry %s failed verification; recompiling", path.name)
        self.misses += 1
        module = compile_module(self.engine, source, is_wat, name, self.limits)
        try:
            compiled = bytes(module.serialize())
            # No fsync: a torn entry fails its tag and is recompiled, so the cache needs atomicity, not durability.
            private.write_atomic(path, self._tag(digest, compiled) + compiled, fsync=False)
        except (OSError, wasmtime.WasmtimeError) as exc:
            log.warning("cannot write cache entry %s (%s); the job runs from the fresh compilation", path.name, exc)
        return module
