"""CEL AST -> Python closures.

Each node becomes a function of the activation (a dict of variable values). Closures are built once per
policy revision and share no mutable state, so evaluation is thread-safe and has no process-wide side
effects (unlike cel-python's runners). CEL semantics kept here rather than borrowed from Python:
errors are exceptions that `&&`/`||` and the quantifiers absorb commutatively; overloads are chosen by CEL
type, statically where the checker proved the types and at run time otherwise; literal regexes, globs and
`under` directories are validated and compiled at load time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, cast

import attrs

from capengine.cel import ast, codegen, cost, optionals
from capengine.cel.ast import qualified_name
from capengine.cel.checker import CheckError, CheckResult, check
from capengine.cel.environment import DispatchTable, Environment, Impl, resolve_runtime
from capengine.cel.types import BOOL, DYN, STRING, TYPE_IDENTS, Type
from capengine.cel.values import (
    MAP_TYPES,
    Activation,
    CelError,
    CelType,
    OptionalValue,
    UInt,
    Value,
    make_map,
    map_lookup,
    type_name,
)
from capengine.errors import CapengineError

Fn = Callable[[Activation], Value]
Scope = frozenset[str]
BUDGET_KEY = cost.BUDGET_KEY


class CompileError(CapengineError):
    def __init__(self, message: str, pos: ast.Pos) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


@attrs.frozen
class Program:
    """A compiled expression. `evaluate` returns a CEL value or raises CelError (never anything else)."""

    source: str
    type: Type
    fn: Fn
    arg_fields: frozenset[str] | None = frozenset()  # what it reads of `args`; None: possibly everything
    # Work is counted at run time (cost.BUDGET units) unless the static estimate proved the worst case
    # within budget from bounded inputs: guest-sized values must not let a policy burn the host's CPU.
    metered: bool = False
    cost: int | None = None  # static worst-case estimate in cost units; None when not estimated
    node: ast.Node | None = attrs.field(default=None, eq=False, repr=False)  # the AST, for analyses and indexes
    # codegen.py's function for the whole condition (same contract as evaluate_closures), preferred when set
    generated: Fn | None = attrs.field(default=None, eq=False, repr=False)
    evaluate: Fn = attrs.field(init=False, eq=False, repr=False)
    """Evaluate against an activation: the generated function itself when there is one (no wrapper call)."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "evaluate", self.generated or self.evaluate_closures)

    def evaluate_closures(self, activation: Activation) -> Value:
        if self.metered:
            activation = {**activation, BUDGET_KEY: [cost.BUDGET]}
        try:
            return self.fn(activation)
        except CelError:
            raise
        except RecursionError:
            raise CelError("expression evaluation nested too deeply") from None
        except Exception as exc:  # a Python-level failure inside a function is a CEL error, never a crash
            raise CelError(f"{type(exc).__name__}: {exc}") from None


class CostLimitError(CompileError):
    """The expression's estimated worst-case cost exceeds the limit (see cost.py)."""

    def __init__(self, message: str, pos: ast.Pos, estimate: int) -> None:
        super().__init__(message, pos)
        self.estimate = estimate


CompileProblem = ast.CelSyntaxError | CheckError | CompileError


@attrs.frozen
class CostModel:
    """Size bounds of the declared variables for the static cost estimate (see cost.py), and the limit."""

    variables: Mapping[str, cost.Bound] = attrs.field(converter=lambda v: MappingProxyType(dict(v)))
    unknown: cost.Bound  # any value whose size nothing bounds (a guest-sized field of a dyn map)
    limit: int | None = cost.BUDGET  # None: estimate, but never refuse (run-time metering still applies)


def compile_expression(source: str, decls: dict[str, Type] | None, env: Environment,
                       total: bool = False, costs: CostModel | None = None, generate: bool = True
                       ) -> tuple[Program | None, list[CompileProblem]]:
    """Parse, check (unless decls is None) and compile against the functions of `env`. Returns (program,
    errors); errors carry positions.

    `total`: every activation will hold every declared variable (policy requests always do). That lets
    comparisons of string variables with literals, and `&&`/`||`/`!` over them, compile to plain Python
    operators: they cannot fail, so CEL's error-absorbing logic has nothing to do.

    `costs`: estimate the worst-case cost (needs `decls`); an expression over the limit is a CompileError.
    Without an estimate, or when it is unbounded, the program is metered at run time.

    `generate`: evaluate through one generated Python function (codegen.py) where the program allows it;
    False keeps the closures only (the differential tests compare the two).

    Errors are CelSyntaxError, cel_checker.CheckError or CompileError, all with a position in `source`.
    """
    try:
        node = ast.parse(source, env.namespaced)
    except ast.CelSyntaxError as exc:
        return None, [exc]
    return compile_tree(source, node, decls, env, total, costs, generate)


def compile_tree(source: str, node: ast.Node, decls: dict[str, Type] | None, env: Environment,
                 total: bool = False, costs: CostModel | None = None, generate: bool = True
                 ) -> tuple[Program | None, list[CompileProblem]]:
    """compile_expression of `source` already parsed to `node` (e.g. a tree that came from another process)."""
    checked = check(node, decls, env) if decls is not None else None
    if checked is not None and checked.errors:
        return None, list(checked.errors)
    estimate = None
    if checked is not None and costs is not None:
        estimate = cost.estimate(node, checked.node_types, costs.variables, costs.unknown)
        if costs.limit is not None and estimate.cost > costs.limit:
            return None, [CostLimitError(
                f"worst-case cost {estimate.cost:,} units exceeds the budget of {costs.limit:,} (sizes the "
                "guest controls make this condition too expensive: avoid scanning large values inside "
                "loops, or bound what it reads)", node.pos, estimate.cost)]
    metered = estimate is None or not estimate.bounded or estimate.cost > cost.BUDGET
    compiler = _Compiler(env, checked, total and checked is not None, metered)
    try:
        fn = compiler.compile(node, frozenset())
        generated = codegen.generate(node, compiler) if generate else None
    except CompileError as exc:
        return None, [exc]
    return Program(source, checked.type if checked else DYN, fn, ast.referenced_fields(node, "args"),
                   metered, estimate.cost if estimate else None, node,
                   generated.fn if generated is not None else None), []


def _const(value: Value) -> Fn:
    return lambda a: value


def _raise(message: str) -> Fn:
    def fail(a: Activation) -> Value:
        raise CelError(message)

    return fail


# no typing.cast in these closures: it is a real call on the hot path
_STRING_TESTS: dict[str, Callable[[Any, str], bool]] = {
    "startsWith": str.startswith, "endsWith": str.endswith, "contains": str.__contains__}


class _Compiler:
    def __init__(self, env: Environment, checked: CheckResult | None, total: bool = False,
                 metered: bool = True) -> None:
        self.env = env
        self.checked = checked
        self.total = total
        self.metered = metered

    def static_type(self, node: ast.Node) -> Type:
        if self.checked is None:
            return DYN
        return self.checked.node_types.get(id(node), DYN)

    def compile(self, node: ast.Node, scope: Scope) -> Fn:
        if self.total:
            fast = self._infallible(node, scope)
            if fast is not None:
                return fast
        compiled: Fn = getattr(self, "_" + type(node).__name__)(node, scope)
        return compiled

    def _declared_map(self, node: ast.Node, scope: Scope) -> bool:
        """A declared map variable (`args`), present in every activation when `total`."""
        return self.total and isinstance(node, ast.Ident) and node.name not in scope \
            and self.static_type(node).name == "map"

    def _string_var(self, node: ast.Node, scope: Scope) -> str | None:
        """The name of a declared string variable (always present when `total`), else None."""
        if isinstance(node, ast.Ident) and node.name not in scope and self.static_type(node) == Type("string"):
            return node.name
        return None

    def _infallible(self, node: ast.Node, scope: Scope) -> Fn | None:
        """A closure for boolean expressions that cannot raise: string variable vs string literal tests, and
        `&&`, `||`, `!` over them. None when the node is anything else (then the general path compiles it)."""
        if isinstance(node, ast.Literal) and type(node.value) is bool:
            return _const(node.value)
        if isinstance(node, ast.Select) and node.test_only and self._declared_map(node.operand, scope):
            variable, field = cast(ast.Ident, node.operand).name, node.field
            return lambda a: field in cast(Mapping[str, Value], a[variable])
        if not isinstance(node, ast.Call):
            return None
        fn, args = node.function, node.args
        if fn in ("_&&_", "_||_"):
            left, right = (self._infallible(x, scope) for x in args)
            if left is None or right is None:
                return None
            return (lambda a: left(a) or right(a)) if fn == "_||_" else (lambda a: left(a) and right(a))
        if fn == "!_":
            inner = self._infallible(args[0], scope)
            return None if inner is None else (lambda a: not inner(a))
        if fn in ("_==_", "_!=_") and len(args) == 2:
            var, lit = args if isinstance(args[1], ast.Literal) else args[::-1]
            var_name = self._string_var(var, scope)
            if var_name is None or not isinstance(lit, ast.Literal) or type(lit.value) is not str:
                return None
            value = lit.value
            return (lambda a: a[var_name] == value) if fn == "_==_" else (lambda a: a[var_name] != value)
        if node.target is None or len(args) != 1 or not isinstance(args[0], ast.Literal) \
                or not isinstance(args[0].value, str):
            return None
        name, text = self._string_var(node.target, scope), args[0].value
        if name is None:
            return None
        self._validate_literal_arguments(fn, (node.target, *args))  # same load-time errors as the general path
        if fn in _STRING_TESTS:
            test = _STRING_TESTS[fn]
            return lambda a: test(a[name], text)
        for overload in self.env.overloads(fn, True):
            if overload.specialize is not None and overload.params == (STRING, STRING) and overload.result == BOOL:
                return overload.specialize(text, name)
        return None

    def _Literal(self, node: ast.Literal, scope: Scope) -> Fn:
        return _const(node.value)

    def _Ident(self, node: ast.Ident, scope: Scope) -> Fn:
        name = node.name
        if name not in scope and name in TYPE_IDENTS and name != "dyn":
            type_value = CelType(TYPE_IDENTS[name].name)
            return lambda a: a.get(name, type_value)

        def ident(a: Activation) -> Value:
            try:
                return a[name]
            except KeyError:
                raise CelError(f"no such attribute '{name}'") from None

        return ident

    def _Select(self, node: ast.Select, scope: Scope) -> Fn:
        qualified = qualified_name(node)
        if qualified is not None and qualified in TYPE_IDENTS and qualified.split(".")[0] not in scope \
                and not node.test_only:
            type_value = CelType(TYPE_IDENTS[qualified].name)
            return lambda a: a.get(qualified, type_value)
        field = node.field
        if not node.test_only and self._declared_map(node.operand, scope):
            return _declared_map_field(cast(ast.Ident, node.operand).name, field)
        operand = self.compile(node.operand, scope)
        if node.test_only:
            def has(a: Activation) -> Value:
                m = operand(a)
                if isinstance(m, MAP_TYPES):
                    return field in m
                return optionals.has(m, field)

            return has

        def select(a: Activation) -> Value:
            m = operand(a)
            if isinstance(m, MAP_TYPES):
                try:
                    return m[field]
                except KeyError:
                    raise CelError(f"no such key: '{field}'") from None
            if isinstance(m, OptionalValue):  # a field of an optional is an optional
                return optionals.select(m, field)
            raise CelError(f"type '{type_name(m)}' has no field '{field}'")

        if qualified is None or qualified.split(".")[0] in scope:
            return select

        def select_qualified(a: Activation) -> Value:
            if qualified in a:
                return a[qualified]
            return select(a)

        return select_qualified

    def _Index(self, node: ast.Index, scope: Scope) -> Fn:
        operand, index = self.compile(node.operand, scope), self.compile(node.index, scope)

        def get(a: Activation) -> Value:
            container, key = operand(a), index(a)
            if isinstance(container, (list, tuple)):
                tk = type(key)
                if isinstance(key, float) and key.is_integer():
                    key = int(key)
                elif tk is not int and tk is not UInt:
                    raise CelError(f"list index must be int, not {type_name(key)}")
                assert isinstance(key, int)
                if 0 <= key < len(container):
                    return container[key]
                raise CelError(f"index out of range: {key}")
            if isinstance(container, MAP_TYPES):
                found, value = map_lookup(container, key)
                if found:
                    return value
                raise CelError(f"no such key: {key!r}")
            if isinstance(container, OptionalValue):  # an element of an optional is an optional
                return optionals.index(container, key)
            raise CelError(f"type '{type_name(container)}' cannot be indexed")

        return get

    def _CreateList(self, node: ast.CreateList, scope: Scope) -> Fn:
        items = [self.compile(i, scope) for i in node.items]
        if node.optional_indices:
            return _optional_list(items, frozenset(node.optional_indices))
        literals = [i.value for i in node.items if isinstance(i, ast.Literal)]
        if len(literals) == len(node.items):
            return _const(tuple(literals))
        return lambda a: [f(a) for f in items]

    def _CreateMap(self, node: ast.CreateMap, scope: Scope) -> Fn:
        entries = [(self.compile(k, scope), self.compile(v, scope)) for k, v in node.entries]
        if node.optional_indices:
            return _optional_map(entries, frozenset(node.optional_indices))
        return lambda a: make_map([(k(a), v(a)) for k, v in entries])

    def _Conditional(self, node: ast.Conditional, scope: Scope) -> Fn:
        cond, then, otherwise = (self.compile(n, scope) for n in (node.cond, node.then, node.otherwise))

        def conditional(a: Activation) -> Value:
            c = cond(a)
            if c is True:
                return then(a)
            if c is False:
                return otherwise(a)
            raise CelError(f"'?:' condition must be bool, not {type_name(c)}")

        return conditional

    def _Comprehension(self, node: ast.Comprehension, scope: Scope) -> Fn:
        inner = scope | {node.var} | ({node.var2} if node.var2 else set())
        rng = self.compile(node.range, scope)
        body = self.compile(node.body, inner)
        guard = self.compile(node.guard, inner) if node.guard is not None else None
        return _COMPREHENSIONS[node.kind](rng, node.var, node.var2, guard, body)

    def _Bind(self, node: ast.Bind, scope: Scope) -> Fn:
        init, body, var = self.compile(node.init, scope), self.compile(node.body, scope | {node.var}), node.var
        return lambda a: body({**a, var: init(a)})

    def _Call(self, node: ast.Call, scope: Scope) -> Fn:
        fn = node.function
        if fn in ("_&&_", "_||_"):
            sure = self._infallible(node.args[0], scope) if self.total else None
            if sure is not None:  # a left side that cannot fail: CEL's error absorption reduces to and/or
                return _short_circuit(sure, self.compile(node.args[1], scope), fn == "_||_")
            left, right = (self.compile(x, scope) for x in node.args)
            return _logical(left, right, fn == "_||_")
        if not self.metered:
            fast = self._literal_comparison(node, scope)
            if fast is not None:
                return fast
        if fn in (ast.OPT_SELECT, ast.OPT_INDEX):
            container, key = (self.compile(x, scope) for x in node.args)
            if fn == ast.OPT_INDEX:
                return lambda a: optionals.index(container(a), key(a))
            field = cast(str, cast(ast.Literal, node.args[1]).value)  # the parser makes `.?f` a string literal
            return lambda a: optionals.select(container(a), field)
        if fn in optionals.LAZY and node.target is not None and len(node.args) == 1 and self._is_optional_library(fn):
            fast = self._declared_field_or_literal(node, scope)
            if fast is not None:
                return fast
            return _lazy_optional(fn, self.compile(node.target, scope), self.compile(node.args[0], scope))
        if fn == "!_":
            operand = self.compile(node.args[0], scope)

            def negate(a: Activation) -> Value:
                v = operand(a)
                if v is True or v is False:
                    return not v
                raise CelError(f"no such overload for '!' on {type_name(v)}")

            return negate
        receiver = node.target is not None
        arg_nodes: tuple[ast.Node, ...] = ((node.target,) if node.target is not None else ()) + node.args
        args = [self.compile(x, scope) for x in arg_nodes]
        self._validate_literal_arguments(fn, arg_nodes)
        impl = self._static_impl(node, arg_nodes)
        if impl is None:
            table = self.env.dispatch_table(fn, receiver)
            if not table:
                return _raise(f"unknown function '{fn}'")
            return _dynamic_call(table, args, fn if self.metered else None)
        if self.metered and fn not in cost.FREE_FUNCTIONS:
            return _metered_call(impl, args, fn)
        if len(args) == 1:
            (x,) = args
            return lambda a: impl(x(a))
        if len(args) == 2:
            x, y = args
            return lambda a: impl(x(a), y(a))
        return lambda a: impl(*[f(a) for f in args])

    def _declared_field_or_literal(self, node: ast.Call, scope: Scope) -> Fn | None:
        """`args.?f.orValue(literal)` on a declared map (the recommended way to read an optional argument):
        one dict lookup with a default, the same result as the general closures."""
        target, default = node.target, node.args[0]
        if node.function != "orValue" or not isinstance(target, ast.Call) or target.function != ast.OPT_SELECT \
                or not isinstance(default, ast.Literal) or not self._declared_map(target.args[0], scope):
            return None
        variable, field = cast(ast.Ident, target.args[0]).name, cast(ast.Literal, target.args[1]).value
        value = default.value
        return lambda a: cast(Mapping[Value, Value], a[variable]).get(field, value)

    def _is_optional_library(self, fn: str) -> bool:
        """`or`/`orValue` are the optionals library's (not an embedder's function of the same name)."""
        overloads = self.env.overloads(fn, True)
        return bool(overloads) and all(o.impl.__module__ == optionals.__name__ for o in overloads)

    def _literal_comparison(self, node: ast.Call, scope: Scope) -> Fn | None:
        """`args.f <op> literal` (either side), and `args.f in ["a", "b"]`: the shapes policies read optional
        arguments with. A value of the literal's own type is compared with Python's operator; any other
        value goes through CEL's dispatch (cross-type numbers, errors), so semantics are unchanged."""
        fn, args = node.function, node.args
        if node.target is not None or len(args) != 2:
            return None
        if fn == "@in":
            field, items = args
            if not (isinstance(field, ast.Select) and not field.test_only and self._declared_map(field.operand, scope)
                    and isinstance(items, ast.CreateList) and items.items
                    and all(isinstance(i, ast.Literal) and type(i.value) is str for i in items.items)):
                return None
            read = _declared_map_field(cast(ast.Ident, field.operand).name, field.field)
            choices = frozenset(cast(ast.Literal, i).value for i in items.items)
            return lambda a: type(v := read(a)) is str and v in choices  # CEL: no other type equals a string
        if fn not in _COMPARISONS:
            return None
        flipped = isinstance(args[0], ast.Literal)
        field, literal = (args[1], args[0]) if flipped else (args[0], args[1])
        if not (isinstance(field, ast.Select) and not field.test_only and self._declared_map(field.operand, scope)
                and isinstance(literal, ast.Literal) and type(literal.value) in (int, str)):
            return None
        read = _declared_map_field(cast(ast.Ident, field.operand).name, field.field)
        value, kind, op = literal.value, type(literal.value), _COMPARISONS[fn]
        table = self.env.dispatch_table(fn, False)

        def general(v: Value) -> Value:
            pair = (value, v) if flipped else (v, value)
            result: Value = resolve_runtime(table, pair)(*pair)
            return result

        if flipped:
            return lambda a: op(value, v) if type(v := read(a)) is kind else general(v)
        return lambda a: op(v, value) if type(v := read(a)) is kind else general(v)

    def _static_impl(self, node: ast.Call, arg_nodes: tuple[ast.Node, ...]) -> Impl | None:
        """The single overload the checker proved applies, when every argument type is concrete."""
        if self.checked is None:
            return None
        matched = self.checked.overloads.get(id(node), [])
        if len(matched) != 1:
            return None
        if any(_has_dyn(self.static_type(n)) for n in arg_nodes):
            return None
        return matched[0].impl

    def _validate_literal_arguments(self, fn: str, arg_nodes: tuple[ast.Node, ...]) -> None:
        """Literal arguments that can never work (a malformed regex, glob or directory) fail the load instead
        of failing (closed) on every call: each overload may check its literal at compile time."""
        if len(arg_nodes) != 2 or not isinstance(arg_nodes[1], ast.Literal) or type(arg_nodes[1].value) is not str:
            return
        literal = arg_nodes[1]
        if not isinstance(literal, ast.Literal) or not isinstance(literal.value, str):
            return
        for overload in self.env.functions.get(fn, ()):
            if overload.check_literal is None or len(overload.params) != 2:
                continue
            try:
                overload.check_literal(literal.value)
            except CelError as exc:
                raise CompileError(str(exc), literal.pos) from None
            return


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "_==_": operator.eq, "_!=_": operator.ne, "_<_": operator.lt, "_<=_": operator.le, "_>_": operator.gt,
    "_>=_": operator.ge}


def _short_circuit(left: Fn, right: Fn, is_or: bool) -> Fn:
    """`&&`/`||` whose left side cannot fail: it decides alone when it can, else the right side's bool (or
    its error) is the result, exactly as CEL's commutative rules give."""
    def check(v: Value) -> Value:
        if v is True or v is False:
            return v
        raise CelError(f"no such overload for '{'||' if is_or else '&&'}' on non-bool operands")

    if is_or:
        return lambda a: True if left(a) else check(right(a))
    return lambda a: check(right(a)) if left(a) else False


def _lazy_optional(fn: str, target: Fn, argument: Fn) -> Fn:
    """`o.or(p)` / `o.orValue(v)`: the argument is evaluated only when `o` is empty (its error, too)."""
    keep = fn == "or"

    def lazy(a: Activation) -> Value:
        o = target(a)
        if type(o) is not OptionalValue:
            raise CelError(f"no such overload for '{fn}' on {type_name(o)} (it needs an optional)")
        if o.has_value:
            return o if keep else o.value
        other = argument(a)
        if keep and type(other) is not OptionalValue:
            raise CelError(f"no such overload for 'or' with {type_name(other)} (it needs an optional)")
        return other

    return lazy


def _optional_list(items: list[Fn], optional: frozenset[int]) -> Fn:
    """`[a, ?b]`: b's value when it has one, nothing when it is empty."""
    def build(a: Activation) -> Value:
        out: list[Value] = []
        for i, f in enumerate(items):
            v = f(a)
            if i in optional:
                o = optionals.element(v, "a list element")
                if not o.has_value:
                    continue
                v = o.value
            out.append(v)
        return out

    return build


def _optional_map(entries: list[tuple[Fn, Fn]], optional: frozenset[int]) -> Fn:
    """`{k: v, ?k2: o}`: the entry k2 only when o has a value."""
    def build(a: Activation) -> Value:
        pairs: list[tuple[Value, Value]] = []
        for i, (k, f) in enumerate(entries):
            key, v = k(a), f(a)
            if i in optional:
                o = optionals.element(v, "a map entry value")
                if not o.has_value:
                    continue
                v = o.value
            pairs.append((key, v))
        return make_map(pairs)

    return build


def _declared_map_field(variable: str, field: str) -> Fn:
    """`args.size` when `args` is a declared map that every activation holds (`total`): one closure instead
    of three (no qualified-name probe: a total activation holds only the declared variables)."""
    def select(a: Activation) -> Value:
        try:
            return cast(Mapping[str, Value], a[variable])[field]
        except KeyError:
            raise CelError(f"no such key: '{field}'") from None

    return select


def _has_dyn(t: Type) -> bool:
    return t == DYN or t.is_param or any(_has_dyn(p) for p in t.params)


def _dynamic_call(table: DispatchTable, args: list[Fn], metered_as: str | None) -> Fn:
    """A call whose overload depends on run-time types (a `dyn` argument such as `args.size`).

    Overload resolution depends only on the Python types of the values, so the implementation found for a
    combination of types is remembered (an inline cache: a handful of JSON types at most; a failed
    resolution is never remembered and raises every time)."""
    resolved: dict[tuple[type, ...], Impl] = {}
    charge = metered_as is not None and metered_as not in cost.FREE_FUNCTIONS

    def resolve(values: tuple[Value, ...]) -> Impl:
        impl = resolve_runtime(table, values)
        resolved[tuple(map(type, values))] = impl
        return impl

    if len(args) == 2 and not charge:
        x, y = args

        def call2(a: Activation) -> Value:
            u, v = x(a), y(a)
            impl = resolved.get((type(u), type(v))) or resolve((u, v))
            result: Value = impl(u, v)
            return result

        return call2

    def call(a: Activation) -> Value:
        values = tuple(f(a) for f in args)
        if charge:
            meter = a.get(BUDGET_KEY)
            if meter is not None:
                cost.charge_call(cast(list[int], meter), cast(str, metered_as), values)
        impl = resolved.get(tuple(map(type, values))) or resolve(values)
        result: Value = impl(*values)
        return result

    return call


def _metered_call(impl: Impl, args: list[Fn], function: str) -> Fn:
    """A call that first pays for the work its arguments' sizes imply (cost.call_cost)."""
    def call(a: Activation) -> Value:
        values = [f(a) for f in args]
        meter = a.get(BUDGET_KEY)
        if meter is not None:
            cost.charge_call(cast(list[int], meter), function, values)
        result: Value = impl(*values)
        return result

    return call


def _logical(left: Fn, right: Fn, is_or: bool) -> Fn:
    """CEL `&&`/`||`: the deciding value wins from either side; otherwise an error (or non-bool) propagates."""
    decisive = is_or

    def logical(a: Activation) -> Value:
        lv: Value | Exception
        rv: Value | Exception
        try:
            lv = left(a)
        except cost.BudgetExceeded:  # the one error no operand may absorb: the evaluation is over
            raise
        except Exception as exc:  # absorbed if the other side decides
            lv = exc
        if lv is decisive:
            return decisive
        try:
            rv = right(a)
        except cost.BudgetExceeded:
            raise
        except Exception as exc:
            rv = exc
        if rv is decisive:
            return decisive
        if lv is (not decisive) and rv is (not decisive):
            return not decisive
        for v in (lv, rv):
            if isinstance(v, Exception):
                raise v
        raise CelError(f"no such overload for '{'||' if is_or else '&&'}' on non-bool operands")

    return logical


def _iterate(value: Value, two_vars: bool) -> Iterator[tuple[Value, Value]]:
    if isinstance(value, (list, tuple)):
        return enumerate(value) if two_vars else ((v, None) for v in value)
    if isinstance(value, MAP_TYPES):
        return iter(value.items()) if two_vars else ((k, None) for k in value)
    raise CelError(f"cannot iterate over a value of type {type_name(value)}")


Loop = Callable[..., Iterator[tuple[Activation, Value, Value]]]


def _loop(rng: Fn, var: str, var2: str | None) -> Loop:
    """Yield a child activation per element; one dict per comprehension, rebound each step. Each step
    costs one unit of a metered evaluation's budget."""

    def run(a: Activation, source: Value = None) -> Iterator[tuple[Activation, Value, Value]]:
        child = dict(a)
        meter = cast("list[int] | None", a.get(BUDGET_KEY))
        for first, second in _iterate(rng(a) if source is None else source, var2 is not None):
            if meter is not None:
                cost.charge(meter, 1)
            child[var] = first
            if var2 is not None:
                child[var2] = second
            yield child, first, second

    return run


Builder = Callable[[Fn, str, "str | None", "Fn | None", Fn], Fn]


def _quantifier(want: bool) -> Builder:
    def build(rng: Fn, var: str, var2: str | None, guard: Fn | None, body: Fn) -> Fn:
        loop = _loop(rng, var, var2)

        def quantify(a: Activation) -> Value:
            error: Exception | None = None
            for child, _, _ in loop(a):
                try:
                    v = body(child)
                except cost.BudgetExceeded:
                    raise
                except Exception as exc:
                    error = exc
                    continue
                if v is want:
                    return want
                if v is not (not want):
                    error = CelError(f"predicate returned {type_name(v)}, not bool")
            if error is not None:
                raise error
            return not want

        return quantify

    return build


def _exists_one(rng: Fn, var: str, var2: str | None, guard: Fn | None, body: Fn) -> Fn:
    loop = _loop(rng, var, var2)

    def exists_one(a: Activation) -> Value:
        count = 0
        for child, _, _ in loop(a):
            v = body(child)
            if v is True:
                count += 1
            elif v is not False:
                raise CelError(f"predicate returned {type_name(v)}, not bool")
        return count == 1

    return exists_one


def _selected(guard: Fn | None, child: Activation) -> bool:
    if guard is None:
        return True
    v = guard(child)
    if v is True or v is False:
        return v
    raise CelError(f"filter returned {type_name(v)}, not bool")


def _map(rng: Fn, var: str, var2: str | None, guard: Fn | None, body: Fn) -> Fn:
    loop = _loop(rng, var, var2)
    return lambda a: [body(child) for child, _, _ in loop(a) if _selected(guard, child)]


def _filter(rng: Fn, var: str, var2: str | None, guard: Fn | None, body: Fn) -> Fn:
    loop = _loop(rng, var, var2)
    return lambda a: [first for child, first, _ in loop(a) if _selected(body, child)]


def _transform_map(rng: Fn, var: str, var2: str | None, guard: Fn | None, body: Fn) -> Fn:
    loop = _loop(rng, var, var2)

    def transform(a: Activation) -> Value:
        source = rng(a)
        if not isinstance(source, MAP_TYPES):
            raise CelError("transformMap() needs a map")
        return {first: body(child) for child, first, _ in loop(a, source) if _selected(guard, child)}

    return transform


_COMPREHENSIONS: dict[str, Builder] = {
    "all": _quantifier(False), "exists": _quantifier(True), "exists_one": _exists_one,
    "map": _map, "filter": _filter, "transformList": _map, "transformMap": _transform_map,
}
