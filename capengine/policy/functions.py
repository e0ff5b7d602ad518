"""capengine's own CEL functions, `path.under(dir)` and `path.glob(pattern)`, and the environment that policy
conditions are compiled in (the CEL standard library plus these).

Both are segment-aware: "/photos2/x" is not under "/photos", and `*` never crosses a "/". Literal
directories and patterns are validated when the policy loads and precompiled for the fast path.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from capengine.cel.environment import Define, Environment
from capengine.cel.standard import STANDARD
from capengine.cel.types import BOOL, STRING
from capengine.cel.values import CelError
from capengine.policy import globs, paths


def _under(path: str, directory: str) -> bool:
    try:
        return paths.is_under(path, directory)
    except paths.PathError as exc:
        raise CelError(str(exc)) from None


def _check_directory(directory: str) -> None:
    if not directory.startswith("/"):
        raise CelError(f"under() needs an absolute library path, got {directory!r}")
    try:
        paths.canonical_path(directory)
    except paths.PathError as exc:
        raise CelError(str(exc)) from None


def _under_literal(directory: str, variable: str) -> Callable[[dict[str, Any]], bool]:
    base = paths.canonical_path(directory)
    if base in ("", "/"):
        return lambda a: a[variable].startswith("/")
    prefix = base + "/"
    return lambda a: (p := a[variable]) == base or p.startswith(prefix)


def _compile_glob(pattern: str) -> Callable[[str], object]:
    """Path globs match canonical paths: the pattern is NFC-normalised like every request path (a literal typed
    in NFD would otherwise never match), and a trailing `**` also matches the directory itself."""
    if not pattern.startswith("/"):
        raise CelError(f"glob() needs an absolute library path pattern (starting with '/'), got {pattern!r}")
    try:
        return globs.compile_glob(unicodedata.normalize("NFC", pattern), "/", trailing_zero=True).fullmatch
    except globs.GlobError as exc:
        raise CelError(str(exc)) from None


def _glob(path: str, pattern: str) -> bool:
    return _compile_glob(pattern)(path) is not None


def _check_glob(pattern: str) -> None:
    _compile_glob(pattern)


def _glob_literal(pattern: str, variable: str) -> Callable[[dict[str, Any]], bool]:
    match = _compile_glob(pattern)
    return lambda a: match(a[variable]) is not None


def register(define: Define) -> None:
    define("under", (STRING, STRING), BOOL, _under, receiver=True, check_literal=_check_directory,
           specialize=_under_literal)
    define("glob", (STRING, STRING), BOOL, _glob, receiver=True, check_literal=_check_glob,
           specialize=_glob_literal)


POLICY_ENVIRONMENT: Environment = STANDARD.extend(register)
