"""A RuleIndex as one generated Python function: what `decide()` calls to pick the candidate rules of one
(extension, operation), already split into (deny rules, allow rules), each in policy order.

RuleIndex.select (rule_index.py) is the reference: it walks every table the index has, the same way for every
index, and returns one merged list that the engine then split by effect. At a few microseconds per decide that
interpretation was a third of the cost. Here the walk is specialised to the index once per policy revision:
only the probes some rule needs are emitted (no library probe when no rule is guarded on the library, no
bisection for a field without one-sided bounds, the suffix lengths unrolled, directory probes only at the
depths some guarding directory has), each bucket is stored pre-split into (denies, allows) tuples, and when a
request hits at most one bucket (the common case: a path under one rule's directory) that pair is returned
as it is — no list, no sort, no split. Several hits are merged, sorted by policy order and freed of repeats
(a rule in two buckets), which is what RuleIndex.select returns, split.

Exactness: the generated function must return exactly RuleIndex.select's rules, split by effect, for every
request, canonical path or not; tests/test_rule_index.py checks it on generated requests, next to the
decisions of the indexed set (which uses this function) against the plain set.

Policy text never becomes source (as in cel/codegen.py): directories, suffixes, libraries and argument names
are bound in the function's namespace under generated names; only integers computed here (suffix lengths,
a directory depth) are written into the source, via repr() after a type check.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from operator import attrgetter
from types import CodeType
from typing import Any

from capengine.policy.rule_index import RuleIndex

Pair = tuple[tuple[Any, ...], tuple[Any, ...]]  # (deny rules, allow rules), each in policy order
Selector = Callable[[Any], Pair]  # called with the Request (reads .path, .library, .args)

EMPTY: Pair = ((), ())
MAX_UNROLLED_DEPTH = 12  # directory depths probed by nested `if`s; deeper directories are probed by a loop
_order = attrgetter("order")


def split(rules: Iterable[Any]) -> Pair:
    """Rules in policy order, split by effect (CompiledRule.deny)."""
    rules = tuple(rules)
    return tuple(r for r in rules if r.deny), tuple(r for r in rules if not r.deny)


def _in_order(rules: Sequence[Any]) -> Pair:
    """A bound slice (sorted by bound, not by policy order; a rule with two bounds on the field, one per
    disjunct, is in it twice) as a pair in policy order, each rule once."""
    return split(_ordered(list(rules)))


def _ordered(rules: list[Any]) -> tuple[Any, ...]:
    if len(rules) < 2:
        return tuple(rules)
    rules.sort(key=_order)
    return tuple(r for i, r in enumerate(rules) if i == 0 or rules[i - 1] is not r)


def _merge(hits: list[Pair]) -> Pair:
    """Several buckets' pairs as one pair: each side in policy order, each rule once."""
    denies: list[Any] = []
    allows: list[Any] = []
    for d, a in hits:
        denies += d
        allows += a
    return _ordered(denies), _ordered(allows)


def constant(pair: Pair) -> Selector:
    """The selector of a plan without an index: every rule is a candidate."""
    def select(request: Any) -> Pair:
        return pair

    return select


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0
        self.namespace: dict[str, Any] = {"__builtins__": {"type": type, "len": len, "int": int, "str": str},
                                          "_EMPTY": EMPTY, "_merge": _merge, "_in_order": _in_order,
                                          "_bisect": bisect.bisect_right}

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def bind(self, value: object, prefix: str) -> str:
        """A namespace name for a value: how policy text (a directory, a field name) reaches the code."""
        self.counter += 1
        name = f"{prefix}{self.counter}"
        self.namespace[name] = value
        return name

    def hit(self, expr: str, table: str) -> None:
        """Probe `table` (a dict of pairs) with `expr`; a pair found is a hit."""
        self.emit(f"b = {table}.get({expr})")
        self.emit("if b is not None:")
        self.emit("    h.append(b)")


def _int(value: int) -> str:
    if type(value) is not int:  # only integers computed here are ever written into the source
        raise TypeError(value)
    return repr(value)


def _pairs(table: dict[Any, list[Any]]) -> dict[Any, Pair]:
    return {key: split(rules) for key, rules in table.items() if rules}


def _directories(src: _Source, index: RuleIndex, unroll: int) -> None:
    """Probe the path's ancestors "/a", "/a/b", ... and the path itself, as RuleIndex.select does, but only
    where a guarding directory has as many '/' as the prefix: the k-th '/' found after position 0 ends a prefix
    with k of them when the path starts with '/' (every directory key does, so a path that does not can match
    none, and which of its prefixes are probed does not matter)."""
    if not index.by_directory:
        return
    table = src.bind(_pairs(index.by_directory), "_dir")
    depths = {key.count("/") for key in index.by_directory}
    deepest = max(depths)
    if deepest > unroll:
        wanted = src.bind(frozenset(depths), "_depths")
        src.emit("e = path.find('/', 1)")
        src.emit("k = 1")
        src.emit(f"while e != -1 and k <= {_int(deepest)}:")
        src.depth += 1
        src.emit(f"if k in {wanted}:")
        src.depth += 1
        src.hit("path[:e]", table)
        src.depth -= 1
        src.emit("e = path.find('/', e + 1)")
        src.emit("k += 1")
        src.depth -= 1
        src.emit(f"if e == -1 and k in {wanted}:")  # the path itself, with k '/' when it starts with '/'
        src.depth += 1
        src.hit("path", table)
        src.depth -= 1
        return
    opened = 0
    for k in range(1, deepest + 1):
        src.emit("e = path.find('/', 1)" if k == 1 else "e = path.find('/', e + 1)")
        src.emit("if e == -1:")
        if k in depths:  # the path itself has k '/': it is probed as itself
            src.depth += 1
            src.hit("path", table)
            src.depth -= 1
        else:
            src.emit("    pass")
        src.emit("else:")
        src.depth += 1
        opened += 1
        if k in depths:
            src.hit("path[:e]", table)
    # a path with more '/' than the deepest directory: neither its longer prefixes nor itself can be keys
    src.depth -= opened


def _suffixes(src: _Source, index: RuleIndex) -> None:
    """One probe per distinct suffix length, behind one test of the suffixes' common ending (`.tmp` of
    `/x1.tmp`, `/x22.tmp`): a path without it ends with none of them."""
    table = src.bind(_pairs(index.by_suffix), "_suffix")
    common = os.path.commonprefix([key[::-1] for key in index.by_suffix])[::-1]
    if common:
        src.emit(f"if path.endswith({src.bind(common, '_ending')}):")
        src.depth += 1
    for length in index.suffix_lengths:
        src.hit(f"path[-{_int(length)}:]", table)
    if common:
        src.depth -= 1


def _arguments(src: _Source, index: RuleIndex) -> None:
    for field, equal, odd, absent, numeric, above, below in index.arg_tables:
        name = src.bind(field, "_field")
        ints = {value: rules for (kind, value), rules in equal.items() if kind is int}
        strings = {value: rules for (kind, value), rules in equal.items() if kind is str}
        src.emit(f"if {name} in args:")
        src.depth += 1
        src.emit(f"v = args[{name}]")
        src.emit("t = type(v)")
        src.emit("if t is int:")
        src.depth += 1
        if ints:
            src.hit("v", src.bind(_pairs(ints), "_ints"))
        if above is not None:  # rules whose lower bound is <= v: none below the lowest bound
            bounds, rules = src.bind(above[0], "_above"), src.bind(above[1], "_aboverules")
            src.emit(f"if v >= {src.bind(above[0][0], '_lowest')}:")
            src.emit(f"    h.append(_in_order({rules}[:_bisect({bounds}, v)]))")
        if below is not None:  # rules whose (exclusive) upper bound is > v: none from the highest bound on
            bounds, rules = src.bind(below[0], "_below"), src.bind(below[1], "_belowrules")
            src.emit(f"if v < {src.bind(below[0][-1], '_highest')}:")
            src.emit(f"    h.append(_in_order({rules}[_bisect({bounds}, v):]))")
        if not ints and above is None and below is None:
            src.emit("pass")
        src.depth -= 1
        src.emit("elif t is str:")
        src.depth += 1
        if strings:
            src.hit("v", src.bind(_pairs(strings), "_strings"))
        if numeric:  # `"a" < 3` is an error, not false: rules bounding the field are candidates
            src.emit(f"h.append({src.bind(split(numeric), '_numeric')})")
        if not strings and not numeric:
            src.emit("pass")
        src.depth -= 1
        src.emit("else:")
        src.emit(f"    h.append({src.bind(split(odd), '_odd')})")
        src.depth -= 1
        if absent:
            src.emit("else:")
            src.emit(f"    h.append({src.bind(split(absent), '_absent')})")


@lru_cache(maxsize=1024)
def _compile(source: str) -> CodeType:
    """Indexes of one shape (the same probes, the tables differing) have one source: compiled once."""
    return compile(source, "<rule index>", "exec")


def generate(index: RuleIndex, unroll: int = MAX_UNROLLED_DEPTH) -> Selector:
    """The index's selector: request -> (deny rules, allow rules) that may match, each in policy order.
    `unroll`: directories up to this depth are probed by straight-line code, deeper ones by a loop."""
    src = _Source()
    src.emit(f"h = [{src.bind(split(index.always), '_always')}]" if index.always else "h = []")
    if index.by_directory or index.by_suffix:
        src.emit("path = r.path")
    _directories(src, index, unroll)
    if index.by_library:
        src.hit("r.library", src.bind(_pairs(index.by_library), "_library"))
    if index.by_suffix:
        _suffixes(src, index)
    if index.arg_tables:
        src.emit("args = r.args")
        _arguments(src, index)
    src.emit("if not h:")
    src.emit("    return _EMPTY")
    src.emit("if len(h) == 1:")
    src.emit("    return h[0]")
    src.emit("return _merge(h)")
    code = _compile("def _select(r):\n" + "\n".join(src.lines) + "\n")
    exec(code, src.namespace)  # noqa: S102 - our own source: policy text is bound in the namespace, never pasted
    selector: Selector = src.namespace["_select"]
    return selector
