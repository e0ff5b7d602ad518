"""JSON-RPC 2.0 over newline-delimited lines, strictly: what a line may be and what error each mistake gets.

Parse errors (-32700): not UTF-8, not JSON, NaN/Infinity (not JSON either, though Python would take them),
numbers Python cannot hold, nesting too deep. Invalid requests (-32600): not an object, `jsonrpc` not "2.0",
no string `method`, an `id` that is not a string, number or null, an empty batch. Wrong params (-32602):
anything but an object, and (per method, checked by the daemon) wrong field types. Batches are supported as
the spec says (an array in, an array of the non-notification replies out); a request without `id` is a
notification and gets no reply. Replies are always ASCII JSON, so any string the daemon echoes is encodable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from capengine.errors import CapengineError

log = logging.getLogger("capengine.daemon.rpc")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SHUTTING_DOWN = -32000
OVERLOADED = -32001  # too many jobs queued or connections open: retry after error.data.retry_after_ms
LOG_UNAVAILABLE = -32002  # the decision log cannot be written: no job runs without its audit trail
MAX_BATCH = 100

Handler = Callable[[str, dict], object]


class RpcError(CapengineError):
    def __init__(self, code: int, message: str, data: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def decode(line: bytes) -> object:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: the request is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN, over-long integers, deep nesting
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None


def error(request_id: object, code: int, message: str, data: dict | None = None) -> dict:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": err}


def encode(reply: object) -> bytes:
    return json.dumps(reply, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii") + b"\n"


def answer(line: bytes, handle: Handler) -> bytes | None:
    """The reply line for one request line (None when only notifications were sent)."""
    try:
        payload = decode(line)
    except RpcError as exc:
        return encode(error(None, exc.code, exc.message))
    if isinstance(payload, list):
        if not payload:
            return encode(error(None, INVALID_REQUEST, "an empty batch is not a request"))
        if len(payload) > MAX_BATCH:
            return encode(error(None, INVALID_REQUEST, f"a batch holds at most {MAX_BATCH} requests"))
        replies = [r for r in (_one(item, handle) for item in payload) if r is not None]
        return _safe_encode(replies) if replies else None
    reply = _one(payload, handle)
    return _safe_encode(reply) if reply is not None else None


def _safe_encode(reply: object) -> bytes:
    try:
        return encode(reply)
    except ValueError as exc:  # NaN in a result: an internal error, but still a reply
        log.error("reply cannot be encoded: %s", exc)
        return encode(error(None, INTERNAL_ERROR, "internal error: the reply cannot be encoded as JSON"))


def _one(request: object, handle: Handler) -> dict | None:
    if not isinstance(request, dict):
        return error(None, INVALID_REQUEST, "a request is a JSON object")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, float, type(None))):
        return error(None, INVALID_REQUEST, "id must be a string, a number or null")
    if request.get("jsonrpc") != "2.0":
        return error(request_id, INVALID_REQUEST, 'a request must say "jsonrpc": "2.0"')
    method = request.get("method")
    if not isinstance(method, str):
        return error(request_id, INVALID_REQUEST, "a request needs a string 'method'")
    params = request.get("params", {})
    try:
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object (named parameters)")
        result = handle(method, params)
    except RpcError as exc:
        reply = error(request_id, exc.code, exc.message, exc.data)
    except Exception:  # noqa: BLE001 - one bad request never takes the daemon down, and gets a reply
        log.exception("control request %s failed", method)
        reply = error(request_id, INTERNAL_ERROR, "internal error; see the daemon's log")
    else:
        reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return None if "id" not in request else reply


def param(params: dict, name: str, kind: type | tuple[type, ...], default: object = ..., what: str = "") -> Any:
    """A typed parameter, or -32602 naming it. Booleans are not integers here."""
    if name not in params:
        if default is ...:
            raise RpcError(INVALID_PARAMS, f"missing parameter '{name}'" + (f" ({what})" if what else ""))
        return default
    value = params[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        value = None
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RpcError(INVALID_PARAMS, f"parameter '{name}' must be {names.replace('dict', 'object')}"
                       + (f" ({what})" if what else ""))
    return value
