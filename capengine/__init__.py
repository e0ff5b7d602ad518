"""capengine: a declarative, policy-driven capability engine for sandboxed WebAssembly extensions."""

import logging

__version__ = "0.1.0"

logging.getLogger("capengine").addHandler(logging.NullHandler())  # the application (daemon, CLI) decides
