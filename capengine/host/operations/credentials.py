"""credentials.*: an encrypted vault, namespaced per extension (A can never read B's secrets, whatever the
policy says: the namespace is the caller's, not an argument; an extension's id when the operator installed
exactly that module, else a namespace keyed by its module digest).

SQLite holds only AES-256-GCM ciphertext; the associated data binds each row to its extension and name, so a
row copied into another namespace does not decrypt. The master key comes from $CAPENGINE_VAULT_KEY (base64,
32 bytes) or a key file created 0600 on first use, atomically (a full disk or two first stores racing never
leave or read a short key). A key that cannot be had fails the call with INTERNAL; the reason goes to the host
log only. Secrets are `hidden_args`: never seen by policies, logs,
decisions or error messages.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sqlite3
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from capengine.host import data_dir as private
from capengine.host.envelope import ErrorCode
from capengine.host.operations.registry import (
    CallContext,
    Handler,
    Operation,
    OperationError,
    Registry,
    load_schema,
)

KEY_ENV = "CAPENGINE_VAULT_KEY"
KEY_FIX = ("restore it from a backup; without it the stored secrets cannot be decrypted (to start an empty "
           "vault instead, delete it and vault.sqlite3)")
UNAVAILABLE = "the vault is unavailable; see the host log"  # all a guest learns about a key problem
log = logging.getLogger("capengine.host.operations.credentials")


def _master_key(data_dir: Path) -> bytes:
    if os.environ.get(KEY_ENV):
        try:
            key = base64.b64decode(os.environ[KEY_ENV], validate=True)
        except binascii.Error:
            key = b""
        if len(key) != 32:
            log.error("$%s must be 32 bytes in base64", KEY_ENV)
            raise OperationError(ErrorCode.INTERNAL, UNAVAILABLE)
        return key
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return private.load_or_create_key(data_dir / "vault.key", 32, KEY_FIX)
    except OSError as exc:
        log.error("cannot create the data directory %s: %s", data_dir, exc.strerror)
        raise OperationError(ErrorCode.INTERNAL, UNAVAILABLE) from None
    except private.KeyFileError as exc:
        log.error("%s", exc)
        raise OperationError(ErrorCode.INTERNAL, UNAVAILABLE) from None


def _db(ctx: CallContext) -> sqlite3.Connection:
    """The vault database; waiting for a lock held by another process ends with the call's deadline."""
    data_dir = ctx.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(data_dir / "vault.sqlite3", timeout=min(5.0, max(0.05, ctx.deadline.remaining())))
    db.execute("CREATE TABLE IF NOT EXISTS secrets (extension TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,"
               " nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, PRIMARY KEY (extension, name))")
    return db


def _aad(ctx: CallContext, name: str) -> bytes:
    return f"{ctx.extension}\0{name}".encode()


def store(ctx: CallContext, args: dict) -> dict:
    """Never overwrites by accident: replacing a secret is an explicit `replace: true`, which policies see as
    args.replace (a policy that forbids destroying secrets denies it). Without it, an existing name is
    ALREADY_EXISTS and the stored secret is untouched; the check and the insert are one statement."""
    nonce = os.urandom(12)
    sealed = AESGCM(_master_key(ctx.data_dir)).encrypt(nonce, args["secret"].encode(), _aad(ctx, args["name"]))
    kind = args.get("kind", "secret")
    replace = bool(args.get("replace", False))
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    try:
        with _db(ctx) as db:
            db.execute(f"{verb} INTO secrets VALUES (?, ?, ?, ?, ?)", (ctx.extension, args["name"], kind, nonce,
                                                                        sealed))
    except sqlite3.IntegrityError:
        raise OperationError(ErrorCode.ALREADY_EXISTS, f"a credential named {args['name']!r} exists; store it "
                                                       "with replace: true to overwrite it") from None
    return {"name": args["name"], "kind": kind, "stored": True}


def get(ctx: CallContext, args: dict) -> dict:
    with _db(ctx) as db:
        row = db.execute("SELECT kind, nonce, ciphertext FROM secrets WHERE extension = ? AND name = ?",
                         (ctx.extension, args["name"])).fetchone()
    if row is None:
        raise OperationError(ErrorCode.NOT_FOUND, f"no credential named {args['name']!r}")
    try:
        secret = AESGCM(_master_key(ctx.data_dir)).decrypt(row[1], row[2], _aad(ctx, args["name"]))
    except InvalidTag:
        raise OperationError(ErrorCode.INTERNAL, "the credential does not decrypt (wrong vault key?)") from None
    return {"name": args["name"], "kind": row[0], "secret": secret.decode()}


def delete(ctx: CallContext, args: dict) -> dict:
    with _db(ctx) as db:
        deleted = db.execute("DELETE FROM secrets WHERE extension = ? AND name = ?",
                             (ctx.extension, args["name"])).rowcount
    return {"name": args["name"], "deleted": bool(deleted)}


def register(registry: Registry) -> None:
    operations: tuple[tuple[str, Literal["query", "action"], Handler, str], ...] = (
        ("credentials.store", "action", store, "Store a secret in the caller's own vault (replace: true overwrites)."),
        ("credentials.get", "query", get, "Read a secret from the caller's own vault."),
        ("credentials.delete", "action", delete, "Delete a secret from the caller's own vault."),
    )
    for name, kind, handler, description in operations:
        registry.register(Operation(name, kind, description, load_schema(name), handler, path_field=None,
                                    needs_library=False, hidden_args=("secret",)))
