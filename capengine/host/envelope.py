"""What a host call returns to the guest (the envelope of docs/abi.md) and what the host remembers of it.

`ErrorCode` is the closed set of codes a guest can receive; `CallRecord` is one call as `capengine run`
prints it and the decision log stores it.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs


class ErrorCode(enum.StrEnum):
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    LIBRARY_REQUIRED = "LIBRARY_REQUIRED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"


OK = "OK"  # the code recorded for a call that succeeded
# Recorded (never sent: the guest gets the negative return value) for a call refused at the ABI boundary.
FAULT_RANGE = "FAULT_RANGE"  # -1: a pointer/length outside linear memory
FAULT_TOO_LARGE = "FAULT_TOO_LARGE"  # -2: a request over the size cap


@attrs.frozen
class CallRecord:
    """One call as `capengine run` prints it and the decision log stores it (never raw args or secrets)."""

    extension: str
    operation: str
    library: str
    path: str
    decided: bool  # False when the call failed before the policy saw it (unknown op, bad input, ...)
    allowed: bool
    rules: tuple[str, ...]
    errors: tuple[str, ...]  # condition evaluation errors, "<rule>: <message>"
    args: dict[str, Any]  # the args the policy set's conditions can read (secrets are hidden from policies altogether)
    code: str  # what the guest received: OK, an ErrorCode, or FAULT_RANGE/FAULT_TOO_LARGE
    message: str
    revision: str
    duration_us: int


def error_envelope(code: ErrorCode, message: str, rule: str | None = None, **extra: object) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message, "rule": rule, **extra}}


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Compact, "ok" first (the C bindings test the prefix), never NaN/Infinity. json's C encoder, built once:
# JSONEncoder.encode builds one per call, which costs more than encoding a small envelope (1.8 us against
# 0.7 us). No circular-reference check: envelopes are built from handler results, which are JSON trees.
_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)


def encode_envelope(envelope: dict[str, Any]) -> bytes:
    """The envelope as the guest receives it: UTF-8 JSON. Raises (ValueError, TypeError, UnicodeEncodeError)
    for a value that has no such form, e.g. a lone surrogate or a non-finite float."""
    return "".join(_ENCODE(envelope, 0)).encode("utf-8")
