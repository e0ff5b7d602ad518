"""capengine: a declarative, policy-driven capability engine for sandboxed WebAssembly extensions.

The public API (docs/embedding.md) is what `__all__` lists; everything else is internal and may move.

    import capengine
    policies = capengine.load_policies("policies")          # raises capengine.PolicyLoadError
    decision = policies.decide(capengine.Request.from_mapping({...}))

`Host`, `Limits` and `load_extension` load the wasm runtime (wasmtime) on first use only, so that deciding
requests, checking policies or replaying a log never pays for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from capengine.errors import CapengineError
from capengine.policy.check import CheckOutcome, PolicyLoadError, load_policies
from capengine.policy.check import run_check as check
from capengine.policy.engine import Explanation, PolicySet
from capengine.policy.model import Decision, Finding, Location, Request, RequestError

if TYPE_CHECKING:
    from capengine.host.extension_host import Host
    from capengine.host.manifests import Extension, ExtensionError, load_extension
    from capengine.host.runtime import JobResult, Limits

from capengine.version import __version__

__all__ = [
    "CapengineError", "CheckOutcome", "Decision", "Explanation", "Extension", "ExtensionError", "Finding", "Host",
    "JobResult", "Limits", "Location", "PolicyLoadError", "PolicySet", "Request", "RequestError", "__version__",
    "check", "load_extension", "load_policies",
]

_LAZY = {
    "Host": "capengine.host.extension_host", "Extension": "capengine.host.manifests",
    "ExtensionError": "capengine.host.manifests", "load_extension": "capengine.host.manifests",
    "JobResult": "capengine.host.runtime", "Limits": "capengine.host.runtime",
}


def __getattr__(name: str) -> Any:
    """The host-side names, imported on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capengine' has no attribute {name!r}")


logging.getLogger("capengine").addHandler(logging.NullHandler())  # the application (daemon, CLI) decides
