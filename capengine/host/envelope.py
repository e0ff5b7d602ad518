"""What a host call returns to the guest (the envelope of docs/abi.md) and what the host remembers of it.

`ErrorCode` is the closed set of codes a guest can receive; `CallRecord` is one call as `capengine run`
prints it and the decision log stores it.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class ErrorCode(enum.StrEnum):
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    LIBRARY_REQUIRED = "LIBRARY_REQUIRED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"


OK = "OK"  # the code recorded for a call that succeeded


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
    code: str  # OK or an ErrorCode
    message: str
    revision: str
    duration_us: int



def error_envelope(code: ErrorCode, message: str, rule: str | None = None, **extra: object) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message, "rule": rule, **extra}}
