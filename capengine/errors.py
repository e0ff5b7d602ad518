"""The one base class of every error capengine raises, so an embedder can catch `CapengineError` alone.

It sits outside the layers (cel -> policy -> host -> daemon -> cli) because every layer derives from it.
"""

from __future__ import annotations


class CapengineError(Exception):
    """An error capengine reports to its caller: bad input (a policy, a manifest, a request), a refused
    operation, a daemon that cannot start. Its text is meant for a person: it names what and where."""
