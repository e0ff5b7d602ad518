"""Compiled modules on disk, so a daemon restart or the next `capengine run` skips compilation."""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
import os
from pathlib import Path

import wasmtime

log = logging.getLogger("capengine.host.module_cache")


def compile_module(engine: wasmtime.Engine, source: bytes, is_wat: bool) -> wasmtime.Module:
    return wasmtime.Module(engine, source.decode("utf-8") if is_wat else source)


class ModuleCache:
    """Compiled modules on disk, keyed by the source's sha256 and the wasmtime version.

    `Module.deserialize` runs native code from the file and is unsafe on untrusted bytes, so each entry
    carries an HMAC-SHA256 tag under a key that only this data directory holds (0600); an entry whose tag does
    not verify is recompiled and overwritten, never deserialized.
    """

    def __init__(self, engine: wasmtime.Engine, directory: Path) -> None:
        self.engine = engine
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.version = importlib.metadata.version("wasmtime")
        self._key = self._load_key()
        self.hits = self.misses = 0

    def _load_key(self) -> bytes:
        path = self.directory / "cache.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) != 32:
                raise OSError(f"{path} is corrupt; delete the cache directory") from None
            return key
        key = os.urandom(32)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key

    def _tag(self, data: bytes) -> bytes:
        return hmac.new(self._key, self.version.encode() + b"\0" + data, hashlib.sha256).digest()

    def load(self, source: bytes, is_wat: bool) -> wasmtime.Module:
        digest = hashlib.sha256(source).hexdigest()
        path = self.directory / f"{digest}-wasmtime{self.version}.cwasm"
        try:
            blob = path.read_bytes()
        except OSError:
            blob = b""
        tag, data = blob[:32], blob[32:]
        if data and hmac.compare_digest(tag, self._tag(data)):
            try:
                module = wasmtime.Module.deserialize(self.engine, data)
                self.hits += 1
                return module
            except wasmtime.WasmtimeError:
                log.warning("cache entry %s does not deserialize; recompiling", path.name)
        elif blob:
            log.warning("cache entry %s failed verification; recompiling", path.name)
        self.misses += 1
        module = compile_module(self.engine, source, is_wat)
        data = module.serialize()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(self._tag(data) + data)
        os.replace(tmp, path)
        return module
