"""Checked CEL AST -> the Python source of one function per condition, compiled once per policy revision.

The closure compiler (compiler.py) costs one Python call per AST node; a policy condition such as
`args.size < 1000` then runs at several times a hand-written lambda. Here the same tree becomes straight-line
Python (local temporaries, `try`/`if` blocks for CEL's error-absorbing `&&`/`||`), so a condition costs about
one call plus the work itself.

Semantics are the closure compiler's, node for node: every construct generated here mirrors the closure the
compiler would build for that node (the same fast paths under the same conditions, the same implementation
objects, the same operand order, the same error messages), and anything not mirrored — a node kind, a
function, a node shape this module does not know (optional values and whatever else the grammar grows) — is
compiled by the closure compiler and called from the generated code. So generated and closure evaluation can
only agree; the differential tests check it on generated expressions.

Policy files are hostile input: no text from a policy is ever pasted into the generated source. Literals and
names are bound in the function's namespace under generated names (`_k3`); only bools, None, identifier-shaped
dictionary keys and sizes computed here are written as Python literals, via repr() after checking their type. The
namespace's builtins are limited to the handful the generated code uses.

Programs on total activations (policy requests, which always hold every declared variable) are generated.
A metered program (its cost not proven within budget, see cost.py) charges its budget exactly where its
closures would: the budget is a local list, put into the activation only when a closure-compiled subtree
(a comprehension, say) needs to charge it too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import CodeType
from typing import TYPE_CHECKING, Any

import attrs

from capengine.cel import ast, cost
from capengine.cel.environment import DispatchTable, Impl, resolve_runtime
from capengine.cel.standard import STANDARD, searcher
from capengine.cel.types import TYPE_IDENTS
from capengine.cel.values import Activation, CelError, CelType, UInt, Value, type_name

if TYPE_CHECKING:
    from capengine.cel.compiler import _Compiler

Fn = Callable[[Activation], Value]

# Node shapes this module mirrors: a node whose attrs fields differ (a grammar that grew a flag, such as an
# optional `.?` select) is left to the closure compiler rather than misread.
_KNOWN_FIELDS: dict[type, frozenset[str]] = {
    ast.Literal: frozenset({"value", "pos"}),
    ast.Ident: frozenset({"name", "pos"}),
    ast.Select: frozenset({"operand", "field", "pos", "test_only"}),
    ast.Call: frozenset({"function", "target", "args", "pos"}),
    ast.CreateList: frozenset({"items", "pos"}),
    ast.Conditional: frozenset({"cond", "then", "otherwise", "pos"}),
}
# Functions whose compilation in compiler.py is the generic one (static overload or run-time dispatch) plus the
# special cases mirrored below. Any other function (one added to the library later, which compiler.py might
# treat specially) is compiled by the closure compiler.
_GENERATED_FUNCTIONS = frozenset({
    "_&&_", "_||_", "!_", "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "@in", "_+_", "_-_", "_*_", "_/_", "_%_",
    "-_", "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bytes",
    "bool", "under", "glob", "lowerAscii", "upperAscii", "trim",
})
_COMPARISON_OPS = {"_==_": "==", "_!=_": "!=", "_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">="}
_STRING_METHODS = {"startsWith": "startswith", "endsWith": "endswith"}
# cost.value_kind: a str is text (its length counts), these are scalars (they count nothing)
_CHARGE_TYPES = {"string": "str", "int": "int", "uint": "_UInt", "double": "float", "bool": "bool"}
_SCALARS = (int, float, bool, type(None), UInt)
_PY_TYPES: dict[str, type] = {"string": str, "int": int, "double": float, "bool": bool, "bytes": bytes}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATOM = re.compile(r"t[0-9]+|_[a-z]+[0-9]+|True|False|None|\(-?[0-9]+\)|[0-9]+")
MAX_BLOCK_DEPTH = 16  # nested try/if levels in the generated source; deeper subtrees call their closure
MAX_SOURCE_CHARS = 200_000  # bigger generated functions are not worth compiling: the closures serve


def _impl_templates() -> dict[int, str]:
    """Implementations of the standard library whose whole body is one Python expression, by identity: a call
    to one of them is written as that expression (the same operation, the same exceptions)."""
    out: dict[int, str] = {}
    for name, op in _COMPARISON_OPS.items():
        for overload in STANDARD.overloads(name, False):
            if len(overload.params) == 2 and overload.params[0] == overload.params[1] and name not in ("_==_", "_!=_"):
                out[id(overload.impl)] = "({0} " + op + " {1})"
    for name, method in _STRING_METHODS.items():
        for overload in STANDARD.overloads(name, True):
            out[id(overload.impl)] = "{0}." + method + "({1})"
    for overload in STANDARD.overloads("contains", True):
        out[id(overload.impl)] = "({1} in {0})"
    for overload in STANDARD.overloads("!_", False):
        out[id(overload.impl)] = "(not {0})"
    out[id(len)] = "len({0})"
    return out


_TEMPLATES = _impl_templates()
_MATCHES = frozenset(id(o.impl) for o in (*STANDARD.overloads("matches", True), *STANDARD.overloads("matches", False)))


@attrs.frozen
class Generated:
    """A generated condition: the function (a complete `Program.evaluate`) and its source, for inspection."""

    fn: Fn
    source: str
    fallbacks: int  # subtrees left to closures


class _Unsupported(Exception):
    """A subtree this module does not generate: the closure compiler's function for it is called instead."""


# run-time helpers the generated code calls on its slow paths ------------------------------------------------

def _logic_error(left: object, right: object, operator: str) -> None:
    for v in (left, right):
        if isinstance(v, Exception):
            raise v
    raise CelError(f"no such overload for '{operator}' on non-bool operands")


def _not_error(v: Value) -> None:
    raise CelError(f"no such overload for '!' on {type_name(v)}")


def _conditional_error(v: Value) -> None:
    raise CelError(f"'?:' condition must be bool, not {type_name(v)}")


def _dispatcher(table: DispatchTable) -> Callable[..., Value]:
    """compiler._dynamic_call without the argument evaluation: resolve by run-time types, remembered."""
    resolved: dict[tuple[type, ...], Impl] = {}

    def call(*values: Value) -> Value:
        impl = resolved.get(tuple(map(type, values)))
        if impl is None:
            impl = resolve_runtime(table, values)
            resolved[tuple(map(type, values))] = impl
        result: Value = impl(*values)
        return result

    return call


def _general_comparison(table: DispatchTable, value: Value, flipped: bool) -> Callable[[Value], Value]:
    """compiler._literal_comparison's slow path: a value not of the literal's type goes through dispatch."""
    def general(v: Value) -> Value:
        pair = (value, v) if flipped else (v, value)
        result: Value = resolve_runtime(table, pair)(*pair)
        return result

    return general


_BUILTINS = {"type": type, "len": len, "str": str, "int": int, "float": float, "bool": bool, "bytes": bytes,
             "Exception": Exception, "KeyError": KeyError, "RecursionError": RecursionError}


class _Generator:
    def __init__(self, compiler: _Compiler) -> None:
        self.compiler = compiler
        self.env = compiler.env
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0
        self.fallbacks = 0
        self.infallible_closures: dict[int, Fn | None] = {}
        self.namespace: dict[str, Any] = {
            "__builtins__": _BUILTINS, "_CelError": CelError, "_BudgetExceeded": cost.BudgetExceeded,
            "_logic_error": _logic_error, "_not_error": _not_error, "_conditional_error": _conditional_error,
            "_charge_call": cost.charge_call, "_charge": cost.charge, "_UInt": UInt, "_BUDGET": cost.BUDGET,
            "_BUDGET_KEY": cost.BUDGET_KEY}

    # emission ------------------------------------------------------------------------------------------

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.emit(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def bind(self, value: object, prefix: str = "_k") -> str:
        """A namespace name for a value: how policy text reaches the generated code (never as source)."""
        name = self.fresh(prefix)
        self.namespace[name] = value
        return name

    def const(self, value: Value) -> str:
        """True/False/None as themselves; every other literal by name, so that conditions of one shape share
        one source text (and one compile(), see _compile) whatever their literals."""
        if value is None or type(value) is bool:
            return repr(value)
        return self.bind(value)

    def key(self, text: str) -> str:
        """A dictionary key: an identifier as a literal (readable, LOAD_CONST), anything else by name."""
        return repr(text) if _IDENTIFIER.fullmatch(text) else self.bind(text)

    def temp(self, expr: str) -> str:
        """`expr` evaluated now, into a local: what keeps CEL's left-to-right operand order when a later
        operand emits statements."""
        if _ATOM.fullmatch(expr):
            return expr
        name = self.fresh("t")
        self.emit(f"{name} = {expr}")
        return name

    def sure(self, node: ast.Node) -> Fn | None:
        """compiler._infallible(node), asked once per node."""
        key = id(node)
        if key not in self.infallible_closures:
            self.infallible_closures[key] = self.compiler._infallible(node, frozenset())
        return self.infallible_closures[key]

    # nodes -----------------------------------------------------------------------------------------------

    def gen(self, node: ast.Node) -> str:
        """A Python expression for `node`, after emitting the statements it needs (at the current depth)."""
        if _KNOWN_FIELDS.get(type(node)) != frozenset(f.name for f in attrs.fields(type(node))):
            return self.fallback(node)
        if self.compiler.total and self.sure(node) is not None:
            return self.infallible(node)
        if self.depth >= MAX_BLOCK_DEPTH:
            return self.fallback(node)
        emitted = len(self.lines)
        try:
            expr: str = getattr(self, "_" + type(node).__name__)(node)
        except _Unsupported:
            del self.lines[emitted:]  # statements for operands of a node left to its closure: never run
            return self.fallback(node)
        return expr

    def fallback(self, node: ast.Node) -> str:
        self.fallbacks += 1
        return f"{self.bind(self.compiler.compile(node, frozenset()), '_f')}(a)"

    def infallible(self, node: ast.Node) -> str:
        """compiler._infallible as one Python expression (it cannot raise on a total activation)."""
        if _KNOWN_FIELDS.get(type(node)) != frozenset(f.name for f in attrs.fields(type(node))):
            return f"{self.bind(self.sure(node), '_s')}(a)"
        if isinstance(node, ast.Literal):
            return repr(bool(node.value))
        if isinstance(node, ast.Select):
            variable = self.key(node.operand.name)  # type: ignore[union-attr]  # _infallible: a declared map
            return f"({self.key(node.field)} in a[{variable}])"
        assert isinstance(node, ast.Call)
        fn, args = node.function, node.args
        if fn in ("_&&_", "_||_"):
            left, right = self.infallible(args[0]), self.infallible(args[1])
            return f"({left} {'or' if fn == '_||_' else 'and'} {right})"
        if fn == "!_":
            return f"(not {self.infallible(args[0])})"
        if fn in ("_==_", "_!=_"):
            var, lit = args if isinstance(args[1], ast.Literal) else args[::-1]
            assert isinstance(var, ast.Ident) and isinstance(lit, ast.Literal)
            return f"(a[{self.key(var.name)}] {'==' if fn == '_==_' else '!='} {self.bind(lit.value)})"
        assert isinstance(node.target, ast.Ident) and isinstance(args[0], ast.Literal)
        subject, text = f"a[{self.key(node.target.name)}]", self.bind(args[0].value)
        if fn in _STRING_METHODS:  # str.startswith(s, p), as compiler._STRING_TESTS calls it
            return f"{self.bind(getattr(str, _STRING_METHODS[fn]), '_m')}({subject}, {text})"
        if fn == "contains":
            return f"{self.bind(str.__contains__, '_m')}({subject}, {text})"
        # a specialised overload (matches, under, glob): its own function of the activation
        return f"{self.bind(self.sure(node), '_s')}(a)"

    def _Literal(self, node: ast.Literal) -> str:
        return self.const(node.value)

    def _Ident(self, node: ast.Ident) -> str:
        name = node.name
        if name in TYPE_IDENTS and name != "dyn":
            return f"a.get({self.key(name)}, {self.bind(CelType(TYPE_IDENTS[name].name))})"
        return self.lookup(f"a[{self.key(name)}]", f"no such attribute '{name}'")  # compiler._Ident's words

    def _Select(self, node: ast.Select) -> str:
        if node.test_only or not self.compiler._declared_map(node.operand, frozenset()):
            raise _Unsupported  # qualified names, general selects: the closures (rare in conditions)
        return self.declared_field(node)

    def declared_field(self, node: ast.Select) -> str:
        """compiler._declared_map_field: `args.size`."""
        variable = node.operand.name  # type: ignore[union-attr]
        return self.lookup(f"a[{self.key(variable)}][{self.key(node.field)}]",
                           f"no such key: '{node.field}'")  # compiler._declared_map_field's words

    def lookup(self, expr: str, message: str) -> str:
        """`expr` (a subscript) into a local; a missing key is the CEL error `message` (bound, never inlined)."""
        out = self.fresh("t")
        with self.block("try:"):
            self.emit(f"{out} = {expr}")
        with self.block("except KeyError:"):
            self.emit(f"raise _CelError({self.bind(message)}) from None")
        return out

    def _CreateList(self, node: ast.CreateList) -> str:
        if not all(isinstance(i, ast.Literal) for i in node.items):
            raise _Unsupported
        return self.bind(tuple(i.value for i in node.items if isinstance(i, ast.Literal)))

    def _Conditional(self, node: ast.Conditional) -> str:
        cond = self.temp(self.gen(node.cond))
        out = self.fresh("t")
        with self.block(f"if {cond} is True:"):
            self.emit(f"{out} = {self.gen(node.then)}")
        with self.block(f"elif {cond} is False:"):
            self.emit(f"{out} = {self.gen(node.otherwise)}")
        with self.block("else:"):
            self.emit(f"_conditional_error({cond})")
        return out

    def _Call(self, node: ast.Call) -> str:
        fn = node.function
        if fn not in _GENERATED_FUNCTIONS:
            raise _Unsupported
        if fn in ("_&&_", "_||_"):
            if self.sure(node.args[0]) is not None:
                return self.short_circuit(node, fn == "_||_")
            return self.logical(node, fn == "_||_")
        if not self.compiler.metered:
            fast = self.literal_comparison(node)
            if fast is not None:
                return fast
        if fn == "!_":
            operand = self.temp(self.gen(node.args[0]))
            return f"((not {operand}) if ({operand} is True or {operand} is False) else _not_error({operand}))"
        arg_nodes = ((node.target,) if node.target is not None else ()) + node.args
        values = [self.temp(self.gen(x)) for x in arg_nodes]
        impl = self.compiler._static_impl(node, arg_nodes)
        table = self.env.dispatch_table(fn, node.target is not None) if impl is None else []
        if impl is None and not table:
            raise _Unsupported
        if self.compiler.metered and fn not in cost.FREE_FUNCTIONS:
            # compiler._metered_call / _dynamic_call: every argument evaluated, then the charge, then the call
            self.charge(fn, arg_nodes, values)
        if impl is not None:
            return self.call(impl, values, arg_nodes)
        return self.dynamic_call(table, arg_nodes, values)

    def charge(self, fn: str, arg_nodes: tuple[ast.Node, ...], values: list[str]) -> None:
        """cost.charge_call(meter, fn, values), computed inline when each argument is a literal or has the
        type its static type (else a literal partner's) suggests, behind exact type tests: the same units, the
        same BudgetExceeded, a tenth of the time. Other types take cost.charge_call itself."""
        general = f"_charge_call(_m, {self.bind(fn)}, ({', '.join(values)},))"
        numeric = any(self.compiler.static_type(n).name in ("int", "uint", "double") for n in arg_nodes)
        tests, lengths, known = [], [], 0
        for node, value in zip(arg_nodes, values):
            if isinstance(node, ast.Literal):
                if type(node.value) is str:
                    known += len(node.value)
                elif type(node.value) not in _SCALARS:
                    self.emit(general)
                    return
                continue
            name = self.compiler.static_type(node).name
            kind = name if name in _CHARGE_TYPES else "int" if numeric else "string"
            tests.append(f"type({value}) is {_CHARGE_TYPES[kind]}")
            if kind == "string":
                lengths.append(f"len({value})")
        factor = cost.REGEX_FACTOR if fn in cost.REGEX_FUNCTIONS else 1
        if lengths:
            units = f"1 + (({factor} * ({' + '.join([*lengths, str(known)])})) >> {cost.TEXT_SHIFT})"
        else:
            units = str(1 + ((factor * known) >> cost.TEXT_SHIFT))
        if not tests:
            self.spend(units)
            return
        with self.block(f"if {' and '.join(tests)}:"):
            self.spend(units)
        with self.block("else:"):
            self.emit(general)

    def spend(self, units: str) -> None:
        self.emit(f"_m[0] -= {units}")
        with self.block("if _m[0] < 0:"):
            self.emit("_charge(_m, 0)")  # spent: raises the budget error, as cost.charge would have

    def call(self, impl: Impl, values: list[str], arg_nodes: tuple[ast.Node, ...]) -> str:
        if id(impl) in _MATCHES and len(arg_nodes) == 2 and isinstance(arg_nodes[1], ast.Literal) \
                and type(arg_nodes[1].value) is str:
            try:  # standard._matches(s, p) is searcher(p)(s): RE2's matcher, looked up once, here
                return f"{self.bind(searcher(arg_nodes[1].value), '_r')}({values[0]})"
            except CelError:
                pass
        template = _TEMPLATES.get(id(impl))
        if template is not None and template.count("{") == len(values):
            return template.format(*values)
        return f"{self.bind(impl, '_i')}({', '.join(values)})"

    def dynamic_call(self, table: DispatchTable, arg_nodes: tuple[ast.Node, ...], values: list[str]) -> str:
        """Run-time dispatch, with the overload for the commonest types (a string literal's partner is a
        string) decided here, behind exact type tests: the implementation dispatch would pick for them."""
        slow = f"{self.bind(_dispatcher(table), '_d')}({', '.join(values)})"
        for runtime_key, _ in table:
            key = [k for k in runtime_key if k is not None and k in _PY_TYPES]
            if len(key) != len(runtime_key) or len(key) != len(values):
                continue
            if not all(self.compiler.static_type(n).name in ("dyn", k) for n, k in zip(arg_nodes, key)):
                continue
            samples = tuple(_PY_TYPES[k]() for k in key)
            try:
                impl = resolve_runtime(table, samples)
            except CelError:
                continue
            tests = [f"type({v}) is {_PY_TYPES[k].__name__}" for v, k, n in zip(values, key, arg_nodes)
                     if not (isinstance(n, ast.Literal) and type(n.value) is _PY_TYPES[k])]
            if not tests:
                return self.call(impl, values, arg_nodes)
            return f"({self.call(impl, values, arg_nodes)} if {' and '.join(tests)} else {slow})"
        return slow

    def literal_comparison(self, node: ast.Call) -> str | None:
        """compiler._literal_comparison: `args.f <op> literal` either way round, `args.f in ["a", "b"]`."""
        fn, args, compiler = node.function, node.args, self.compiler
        if node.target is not None or len(args) != 2:
            return None
        if fn == "@in":
            field, items = args
            if not (isinstance(field, ast.Select) and not field.test_only
                    and compiler._declared_map(field.operand, frozenset())
                    and isinstance(items, ast.CreateList) and items.items
                    and all(isinstance(i, ast.Literal) and type(i.value) is str for i in items.items)):
                return None
            value = self.declared_field(field)
            choices = self.bind(frozenset(i.value for i in items.items if isinstance(i, ast.Literal)))
            return f"(type({value}) is str and {value} in {choices})"
        if fn not in _COMPARISON_OPS:
            return None
        flipped = isinstance(args[0], ast.Literal)
        field, literal = (args[1], args[0]) if flipped else (args[0], args[1])
        if not (isinstance(field, ast.Select) and not field.test_only
                and compiler._declared_map(field.operand, frozenset())
                and isinstance(literal, ast.Literal) and type(literal.value) in (int, str)):
            return None
        value = self.declared_field(field)
        kind = type(literal.value).__name__
        lit = self.const(literal.value)
        general = self.bind(_general_comparison(self.env.dispatch_table(fn, False), literal.value, flipped), "_g")
        fast = f"{lit} {_COMPARISON_OPS[fn]} {value}" if flipped else f"{value} {_COMPARISON_OPS[fn]} {lit}"
        return f"(({fast}) if type({value}) is {kind} else {general}({value}))"

    def short_circuit(self, node: ast.Call, is_or: bool) -> str:
        """compiler._short_circuit: a left side that cannot fail decides alone, else the right side's bool."""
        left = self.infallible(node.args[0])
        out = self.fresh("t")
        message = self.bind(f"no such overload for '{'||' if is_or else '&&'}' on non-bool operands")
        with self.block(f"if {'not ' if not is_or else ''}{left}:"):
            self.emit(f"{out} = {'True' if is_or else 'False'}")
        with self.block("else:"):
            right = self.temp(self.gen(node.args[1]))
            with self.block(f"if not ({right} is True or {right} is False):"):
                self.emit(f"raise _CelError({message})")
            self.emit(f"{out} = {right}")
        return out

    def logical(self, node: ast.Call, is_or: bool) -> str:
        """compiler._logical: either side's deciding value wins; errors are values until then."""
        decisive, operator = ("True", "||") if is_or else ("False", "&&")
        left, right, out = self.fresh("t"), self.fresh("t"), self.fresh("t")
        self.operand(node.args[0], left)
        with self.block(f"if {left} is {decisive}:"):
            self.emit(f"{out} = {decisive}")
        with self.block("else:"):
            self.operand(node.args[1], right)
            with self.block(f"if {right} is {decisive}:"):
                self.emit(f"{out} = {decisive}")
            other = "False" if is_or else "True"
            with self.block(f"elif {left} is {other} and {right} is {other}:"):
                self.emit(f"{out} = {other}")
            with self.block("else:"):
                self.emit(f"_logic_error({left}, {right}, {operator!r})")
        return out

    def operand(self, node: ast.Node, out: str) -> None:
        """`out` = the operand's value, or the exception it raised (BudgetExceeded is never absorbed)."""
        with self.block("try:"):
            self.emit(f"{out} = {self.gen(node)}")
        with self.block("except _BudgetExceeded:"):
            self.emit("raise")
        with self.block("except Exception as _e:"):
            self.emit(f"{out} = _e")

    # the function ----------------------------------------------------------------------------------------

    def function(self, node: ast.Node) -> str:
        with self.block("try:"):
            result = self.gen(node)
            self.emit(f"return {result}")
        if self.compiler.metered:  # Program.evaluate_closures' budget, outside its try as there
            budget = ["_m = [_BUDGET]"] + (["a = {**a, _BUDGET_KEY: _m}"] if self.fallbacks else [])
            self.lines[:0] = ["    " + line for line in budget]
        with self.block("except _CelError:"):
            self.emit("raise")
        with self.block("except RecursionError:"):
            self.emit("raise _CelError('expression evaluation nested too deeply') from None")
        with self.block("except Exception as _x:"):
            self.emit("raise _CelError(f'{type(_x).__name__}: {_x}') from None")
        return "def _cel_condition(a):\n" + "\n".join(self.lines) + "\n"


@lru_cache(maxsize=4096)
def _compile(source: str) -> CodeType:
    """Policies at scale repeat a few shapes with different literals; literals live in the namespace, so the
    source of one shape is one text, compiled once."""
    return compile(source, "<cel condition>", "exec")


def generate(node: ast.Node, compiler: _Compiler) -> Generated | None:
    """The condition as one generated function with Program.evaluate's contract, or None where the closures
    must serve (an unchecked or non-total program, or source Python will not compile)."""
    if not compiler.total or compiler.checked is None:
        return None
    generator = _Generator(compiler)
    try:
        source = generator.function(node)
        if len(source) > MAX_SOURCE_CHARS:
            return None
        code = _compile(source)
    except Exception:  # noqa: BLE001 - Python refusing the source (nesting, size) or anything unforeseen:
        return None  # the closures evaluate the program, with the same semantics; a load never fails here
    namespace = generator.namespace
    exec(code, namespace)  # noqa: S102 - our own source: policy text is bound in `namespace`, never pasted
    fn: Fn = namespace["_cel_condition"]
    return Generated(fn, source, generator.fallbacks)


