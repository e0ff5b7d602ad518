"""CEL conditions -> Z3, with errors modelled explicitly.

Every sub-expression becomes a `Val`: a statically known kind (the request's variables and the schema's
argument types make every kind known), a Z3 term for its value and a Z3 formula `err` that holds exactly when
evaluating it raises a CEL error. Strict functions propagate errors; `&&` and `||` absorb an error when the
other side decides, in either order (CEL's commutative logic); a missing argument field, int overflow, division
by zero and operators applied to the wrong kinds are errors, as in capengine.cel.compiler.

A construct outside the fragment raises NotAnalysable. It is caught at the nearest boolean position (an operand
of `&&`/`||`/`!`, the test of `?:`, the whole condition), where the sub-expression is replaced by a fresh,
unconstrained value-or-error named after the expression's text: the real outcome is one of the fresh
variable's values, so the formula over-approximates, a proof ("no request ...") stays a proof, and a witness
must be confirmed by the engine before it is believed.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import attrs
import z3

from capengine.analysis import regex
from capengine.analysis.domain import SymRequest
from capengine.analysis.zstrings import NotAnalysable, zstr
from capengine.cel import ast, cost
from capengine.cel.values import INT_MAX, INT_MIN
from capengine.policy import paths

FALSE = z3.BoolVal(False)
TRUE = z3.BoolVal(True)
_ANY = z3.Full(z3.ReSort(z3.StringSort()))
_OPTIONALS = ("optional values (args.?f, x[?k], orValue, optional.of, [?x]) are outside the analysable fragment; "
              "a condition using them is treated as unknown")


@attrs.frozen
class Val:
    kind: str  # bool | int | double | string | list | args
    v: Any
    err: z3.BoolRef
    const: str | None = None  # kind string only: the literal text, when the value is a literal

    @property
    def ok(self) -> z3.BoolRef:
        return z3.Not(self.err)


def _or(*xs: z3.BoolRef) -> z3.BoolRef:
    parts = [x for x in xs if not z3.is_false(x)]
    if any(z3.is_true(x) for x in parts):
        return TRUE
    return FALSE if not parts else parts[0] if len(parts) == 1 else z3.Or(*parts)


def structural_key(node: object) -> str:
    """The expression's structure without positions: the same text in two files gets the same key."""
    if isinstance(node, ast.Pos):
        return ""
    if isinstance(node, tuple):
        return "(" + ",".join(structural_key(n) for n in node) + ")"
    if attrs.has(type(node)):
        fields = [structural_key(getattr(node, f.name)) for f in attrs.fields(cast(Any, type(node))) if f.name != "pos"]
        return f"{type(node).__name__}[{';'.join(fields)}]"
    return f"{type(node).__name__}:{node!r}"


class Encoder:
    """Encodes conditions over one symbolic request. `reasons` collects what was not analysable."""

    def __init__(self, request: SymRequest) -> None:
        self.req = request
        self.reasons: list[str] = []

    # boolean positions: the havoc boundary --------------------------------------------------------
    def condition(self, node: ast.Node) -> Val:
        return self.boolean(node)

    def boolean(self, node: ast.Node) -> Val:
        try:
            return self.expr(node)
        except NotAnalysable as exc:
            self.reasons.append(str(exc))
            key = hashlib.sha1(structural_key(node).encode()).hexdigest()[:16]
            return Val("bool", z3.Bool(f"{self.req.prefix}havoc.{key}"), z3.Bool(f"{self.req.prefix}havoc_err.{key}"))

    # expressions ----------------------------------------------------------------------------------
    def expr(self, node: ast.Node) -> Val:
        if isinstance(node, ast.Literal):
            return self.literal(node.value)
        if isinstance(node, ast.Ident):
            return self.ident(node.name)
        if isinstance(node, ast.Select):
            return self.select(node)
        if isinstance(node, ast.Index):
            if isinstance(node.index, ast.Literal) and type(node.index.value) is str:
                return self.field(self.expr(node.operand), node.index.value, test_only=False)
            raise NotAnalysable("indexing with a computed key is outside the analysable fragment")
        if isinstance(node, ast.Conditional):
            return self.conditional(node)
        if isinstance(node, ast.CreateList):
            if node.optional_indices:
                raise NotAnalysable(_OPTIONALS)
            items = tuple(self.expr(i) for i in node.items)
            return Val("list", items, _or(*(i.err for i in items)))
        if isinstance(node, ast.Call):
            return self.call(node)
        raise NotAnalysable(f"{type(node).__name__.lower()} expressions (macros, maps, cel.bind) are outside "
                            "the analysable fragment")

    def literal(self, value: object) -> Val:
        t = type(value)
        if t is bool:
            return Val("bool", z3.BoolVal(value), FALSE)
        if t is int:
            return Val("int", z3.IntVal(value), FALSE)
        if t is str:
            assert isinstance(value, str)
            return Val("string", zstr(value), FALSE, const=value)
        raise NotAnalysable(f"literals of type {t.__name__} (uint, double, bytes, null) are outside the fragment")

    def ident(self, name: str) -> Val:
        r = self.req
        if name in ("path", "library", "extension"):
            return Val("string", getattr(r, name), FALSE)
        if name == "operation":
            return Val("string", zstr(r.operation), FALSE, const=r.operation)
        if name == "args":
            return Val("args", None, FALSE)
        raise NotAnalysable(f"the identifier {name!r} is outside the analysable fragment")

    def select(self, node: ast.Select) -> Val:
        operand = self.expr(node.operand)
        return self.field(operand, node.field, node.test_only)

    def field(self, operand: Val, name: str, test_only: bool) -> Val:
        if operand.kind != "args":
            if test_only:
                return Val("bool", FALSE, TRUE)  # has() on a non-map errors
            return Val("bool", FALSE, TRUE)  # field selection on a string/int: "has no field" error
        f = self.req.args.get(name)
        if f is None or f.hidden:
            if self.req.open_args:
                raise NotAnalysable(f"args.{name} is not declared by the schema of {self.req.operation}")
            return Val("bool", FALSE, operand.err) if test_only else Val("bool", FALSE, TRUE)
        if test_only:
            return Val("bool", f.present, operand.err)
        if f.kind == "opaque":
            raise NotAnalysable(f"args.{name} has a schema type the encoding does not model")
        return Val(f.kind, f.value, _or(operand.err, z3.Not(f.present)))

    def optional_arg(self, name: str, default_node: ast.Node | None) -> Val:
        """`args.?name.hasValue()` (None default: the same as has(args.name)) and `args.?name.orValue(d)`: the
        field's value when the call has it, else d (and d's error, if any)."""
        args = Val("args", None, FALSE)
        if default_node is None:
            return self.field(args, name, test_only=True)
        default = self.expr(default_node)
        f = self.req.args.get(name)
        if f is None or f.hidden:
            if self.req.open_args:
                raise NotAnalysable(f"args.{name} is not declared by the schema of {self.req.operation}")
            return default  # the field is never there: orValue gives the default
        if f.kind == "opaque":
            raise NotAnalysable(f"args.{name} has a schema type the encoding does not model")
        if f.kind != default.kind or f.kind == "list":
            raise NotAnalysable(f"args.?{name}.orValue() with a default of another type is outside the fragment")
        return Val(f.kind, z3.If(f.present, f.value, default.v), z3.And(z3.Not(f.present), default.err))

    def conditional(self, node: ast.Conditional) -> Val:
        c = self.boolean(node.cond)
        a, b = self.expr(node.then), self.expr(node.otherwise)
        if a.kind != b.kind or a.kind in ("list", "args"):
            raise NotAnalysable("a conditional whose branches have different or compound types")
        cond_err = c.err if c.kind == "bool" else TRUE
        cv = c.v if c.kind == "bool" else FALSE
        return Val(a.kind, z3.If(cv, a.v, b.v), _or(cond_err, z3.If(cv, a.err, b.err)))

    # calls ----------------------------------------------------------------------------------------
    def call(self, node: ast.Call) -> Val:
        fn = node.function
        if fn in ("_&&_", "_||_"):
            return self.logical(self.boolean(node.args[0]), self.boolean(node.args[1]), fn == "_||_")
        if fn == "!_":
            x = self.boolean(node.args[0])
            if x.kind != "bool":
                return Val("bool", FALSE, TRUE)
            return Val("bool", z3.Not(x.v), x.err)
        if fn in ("orValue", "hasValue") and node.target is not None \
                and (name := ast.optional_field(node.target, "args")) is not None:
            return self.optional_arg(name, node.args[0] if fn == "orValue" and len(node.args) == 1 else None)
        if fn in cost.OPTIONAL_FUNCTIONS:
            raise NotAnalysable(_OPTIONALS)
        operands = ((node.target,) if node.target is not None else ()) + node.args
        handler = _CALLS.get(fn)
        if handler is None:
            raise NotAnalysable(f"the function {fn.strip('_@')!r} is outside the analysable fragment")
        return handler(self, operands)

    @staticmethod
    def logical(a: Val, b: Val, is_or: bool) -> Val:
        """CEL's commutative &&/||: the deciding value from either side wins over an error on the other."""
        def parts(x: Val) -> tuple[z3.BoolRef, z3.BoolRef]:
            if x.kind != "bool":
                return FALSE, FALSE  # (is true, is false): a non-bool is neither, like an error
            return z3.And(x.ok, x.v), z3.And(x.ok, z3.Not(x.v))

        if a.kind == b.kind == "bool" and z3.is_false(a.err) and z3.is_false(b.err):
            # neither side can fail: plain logic (keeps formulas, and the regexes fused from them, small)
            return Val("bool", z3.Or(a.v, b.v) if is_or else z3.And(a.v, b.v), FALSE)
        at, af = parts(a)
        bt, bf = parts(b)
        if is_or:
            true = z3.Or(at, bt)
            false = z3.And(af, bf)
        else:
            false = z3.Or(af, bf)
            true = z3.And(at, bt)
        return Val("bool", true, z3.Not(z3.Or(true, false)))

    def strings(self, operands: tuple, count: int) -> list[Val]:
        vals = [self.expr(o) for o in operands]
        if len(vals) != count:
            raise NotAnalysable("a call with an unexpected number of arguments")
        return vals

    def literal_string(self, node: ast.Node, what: str) -> str:
        if isinstance(node, ast.Literal) and type(node.value) is str:
            assert isinstance(node.value, str)
            return node.value
        raise NotAnalysable(f"{what} with a computed argument is outside the analysable fragment")


def _wrong_kind(*vals: Val) -> Val:
    return Val("bool", FALSE, TRUE)


def _string_test(op: str):
    def build(e: Encoder, operands: tuple) -> Val:
        s, t = e.strings(operands, 2)
        if s.kind != "string" or t.kind != "string":
            return _wrong_kind(s, t)
        if t.const is not None:  # membership tests are what Z3's string solver handles fastest
            lit = z3.Re(t.v)
            language = {"startsWith": z3.Concat(lit, _ANY), "endsWith": z3.Concat(_ANY, lit),
                        "contains": z3.Concat(_ANY, lit, _ANY)}[op]
            return Val("bool", z3.InRe(s.v, language), _or(s.err, t.err))
        value = {"startsWith": z3.PrefixOf(t.v, s.v), "endsWith": z3.SuffixOf(t.v, s.v),
                 "contains": z3.Contains(s.v, t.v)}[op]
        return Val("bool", value, _or(s.err, t.err))

    return build


def _matches(e: Encoder, operands: tuple) -> Val:
    if len(operands) != 2:
        raise NotAnalysable("matches() with an unexpected number of arguments")
    pattern = e.literal_string(operands[1], "matches()")
    s = e.expr(operands[0])
    if s.kind != "string":
        return _wrong_kind(s)
    return Val("bool", z3.InRe(s.v, regex.search_language(pattern)), s.err)


def _under(e: Encoder, operands: tuple) -> Val:
    if len(operands) != 2:
        raise NotAnalysable("under() with an unexpected number of arguments")
    directory = e.literal_string(operands[1], "under()")
    s = e.expr(operands[0])
    if s.kind != "string":
        return _wrong_kind(s)
    try:
        base = paths.canonical_path(directory)
    except paths.PathError:
        return Val("bool", FALSE, TRUE)
    if not directory.startswith("/"):
        return Val("bool", FALSE, TRUE)
    if base in ("", "/"):
        language = z3.Concat(z3.Re(zstr("/")), _ANY)
    else:
        language = z3.Union(z3.Re(zstr(base)), z3.Concat(z3.Re(zstr(base + "/")), _ANY))
    value = z3.InRe(s.v, language)
    return Val("bool", value, s.err)


def _glob(e: Encoder, operands: tuple) -> Val:
    if len(operands) != 2:
        raise NotAnalysable("glob() with an unexpected number of arguments")
    pattern = e.literal_string(operands[1], "glob()")
    s = e.expr(operands[0])
    if s.kind != "string":
        return _wrong_kind(s)
    return Val("bool", z3.InRe(s.v, regex.path_glob_language(pattern)), s.err)


def _size(e: Encoder, operands: tuple) -> Val:
    if len(operands) != 1:
        raise NotAnalysable("size() with an unexpected number of arguments")
    x = e.expr(operands[0])
    if x.kind == "string":
        return Val("int", z3.Length(x.v), x.err)
    if x.kind == "list":
        return Val("int", z3.IntVal(len(x.v)), x.err)
    if x.kind == "args":
        raise NotAnalysable("size(args) is outside the analysable fragment")
    return Val("int", z3.IntVal(0), TRUE)


def equal(a: Val, b: Val) -> z3.BoolRef:
    """CEL equality (no error of its own): numbers by value across int/double, other kinds only within a kind."""
    if a.kind in ("int", "double") and b.kind in ("int", "double"):
        if a.kind != b.kind:
            a, b = _as_real(a), _as_real(b)
        return a.v == b.v
    if a.kind != b.kind:
        return FALSE
    if a.kind == "list":
        if len(a.v) != len(b.v):
            return FALSE
        return z3.And([equal(x, y) for x, y in zip(a.v, b.v)]) if a.v else TRUE
    if a.kind == "args":
        raise NotAnalysable("comparing args as a whole is outside the analysable fragment")
    if a.kind == "string" and (a.const is not None or b.const is not None):
        lit, other = (a, b) if a.const is not None else (b, a)
        if other.const is not None:
            return z3.BoolVal(lit.const == other.const)
        return z3.InRe(other.v, z3.Re(lit.v))  # far faster in Z3 than a string (dis)equation
    return a.v == b.v


def _equality(negate: bool):
    def build(e: Encoder, operands: tuple) -> Val:
        a, b = e.strings(operands, 2)
        eq = equal(a, b)
        return Val("bool", z3.Not(eq) if negate else eq, _or(a.err, b.err))

    return build


def _as_real(x: Val) -> Val:
    return attrs.evolve(x, v=z3.ToReal(x.v), kind="double") if x.kind == "int" else x


def _ordering(op: str):
    def build(e: Encoder, operands: tuple) -> Val:
        a, b = e.strings(operands, 2)
        err = _or(a.err, b.err)
        if a.kind in ("int", "double") and b.kind in ("int", "double"):
            if a.kind != b.kind:
                a, b = _as_real(a), _as_real(b)
            x, y = a.v, b.v
        elif a.kind == b.kind == "string":
            x, y = a.v, b.v
            value = {"<": x < y, "<=": x <= y, ">": y < x, ">=": y <= x}[op]  # code-point order, as Python
            return Val("bool", value, err)
        elif a.kind == b.kind == "bool":
            x, y = z3.If(a.v, 1, 0), z3.If(b.v, 1, 0)
        else:
            return Val("bool", FALSE, TRUE)
        value = {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
        return Val("bool", value, err)

    return build


def _in_range(x: Any) -> z3.BoolRef:
    return z3.And(x >= INT_MIN, x <= INT_MAX)


def _arith(op: str):
    def build(e: Encoder, operands: tuple) -> Val:
        a, b = e.strings(operands, 2)
        err = _or(a.err, b.err)
        if op == "+" and a.kind == b.kind == "string":
            return Val("string", z3.Concat(a.v, b.v), err)
        if a.kind != "int" or b.kind != "int":
            if a.kind in ("int", "double") and b.kind in ("int", "double"):
                raise NotAnalysable("double arithmetic is outside the analysable fragment")
            return Val("int", z3.IntVal(0), TRUE)
        x, y = a.v, b.v
        if op in ("+", "-", "*"):
            r = {"+": x + y, "-": x - y, "*": x * y}[op]
            bad = z3.Not(_in_range(r))
        else:
            q = z3.If(z3.Xor(x < 0, y < 0), -1, 1) * (z3.If(x < 0, -x, x) / z3.If(y < 0, -y, y))
            r = q if op == "/" else x - y * q
            bad = z3.Or(y == 0, z3.Not(_in_range(r)) if op == "/" else FALSE)
        return Val("int", r, _or(err, bad))

    return build


def _negate(e: Encoder, operands: tuple) -> Val:
    (a,) = e.strings(operands, 1)
    if a.kind != "int":
        if a.kind == "double":
            raise NotAnalysable("double arithmetic is outside the analysable fragment")
        return Val("int", z3.IntVal(0), TRUE)
    return Val("int", -a.v, _or(a.err, a.v == INT_MIN))


def _in(e: Encoder, operands: tuple) -> Val:
    x, container = operands
    item = e.expr(x)
    rng = e.expr(container)
    if rng.kind == "list":
        if not rng.v:
            return Val("bool", FALSE, _or(item.err, rng.err))
        vals = rng.v
        return Val("bool", z3.Or([equal(item, v) for v in vals]), _or(item.err, rng.err))
    if rng.kind == "args":
        key = e.literal_string(x, "'in args'")
        f = e.req.args.get(key)
        if f is None or f.hidden:
            if e.req.open_args:
                raise NotAnalysable(f"args.{key} is not declared by the schema of {e.req.operation}")
            return Val("bool", FALSE, FALSE)
        return Val("bool", f.present, FALSE)
    return Val("bool", FALSE, TRUE)


_CALLS = {
    "startsWith": _string_test("startsWith"), "endsWith": _string_test("endsWith"),
    "contains": _string_test("contains"), "matches": _matches, "under": _under, "glob": _glob, "size": _size,
    "_==_": _equality(False), "_!=_": _equality(True),
    "_<_": _ordering("<"), "_<=_": _ordering("<="), "_>_": _ordering(">"), "_>=_": _ordering(">="),
    "_+_": _arith("+"), "_-_": _arith("-"), "_*_": _arith("*"), "_/_": _arith("/"), "_%_": _arith("%"),
    "-_": _negate, "@in": _in,
}
