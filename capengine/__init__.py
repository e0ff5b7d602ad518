"""capengine: a declarative, policy-driven capability engine for sandboxed WebAssembly extensions."""

__version__ = "0.1.0"
