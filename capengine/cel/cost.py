"""What evaluating an expression costs: one model shared by the static estimator and the run-time meter.

A guest chooses the sizes of the values a condition reads (a 1 MiB `args.data`), so counting loop steps alone
lets one evaluation scan megabytes thousands of times (`list.exists(w, args.data.indexOf(w) >= 0)`). Cost is
counted in *units* of work instead, calibrated on this implementation (about one microsecond each):

- every function call and every comprehension step costs 1;
- a call that reads strings or bytes costs 1 more per KiB of its string arguments (scanning, comparing,
  copying); regular expressions cost REGEX_FACTOR times that (RE2 is linear, but slower per byte);
- a call that reads a list or map costs 1 per element (`x in list`, `l1 + l2`, `==`), except the O(1) ones
  (`size`, `type`, `dyn`, `key in map`).

`estimate` walks a checked AST with upper bounds on the sizes of the variables (like Kubernetes' CEL cost
estimator) and returns the worst case: a policy whose worst case exceeds the budget is refused at load time,
with its estimate. `charge` counts the same units at run time from the real values, for programs whose bound
is not proven (they read guest-sized values or loop), so an evaluation fails closed after a bounded amount
of work whatever the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import attrs

from capengine.cel import ast
from capengine.cel.types import Type
from capengine.cel.values import CelError, Value

# Functions whose work, when one operand is a literal, is bounded by that literal whatever the size of the
# other: equality and ordering stop at the shorter operand (or at a length or type mismatch), prefix and
# suffix tests read as much of the value as the literal is long, and `x in [literals]` does one such
# equality per item. Reading a guest-sized field only to compare it with a literal is therefore not
# guest-sized work.
LITERAL_BOUNDED = frozenset({"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "startsWith", "endsWith"})

BUDGET = 100_000
"""Units one evaluation may spend (about 0.1 s): the static limit for a condition's worst case, and the
run-time budget of a metered evaluation."""

REGEX_FACTOR = 4
REGEX_FUNCTIONS = frozenset({"matches"})
BUDGET_KEY = "\0budget"  # where a metered evaluation's budget rides in the activation: not a CEL identifier,
# so no expression can read or shadow it
FREE_FUNCTIONS = frozenset({"size", "type", "dyn"})
# The optionals extension: each call is O(1) (no copy, no scan); the bound of an optional is its value's.
OPTIONAL_FUNCTIONS = frozenset({ast.OPT_SELECT, ast.OPT_INDEX, "optional.of", "optional.ofNonZeroValue",
                                "optional.none", "value", "hasValue", "or", "orValue"})
TEXT_SHIFT = 10  # one unit per KiB of string


@attrs.frozen
class Bound:
    """Upper bound on a value's size: characters of a string or bytes, elements of a list or map, 0 for a
    scalar. `elem` bounds each element (list) or value (map); None when not tracked, which reading an
    element treats as "as large as an unknown value"."""

    size: int
    elem: Bound | None = None
    guessed: bool = False  # the size is the unknown-value default, not a proven bound


SCALAR = Bound(0)


@attrs.frozen
class Estimate:
    cost: int  # worst-case units
    bounded: bool  # False when some size came from the unknown-value default (guest-sized input)


def call_cost(function: str, args: Sequence[tuple[str, int]]) -> int:
    """Units for one call given (kind, size) per argument; kind is "text", "items", "map" or "scalar"."""
    if function in FREE_FUNCTIONS:
        return 1
    text = items = 0
    for kind, size in args:
        if kind == "text":
            text += size
        elif kind == "items" or (kind == "map" and function != "@in"):
            items += size
    factor = REGEX_FACTOR if function in REGEX_FUNCTIONS else 1
    return 1 + ((factor * text) >> TEXT_SHIFT) + items


def value_kind(value: Value) -> tuple[str, int]:
    t = type(value)
    if t is str or t is bytes:
        return "text", len(value)  # type: ignore[arg-type]
    if t is list or t is tuple:
        return "items", len(value)  # type: ignore[arg-type]
    if t is dict or t is MappingProxyType:
        return "map", len(value)  # type: ignore[arg-type]
    return "scalar", 0


class BudgetExceeded(CelError):
    """The run-time budget is spent. Unlike other CEL errors, `||`, `&&` and the macros never absorb it: the
    whole evaluation fails (closed)."""


def charge(meter: list[int], units: int) -> None:
    """Spend `units` of a run-time budget; fail closed (BudgetExceeded) once it is exhausted."""
    meter[0] -= units
    if meter[0] < 0:
        raise BudgetExceeded(f"evaluation cost budget of {BUDGET} units exceeded (too much work for one condition; "
                       "bound the sizes it reads or simplify it)")


def charge_call(meter: list[int], function: str, values: Sequence[Value]) -> None:
    charge(meter, call_cost(function, [value_kind(v) for v in values]))


def _kind(t: Type) -> str:
    if t.name in ("string", "bytes"):
        return "text"
    if t.name == "list":
        return "items"
    if t.name == "map":
        return "map"
    if t.name == "dyn" or t.is_param:
        return "text"  # a guest-sized value of unknown type: charged as a string of its size
    return "scalar"


class CostEstimator:
    """Worst-case cost of a checked AST, from size bounds of the declared variables."""

    def __init__(self, node_types: Mapping[int, Type], variables: Mapping[str, Bound], unknown: Bound) -> None:
        self.node_types = node_types
        self.variables = variables
        self.unknown = unknown
        self.bounded = True

    def estimate(self, node: ast.Node) -> Estimate:
        cost, _ = self.visit(node, {})
        return Estimate(cost, self.bounded)

    def type_of(self, node: ast.Node) -> Type:
        return self.node_types.get(id(node), Type("dyn"))

    def elem(self, bound: Bound) -> Bound:
        """An element's bound; the unknown-value default, marked guessed, where nothing bounds it. Reading
        such an element costs nothing size-dependent by itself: the estimate is unbounded only when some
        work depends on the guessed size (see `consume`)."""
        if bound.elem is None or bound.guessed:
            return attrs.evolve(self.unknown, guessed=True)
        return bound.elem

    def consume(self, bound: Bound) -> None:
        """Some work depends on this size: if it is only guessed, the estimate proves nothing."""
        if bound.guessed:
            self.bounded = False

    def visit(self, node: ast.Node, scope: Mapping[str, Bound]) -> tuple[int, Bound]:
        if isinstance(node, ast.Literal):
            return 1, Bound(value_kind(node.value)[1])
        if isinstance(node, ast.Ident):
            if node.name in scope:
                return 1, scope[node.name]
            if node.name in self.variables:
                return 1, self.variables[node.name]
            return 1, SCALAR  # a type name used as a value
        if isinstance(node, ast.Select):
            qualified = ast.qualified_name(node)
            if qualified is not None and qualified in self.variables and qualified.split(".")[0] not in scope:
                return 1, self.variables[qualified]
            cost, operand = self.visit(node.operand, scope)
            return cost + 1, SCALAR if node.test_only else self.elem(operand)
        if isinstance(node, ast.Index):
            c1, operand = self.visit(node.operand, scope)
            c2, _ = self.visit(node.index, scope)
            return c1 + c2 + 1, self.elem(operand)
        if isinstance(node, ast.CreateList):
            return self._aggregate([self.visit(i, scope) for i in node.items])
        if isinstance(node, ast.CreateMap):
            keys = [self.visit(k, scope) for k, _ in node.entries]
            values = [self.visit(v, scope) for _, v in node.entries]
            cost, bound = self._aggregate(values)
            return cost + sum(c for c, _ in keys), bound
        if isinstance(node, ast.Conditional):
            c0, _ = self.visit(node.cond, scope)
            c1, b1 = self.visit(node.then, scope)
            c2, b2 = self.visit(node.otherwise, scope)
            return c0 + max(c1, c2), _max(b1, b2)
        if isinstance(node, ast.Bind):
            c1, b1 = self.visit(node.init, scope)
            c2, b2 = self.visit(node.body, {**scope, node.var: b1})
            return c1 + c2, b2
        if isinstance(node, ast.Comprehension):
            return self._comprehension(node, scope)
        return self._call(node, scope)

    def _aggregate(self, items: list[tuple[int, Bound]]) -> tuple[int, Bound]:
        elem = SCALAR
        for _, b in items:
            elem = _max(elem, b)
        return 1 + len(items) + sum(c for c, _ in items), Bound(len(items), elem)

    def _comprehension(self, node: ast.Comprehension, scope: Mapping[str, Bound]) -> tuple[int, Bound]:
        range_cost, rng = self.visit(node.range, scope)
        self.consume(rng)
        n = rng.size
        elem = self.elem(rng)
        inner = dict(scope)
        if node.var2 is None:
            inner[node.var] = elem if self.type_of(node.range).name != "map" else self.unknown_key()
        else:
            inner[node.var] = SCALAR if self.type_of(node.range).name == "list" else self.unknown_key()
            inner[node.var2] = elem
        guard_cost = self.visit(node.guard, inner)[0] if node.guard is not None else 0
        body_cost, body = self.visit(node.body, inner)
        cost = range_cost + n * (1 + guard_cost + body_cost)
        if node.kind in ("all", "exists", "exists_one"):
            return cost, SCALAR
        if node.kind == "filter":
            return cost, Bound(n, elem)
        return cost, Bound(n, body)

    def unknown_key(self) -> Bound:
        return attrs.evolve(self.unknown, guessed=True)

    def _call(self, node: ast.Call, scope: Mapping[str, Bound]) -> tuple[int, Bound]:
        arg_nodes = _arg_nodes(node)
        visited = [self.visit(a, scope) for a in arg_nodes]
        cost = sum(c for c, _ in visited)
        if node.function in ("_&&_", "_||_", "!_"):
            return cost + 1, SCALAR
        if node.function in OPTIONAL_FUNCTIONS:  # O(1); an optional is bounded as the value it may hold
            return cost + 1, self._optional_result(node.function, [b for _, b in visited])
        literal = _literal_operand(node, arg_nodes)
        if literal is not None:  # bounded by the literal (LITERAL_BOUNDED): the other operand's size is moot
            return cost + call_cost(node.function, [("text", literal)]), SCALAR
        if node.function not in FREE_FUNCTIONS:
            for _, bound in visited:
                self.consume(bound)
        sizes = [(_kind(self.type_of(a)), b.size) for a, (_, b) in zip(arg_nodes, visited)]
        cost += call_cost(node.function, sizes)
        return cost, self._result(node, [b for _, b in visited])

    def _optional_result(self, function: str, args: list[Bound]) -> Bound:
        if function in (ast.OPT_SELECT, ast.OPT_INDEX):
            return self.elem(args[0])
        if function in ("hasValue", "optional.none"):
            return SCALAR
        bound = args[0]
        for b in args[1:]:  # or / orValue: either the optional's value or the argument
            bound = _max(bound, b)
        return bound

    def _result(self, node: ast.Call, args: list[Bound]) -> Bound:
        """Size bound of a call's result: functions that build strings or lists from their inputs."""
        result = self.type_of(node)
        if _kind(result) == "scalar":
            return SCALAR
        fn = node.function
        if fn == "string" or not args:
            return Bound(max([32] + [a.size for a in args]), SCALAR)
        first = args[0]
        if fn == "split":
            return Bound(first.size + 1, Bound(first.size, SCALAR))
        if fn == "replace" and len(args) >= 3:
            return Bound(first.size + (first.size + 1) * args[2].size, SCALAR)
        if fn in ("substring", "trim", "lowerAscii", "upperAscii", "reverse", "charAt"):
            return Bound(first.size, SCALAR)
        if fn == "strings.quote":
            return Bound(2 + 10 * first.size, SCALAR)
        if fn in ("join", "format"):  # the elements (each as large as its bound) plus separators/template
            total = 0
            for a, a_node in zip(args, _arg_nodes(node)):
                kind = _kind(self.type_of(a_node))
                total += a.size * (1 + self.elem(a).size + 32) if kind == "items" else a.size
            return Bound(total, SCALAR)
        total = sum(a.size for a in args)  # concatenation and everything else: no larger than its inputs
        elem = SCALAR
        for a in args:
            if a.elem is not None:
                elem = _max(elem, a.elem)
        return Bound(total, elem)


def _literal_size(node: ast.Node) -> int | None:
    """Size of a literal operand (a literal list counts its items' sizes), or None if not a literal."""
    if isinstance(node, ast.Literal):
        return value_kind(node.value)[1]
    if isinstance(node, ast.CreateList) and all(isinstance(i, ast.Literal) for i in node.items):
        return sum(value_kind(i.value)[1] + 1 for i in node.items if isinstance(i, ast.Literal))
    return None


def _literal_operand(node: ast.Call, args: tuple[ast.Node, ...]) -> int | None:
    """The size that bounds a call's work when that bound comes from a literal operand, else None."""
    if len(args) != 2:
        return None
    if node.function == "@in":
        return _literal_size(args[1]) if isinstance(args[1], ast.CreateList) else None
    if node.function not in LITERAL_BOUNDED:
        return None
    sizes = [s for s in map(_literal_size, args) if s is not None]
    return min(sizes) if sizes else None


def _arg_nodes(node: ast.Call) -> tuple[ast.Node, ...]:
    return ((node.target,) if node.target is not None else ()) + node.args


def _max(a: Bound, b: Bound) -> Bound:
    elem = a.elem if b.elem is None else b.elem if a.elem is None else _max(a.elem, b.elem)
    return Bound(max(a.size, b.size), elem, a.guessed or b.guessed)


def estimate(node: ast.Node, node_types: Mapping[int, Type], variables: Mapping[str, Bound],
             unknown: Bound) -> Estimate:
    return CostEstimator(node_types, variables, unknown).estimate(node)
