"""Static type checking of CEL ASTs against declared variables and the function library.

cel-python has no checker, yet a policy with `operation == 1` or `path.under(3)` must fail at load time with a
position, not at 3 a.m. on a user's machine. Every error is collected (not just the first). The inferred
types are kept per node so the compiler can pick a specialised implementation where the types are known.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import attrs

from capengine.cel import ast
from capengine.cel.ast import qualified_name
from capengine.cel.environment import Environment, Overload
from capengine.cel.types import (
    BOOL,
    DYN,
    INT,
    NULL,
    TYPE,
    TYPE_IDENTS,
    UINT,
    Type,
    join,
    list_of,
    map_of,
    optional_of,
    substitute,
    unify,
)


@attrs.frozen
class CheckError:
    message: str
    pos: ast.Pos


@attrs.define
class CheckResult:
    type: Type
    errors: list[CheckError]
    node_types: dict[int, Type]  # id(node) -> inferred type
    overloads: dict[int, list[Overload]]  # id(call node) -> candidate overloads that matched statically


class Checker:
    def __init__(self, decls: dict[str, Type], env: Environment) -> None:
        self.decls = decls
        self.env = env
        self.errors: list[CheckError] = []
        self.node_types: dict[int, Type] = {}
        self.overloads: dict[int, list[Overload]] = {}

    def check(self, node: ast.Node) -> CheckResult:
        t = self.visit(node, {})
        return CheckResult(t, self.errors, self.node_types, self.overloads)

    def error(self, message: str, pos: ast.Pos) -> Type:
        self.errors.append(CheckError(message, pos))
        return DYN

    def visit(self, node: ast.Node, scope: dict[str, Type]) -> Type:
        t = getattr(self, "_" + type(node).__name__)(node, scope)
        self.node_types[id(node)] = t
        return t

    def _Literal(self, node: ast.Literal, scope) -> Type:
        from capengine.cel.values import type_name

        return NULL if node.value is None else TYPE_IDENTS[type_name(node.value)]

    def _Ident(self, node: ast.Ident, scope) -> Type:
        if node.name in scope:
            return scope[node.name]
        if node.name in self.decls:
            return self.decls[node.name]
        if node.name in TYPE_IDENTS and node.name != "dyn":
            return TYPE
        return self.error(f"undeclared reference to '{node.name}'"
                          f"{did_you_mean(node.name, [*self.decls, *scope])}", node.pos)

    def _Select(self, node: ast.Select, scope) -> Type:
        qualified = qualified_name(node)
        if qualified and qualified.split(".")[0] not in scope and qualified in self.decls and not node.test_only:
            return self.decls[qualified]
        if qualified in TYPE_IDENTS and qualified.split(".")[0] not in scope and qualified.split(".")[0] not in \
                self.decls and not node.test_only:
            return TYPE  # a qualified type name used as a value: google.protobuf.Timestamp
        operand = self.visit(node.operand, scope)
        chained = operand.name == "optional_type"  # a field of an optional is an optional (none stays none)
        field_type = self._field(operand.params[0] if chained else operand, node.field, node.pos)
        if node.test_only:
            return BOOL
        return optional_of(field_type) if chained else field_type

    def _field(self, operand: Type, field: str, pos: ast.Pos) -> Type:
        """The type of `operand.field`; dyn after reporting when the operand has no such field."""
        if operand == DYN:
            return DYN
        if operand.name != "map":
            return self.error(f"type '{operand}' has no fields (selecting '{field}')", pos)
        if not unify(operand.params[0], Type("string"), {}):
            return self.error(f"cannot select field '{field}' from {operand}: keys are not strings", pos)
        if operand.fields is not None:
            known = self._known_field(operand, field, pos)
            return DYN if known is None else known
        return operand.params[1]

    def _Index(self, node: ast.Index, scope) -> Type:
        operand = self.visit(node.operand, scope)
        index = self.visit(node.index, scope)
        if operand.name == "optional_type":  # an element of an optional is an optional
            return optional_of(self._element(operand.params[0], index, node))
        return self._element(operand, index, node)

    def _element(self, operand: Type, index: Type, node: ast.Index | ast.Call) -> Type:
        """The type of `operand[index]`; dyn after reporting when it cannot be indexed so."""
        key = node.index if isinstance(node, ast.Index) else node.args[1]
        if operand == DYN:
            return DYN
        if operand.name == "list":
            if index not in (INT, UINT, DYN):
                return self.error(f"list index must be int, not {index}", key.pos)
            return operand.params[0]
        if operand.name == "map":
            if not unify(operand.params[0], index, {}):
                return self.error(f"map key must be {operand.params[0]}, not {index}", key.pos)
            if operand.fields is not None and isinstance(key, ast.Literal) and isinstance(key.value, str):
                known = self._known_field(operand, key.value, key.pos)
                return DYN if known is None else known
            return operand.params[1]
        return self.error(f"type '{operand}' cannot be indexed", node.pos)

    def _optional_access(self, node: ast.Call, scope) -> Type:
        """`x.?f` and `x[?k]`: the field or element as an optional; on an optional, none stays none."""
        operand = self.visit(node.args[0], scope)
        key = self.visit(node.args[1], scope)
        if operand.name == "optional_type":
            operand = operand.params[0]
        if node.function == ast.OPT_SELECT:
            field = node.args[1]
            assert isinstance(field, ast.Literal) and isinstance(field.value, str)  # the parser builds it so
            return optional_of(self._field(operand, field.value, node.pos))
        return optional_of(self._element(operand, key, node))

    def _known_field(self, record: Type, name: str, pos: ast.Pos) -> Type | None:
        """The type of a key of a map with a schema; None (after reporting) for a key a closed one lacks."""
        found = record.field(name)
        if found is not None:
            return found.type
        if not record.closed:
            return record.params[1]
        names = [f.name for f in record.fields or ()]
        where = f" {record.describe}" if record.describe else ""
        self.error(f"no field '{name}'{where} (fields: {', '.join(names) or 'none'}){did_you_mean(name, names)}",
                   pos)
        return None

    def _CreateList(self, node: ast.CreateList, scope) -> Type:
        items = [self.visit(item, scope) for item in node.items]
        for i in node.optional_indices:  # `[?x]`: x is an optional, the list holds its value
            items[i] = self._optional_inner(items[i], node.items[i], "list element")
        return list_of(join(items))

    def _optional_inner(self, t: Type, node: ast.Node, what: str) -> Type:
        if t.name == "optional_type":
            return t.params[0]
        if t != DYN:
            self.error(f"{what} marked with '?' must be an optional, not {t}", node.pos)
        return DYN

    def _CreateMap(self, node: ast.CreateMap, scope) -> Type:
        keys = [self.visit(k, scope) for k, _ in node.entries]
        values = [self.visit(v, scope) for _, v in node.entries]
        for i in node.optional_indices:  # `{?k: v}`: v is an optional, the map holds its value
            values[i] = self._optional_inner(values[i], node.entries[i][1], "map entry value")
        for (k_node, _), k in zip(node.entries, keys):
            if k.name not in ("string", "int", "uint", "bool", "dyn"):
                self.error(f"unsupported map key type {k}", k_node.pos)
        return map_of(join(keys), join(values))

    def _Conditional(self, node: ast.Conditional, scope) -> Type:
        cond = self.visit(node.cond, scope)
        if cond not in (BOOL, DYN):
            self.error(f"condition of '?:' must be bool, not {cond}", node.cond.pos)
        then, otherwise = self.visit(node.then, scope), self.visit(node.otherwise, scope)
        # optional.none() is an optional of any type (cel-go types it optional_type(T) with T free): it takes
        # the other branch's optional type, so `o.optMap(x, f(x))` keeps f's type
        if _is_none(node.otherwise) and then.name == "optional_type":
            return then
        if _is_none(node.then) and otherwise.name == "optional_type":
            return otherwise
        return join([then, otherwise])

    def _Comprehension(self, node: ast.Comprehension, scope) -> Type:
        rng = self.visit(node.range, scope)
        second: Type | None
        if rng == DYN:
            first, second = DYN, DYN
        elif rng.name == "list":
            first, second = (INT, rng.params[0]) if node.var2 else (rng.params[0], None)
        elif rng.name == "map":
            first, second = rng.params[0], rng.params[1]
        else:
            self.error(f"{node.kind}() needs a list or map, not {rng}", node.range.pos)
            first, second = DYN, DYN
        inner = dict(scope)
        inner[node.var] = first
        if node.var2:
            inner[node.var2] = second if second is not None else DYN
        if node.guard is not None:
            self._expect_bool(node.guard, inner, node.kind)
        if node.kind in ("all", "exists", "exists_one", "filter"):
            self._expect_bool(node.body, inner, node.kind)
            if node.kind == "filter":
                return list_of(first)
            return BOOL
        body = self.visit(node.body, inner)
        if node.kind == "transformMap":
            return map_of(first, body)
        return list_of(body)

    def _Bind(self, node: ast.Bind, scope) -> Type:
        return self.visit(node.body, {**scope, node.var: self.visit(node.init, scope)})

    def _expect_bool(self, node: ast.Node, scope, what: str) -> None:
        t = self.visit(node, scope)
        if t not in (BOOL, DYN):
            self.error(f"{what}() predicate must be bool, not {t}", node.pos)

    def _Call(self, node: ast.Call, scope) -> Type:
        if node.function in ("_&&_", "_||_", "!_"):
            for arg in node.args:
                t = self.visit(arg, scope)
                if t not in (BOOL, DYN):
                    self.error(f"operand of '{_OPERATOR_TEXT[node.function]}' must be bool, not {t}", arg.pos)
            return BOOL
        if node.function in (ast.OPT_SELECT, ast.OPT_INDEX):
            return self._optional_access(node, scope)
        receiver = node.target is not None
        args: tuple[ast.Node, ...] = ((node.target,) if node.target is not None else ()) + node.args
        arg_types = [self.visit(a, scope) for a in args]
        candidates = self.env.overloads(node.function, receiver)
        if not candidates:
            style = "method" if receiver else "function"
            names = [n for n in self.env.functions if not n.startswith(("_", "!", "-", "@"))]
            return self.error(f"undeclared reference to {style} '{node.function}'"
                              f"{did_you_mean(node.function, names)}", node.pos)
        results: list[Type] = []
        matched = []
        for overload in candidates:
            if len(overload.params) != len(arg_types):
                continue
            bindings: dict[str, Type] = {}
            # optional.none() holds no value: it constrains no type variable (a dyn there would make A dyn)
            if all((_is_none(n) and p.name == "optional_type") or unify(p, a, bindings)
                   for p, a, n in zip(overload.params, arg_types, args)):
                matched.append(overload)
                results.append(substitute(overload.result, bindings))
        if not matched:
            shown = _OPERATOR_TEXT.get(node.function, node.function)
            return self.error(f"no matching overload for '{shown}' applied to "
                              f"({', '.join(map(str, arg_types))})", node.pos)
        self.overloads[id(node)] = matched
        return join(results)


_OPERATOR_TEXT = {"_&&_": "&&", "_||_": "||", "!_": "!", "-_": "-", "_+_": "+", "_-_": "-", "_*_": "*",
                  "_/_": "/", "_%_": "%", "_==_": "==", "_!=_": "!=", "_<_": "<", "_<=_": "<=", "_>_": ">",
                  "_>=_": ">=", "@in": "in"}



def _is_none(node: ast.Node) -> bool:
    return isinstance(node, ast.Call) and node.function == "optional.none" and not node.args


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest candidate (case-insensitive first: `startswith`), or ""."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered and lowered[name.lower()] != name:
        return f"; did you mean '{lowered[name.lower()]}'?"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def check(node: ast.Node, decls: dict[str, Type], env: Environment) -> CheckResult:
    return Checker(decls, env).check(node)
