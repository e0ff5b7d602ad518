"""The operation registry and the operations capengine ships with."""

from __future__ import annotations

from capengine.host.operations import credentials, job, ocr, ping, vdfs
from capengine.host.operations.registry import CallContext, Operation, OperationError, Registry


def default_registry() -> Registry:
    registry = Registry()
    for module in (vdfs, ocr, credentials, ping, job):
        module.register(registry)
    return registry


__all__ = ["CallContext", "Operation", "OperationError", "Registry", "default_registry"]
