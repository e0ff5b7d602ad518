"""test.ping: an echo with no side effects, for ABI tests and round-trip benchmarks."""

from __future__ import annotations

from capengine.host.operations.registry import CallContext, Operation, Registry, load_schema


def ping(ctx: CallContext, args: dict) -> dict:
    return {"message": args["message"]}


def register(registry: Registry) -> None:
    registry.register(Operation("test.ping", "query", "Echo the message back.", load_schema("test.ping"), ping,
                                path_field=None, needs_library=False))
