"""A CEL environment: the functions an expression may call, as one immutable table.

The checker picks overloads from it and the compiler binds their implementations, so the two can never
disagree about what exists. The CEL layer only knows the standard library (standard.py); an embedding
layer adds its own functions (the policy layer adds `path.under` and `path.glob`) by extending an
environment, never by writing into a process-wide table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs

from capengine.cel.types import DYN, Type
from capengine.cel.values import CelError, type_name

Impl = Callable[..., Any]
Specialize = Callable[[str, str], Callable[[dict[str, Any]], bool]]


@attrs.frozen
class Overload:
    params: tuple[Type, ...]  # for receiver-style functions the receiver comes first
    result: Type
    impl: Impl
    receiver: bool = False
    # Optional compile-time hooks for a string literal as the second argument (`path.under("/photos")`):
    # `check_literal` raises CelError for a literal that can never work, so a typo fails the load instead of
    # failing (closed) on every call; `specialize(literal, variable)` returns the whole test as a function of
    # the activation, with the literal precomputed (a compiled regex, a canonical prefix), for the
    # compiler's fast path when the receiver is a string variable that is always present.
    check_literal: Callable[[str], None] | None = None
    specialize: Specialize | None = None

    @property
    def runtime_key(self) -> tuple[str | None, ...]:
        """Runtime type names this overload accepts; None accepts any value."""
        return tuple(None if p.is_param or p == DYN else p.name for p in self.params)


class Define(Protocol):
    def __call__(self, name: str, params: tuple[Type, ...], result: Type, impl: Impl, receiver: bool = False,
                 *, check_literal: Callable[[str], None] | None = None,
                 specialize: Specialize | None = None) -> None: ...


DispatchTable = list[tuple[tuple[str | None, ...], Impl]]


def _read_only(functions: Mapping[str, tuple[Overload, ...]]) -> Mapping[str, tuple[Overload, ...]]:
    return MappingProxyType(dict(functions))


@attrs.frozen
class Environment:
    functions: Mapping[str, tuple[Overload, ...]] = attrs.field(factory=dict, converter=_read_only)
    # Dotted function names (`strings.quote`), which the parser must tell from method calls.
    namespaced: frozenset[str] = attrs.field(
        init=False, default=attrs.Factory(lambda self: frozenset(n for n in self.functions if "." in n),
                                          takes_self=True))

    @classmethod
    def build(cls, *libraries: Callable[[Define], None]) -> Environment:
        return cls().extend(*libraries)

    def extend(self, *libraries: Callable[[Define], None]) -> Environment:
        """A new environment with the overloads each library defines added to this one's."""
        table: dict[str, list[Overload]] = {name: list(o) for name, o in self.functions.items()}

        def define(name: str, params: tuple[Type, ...], result: Type, impl: Impl, receiver: bool = False, *,
                   check_literal: Callable[[str], None] | None = None,
                   specialize: Specialize | None = None) -> None:
            table.setdefault(name, []).append(Overload(params, result, impl, receiver, check_literal, specialize))

        for library in libraries:
            library(define)
        return Environment({name: tuple(o) for name, o in table.items()})

    def overloads(self, name: str, receiver: bool) -> list[Overload]:
        return [o for o in self.functions.get(name, ()) if o.receiver == receiver]

    def has_function(self, name: str) -> bool:
        return name in self.functions

    def dispatch_table(self, name: str, receiver: bool) -> DispatchTable:
        return [(o.runtime_key, o.impl) for o in self.overloads(name, receiver)]


def resolve_runtime(table: Iterable[tuple[tuple[str | None, ...], Impl]], args: tuple[Any, ...]) -> Impl:
    """Pick an implementation from the runtime types of the arguments (for dyn-typed calls)."""
    names = tuple(type_name(a) for a in args)
    for key, impl in table:
        if len(key) == len(names) and all(k is None or k == n for k, n in zip(key, names)):
            return impl
    raise CelError(f"no such overload for ({', '.join(names)})")
