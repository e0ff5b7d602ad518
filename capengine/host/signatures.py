"""Ed25519-signed extensions: the operator may trust a publisher's key for some ids instead of installing each
build.

WHY: `capengine ext install` vouches for one exact build. An operator who trusts a publisher can instead record
that publisher's public key with the ids it may sign for (`capengine ext trust NAME KEY --ids GLOB`); an
extension directory carrying a valid signature by such a key over its id, manifest digest and module digest
then counts as installed. The signature covers the digests the host computed while loading, and the runtime
re-checks the module digest before compiling, so a signature copied to another module or a module swapped after
signing is refused like any impostor.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from capengine.host import data_dir as private
from capengine.host.manifests import Extension, IdentityError, load_extension
from capengine.host.module_limits import ModuleError, read_regular
from capengine.policy import globs

MAX_SIGNATURE_BYTES = 64 * 1024  # two base64 fields of 44 and 88 characters
SIGNATURE_FILE = "signature.ed25519"  # beside manifest.yaml: {"public_key": base64, "signature": base64}
TRUST_FILE = "trusted-keys.json"
FORMAT = 1
DOMAIN = b"capengine extension signature v1"


def signed_message(ext_id: str, manifest_sha256: str, module_sha256: str) -> bytes:
    return b"\0".join((DOMAIN, ext_id.encode(), manifest_sha256.encode(), module_sha256.encode()))


def public_key(text: str) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key in base64 (what `ext keygen` prints)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise IdentityError(f"{text!r} is not an Ed25519 public key (base64 of 32 bytes, as capengine ext keygen "
                            "prints it)")
    return Ed25519PublicKey.from_public_bytes(raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def generate_key(path: Path) -> str:
    """Write a new private key to `path` (PEM, 0600, never over an existing file); return its public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        created = private.create_exclusive(Path(path), pem)
    except OSError as exc:
        raise IdentityError(f"cannot write the key to {path}: {exc.strerror}") from None
    if not created:
        raise IdentityError(f"{path} exists; choose another path (a key is never overwritten)")
    return _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def sign(directory: Path, key_path: Path) -> tuple[Extension, str]:
    """Sign the extension in `directory` as it is now; writes SIGNATURE_FILE there. Returns it and the public key."""
    ext = load_extension(directory)
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read an Ed25519 private key from {key_path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{key_path} is not an Ed25519 private key (make one with capengine ext keygen)")
    signature = key.sign(signed_message(ext.id, ext.manifest_sha256, ext.module_sha256))
    pub = _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    document = json.dumps({"public_key": pub, "signature": _b64(signature)}, indent=2).encode() + b"\n"
    try:
        private.write_atomic(Path(directory) / SIGNATURE_FILE, document)
    except OSError as exc:
        raise IdentityError(f"cannot write {Path(directory) / SIGNATURE_FILE}: {exc.strerror}") from None
    return ext, pub


def _id_globs(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("ids must be a list of id globs")
    return tuple(value)


def _globs(_instance: object, _attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(g, str) and g for g in value):
        raise ValueError("ids must be a non-empty list of id globs")


@attrs.frozen
class TrustedKey:
    name: str
    public_key: str = attrs.field()
    ids: tuple[str, ...] = attrs.field(converter=_id_globs, validator=_globs)

    @public_key.validator
    def _check_key(self, _attribute: attrs.Attribute, value: str) -> None:
        public_key(value)


class TrustedKeys:
    """The keys the operator trusts, with the ids each may sign for: DATA_DIR/trusted-keys.json (0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / TRUST_FILE
        self._file: private.CachedFile[dict[str, TrustedKey]] = private.CachedFile(self.path, self._read, {})

    def entries(self) -> dict[str, TrustedKey]:
        return self._file.get()

    def _read(self) -> dict[str, TrustedKey]:
        fix = "restore it from a backup, or delete it and trust the keys again (capengine ext trust)"
        entries = private.read_document(self.path, FORMAT, "keys", "trusted-key file", fix)
        if entries is None:
            return {}
        found = {}
        for name, entry in entries.items():
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
                    raise ValueError("an entry is an object with a string public_key")
                found[name] = TrustedKey(name, entry["public_key"], entry.get("ids") or ())
            except (TypeError, ValueError, IdentityError) as exc:
                raise private.DataDirError(f"{self.path}: key {name!r} is invalid ({exc}); {fix}") from None
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TrustedKey]]:
        private.prepare(self.data_dir)
        fd = os.open(self.data_dir / (TRUST_FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = dict(self._read())
            yield entries
            keys = {k: {"public_key": v.public_key, "ids": list(v.ids)} for k, v in sorted(entries.items())}
            private.write_atomic(self.path, json.dumps({"format": FORMAT, "keys": keys}, indent=2).encode() + b"\n")
        finally:
            os.close(fd)

    def trust(self, name: str, key: str, ids: list[str]) -> TrustedKey:
        try:
            entry = TrustedKey(name, key, ids)
        except (TypeError, ValueError) as exc:
            raise IdentityError(f"cannot trust {name}: {exc}") from None
        with self._locked() as entries:
            entries[name] = entry
        return entry

    def untrust(self, name: str) -> TrustedKey | None:
        with self._locked() as entries:
            return entries.pop(name, None)

    def signer(self, ext: Extension) -> str | None:
        """The name of a trusted key that signed exactly this extension for its id, else None. A signature file
        that does not verify, or whose key is not trusted for the id, vouches for nothing."""
        trusted = self.entries()
        if not trusted:
            return None
        try:  # the author's file: a FIFO, a link out of the directory or a huge file is never read (module_limits)
            document = json.loads(read_regular(ext.directory / SIGNATURE_FILE, MAX_SIGNATURE_BYTES, "the signature",
                                               ext.directory))
            pub = document["public_key"]
            signature = base64.b64decode(document["signature"], validate=True)
        except (OSError, ValueError, KeyError, TypeError, RecursionError, ModuleError):
            return None
        for entry in trusted.values():
            if entry.public_key != pub or not any(globs.glob_match(g, ext.id) for g in entry.ids):
                continue
            try:
                public_key(pub).verify(signature, signed_message(ext.id, ext.manifest_sha256, ext.module_sha256))
            except InvalidSignature:
                return None
            return entry.name
        return None
