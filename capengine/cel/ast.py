"""CEL source -> a small, position-carrying AST.

The grammar (cel.lark, loaded by grammar.py) is cel-python's, extended with the optional syntax of the cel-spec
`optionals` extension (`x.?f`, `x[?k]`, `[?x]`, `{?k: v}`). Lark's parse tree is deep (one node per precedence
level) and untyped, so it is folded here into a handful of attrs nodes that the type checker and the compiler
share. Macros (`has`, `all`, `exists`, `optMap`, ...) are expanded at this stage, as CEL specifies, so later
stages never see them as calls. `x.?f` and `x[?k]` become calls of `_?._` and `_[?_]` (as in cel-go), so a walker
that does not know them sees a function call, never a plain field read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, cast

import attrs
import lark

from capengine.cel import grammar
from capengine.cel.values import INT_MAX, INT_MIN, UINT_MAX, UInt, Value
from capengine.errors import CapengineError


class CelSyntaxError(CapengineError):
    """A CEL expression that does not parse; `line`/`column` are 1-based inside the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@attrs.frozen
class Pos:
    line: int
    column: int


@attrs.frozen
class Literal:
    value: Value
    pos: Pos


@attrs.frozen
class Ident:
    name: str
    pos: Pos


@attrs.frozen
class Select:
    operand: Node
    field: str
    pos: Pos
    test_only: bool = False  # has(operand.field)


@attrs.frozen
class Call:
    function: str
    target: Node | None  # receiver for `x.f(...)` style calls
    args: tuple[Node, ...]
    pos: Pos


@attrs.frozen
class Index:
    operand: Node
    index: Node
    pos: Pos


@attrs.frozen
class CreateList:
    items: tuple[Node, ...]
    pos: Pos
    optional_indices: tuple[int, ...] = ()  # `[?x]`: items that are optionals, included only with a value


@attrs.frozen
class CreateMap:
    entries: tuple[tuple[Node, Node], ...]
    pos: Pos
    optional_indices: tuple[int, ...] = ()  # `{?k: v}`: entries whose value is an optional, kept only with one


@attrs.frozen
class Comprehension:
    """A macro over a list or map.

    kind: all | exists | exists_one | map | filter | transformList | transformMap.
    `var2` is the value variable of the two-variable forms (`i, v` / `k, v`).
    `guard` is the optional filter predicate of `map(x, p, f)` / `transformList(i, v, p, f)`.
    """

    kind: str
    range: Node
    var: str
    var2: str | None
    guard: Node | None
    body: Node
    pos: Pos


@attrs.frozen
class Conditional:
    cond: Node
    then: Node
    otherwise: Node
    pos: Pos


@attrs.frozen
class Bind:
    """`cel.bind(var, init, body)`: body evaluated with var bound to init (evaluated once)."""

    var: str
    init: Node
    body: Node
    pos: Pos


Node = Literal | Ident | Select | Call | Index | CreateList | CreateMap | Comprehension | Conditional | Bind
NODE_TYPES = frozenset(Node.__args__)

_BINARY = {
    "relation_lt": "_<_", "relation_le": "_<=_", "relation_gt": "_>_", "relation_ge": "_>=_",
    "relation_eq": "_==_", "relation_ne": "_!=_", "relation_in": "@in",
    "addition_add": "_+_", "addition_sub": "_-_",
    "multiplication_mul": "_*_", "multiplication_div": "_/_", "multiplication_mod": "_%_",
}
# receiver macro name -> {argument count: number of loop variables}
_QUANTIFIER = {2: 1, 3: 2}
_MACROS = {"all": _QUANTIFIER, "exists": _QUANTIFIER, "exists_one": _QUANTIFIER, "existsOne": _QUANTIFIER,
           "map": {2: 1, 3: 1}, "filter": {2: 1}, "transformList": {3: 2, 4: 2}, "transformMap": {3: 2, 4: 2}}
MAX_SOURCE_CHARS = 100_000  # cel-go's default ExpressionSizeCodePointLimit
MAX_DEPTH = 120  # AST levels (each parenthesis counts as one); keeps the checker and compiler within the stack
RESERVED = {"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
            "package", "namespace", "return", "var", "void", "while", "in"}


OPT_SELECT, OPT_INDEX = "_?._", "_[?_]"  # `x.?f` is Call(OPT_SELECT, None, (x, "f")); `x[?k]` Call(OPT_INDEX, ...)


def _pos(tree: lark.Tree | lark.Token) -> Pos:
    """Where a subtree starts: its first token. The grammar keeps the tokens a rule starts with (`!` rules),
    so the first token is the first character of the subtree's text."""
    while isinstance(tree, lark.Tree):
        if not tree.children:
            return Pos(1, 1)
        tree = tree.children[0]
    return Pos(tree.line or 1, tree.column or 1)


@lru_cache(maxsize=8192)
def parse(source: str, namespaced: frozenset[str] = frozenset()) -> Node:
    """Parse a CEL expression; raises CelSyntaxError with a position inside `source`.

    `namespaced`: the environment's dotted function names (`strings.quote`); `a.b(x)` is a call of the
    function `a.b` when it is one of them, else the method `b` on `a` (CEL resolves names this way).
    The AST is immutable, so a parse is cached and shared: loading, lint and checks of one condition (and of
    the same condition in many files) parse it once.
    """
    if len(source) > MAX_SOURCE_CHARS:
        raise CelSyntaxError(f"expression longer than {MAX_SOURCE_CHARS} characters ({len(source)}); split the rule "
                             "up, or test membership with `in [...]` / path.under()")
    try:
        tree = grammar.parser().parse(source)
    except (lark.exceptions.UnexpectedToken, lark.exceptions.UnexpectedCharacters) as exc:
        line, column = getattr(exc, "line", None) or 1, getattr(exc, "column", None) or 1
        raise CelSyntaxError(_describe(exc, source), line, column) from None
    except lark.exceptions.LarkError as exc:
        raise CelSyntaxError(_describe(exc, source)) from None
    except RecursionError:
        raise CelSyntaxError("expression nests too deeply") from None
    return _Builder(source, namespaced).build(tree, 0)


_TERMINALS = {"RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "RBRACE": "'}'", "COMMA": "','", "COLON": "':'",
              "IDENT": "an identifier", "INT_LIT": "a number", "STRING_LIT": "a string", "DOT": "'.'"}


def _describe(cause: BaseException | None, source: str) -> str:
    """A one-line message from Lark's exception (cel-python's own message is just the source line)."""
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        if cause.token.type == "$END":
            return "unexpected end of expression"
        expected = sorted(_TERMINALS[t] for t in cause.expected if t in _TERMINALS)
        hint = f"; expected {', '.join(expected)}" if expected and len(expected) <= 4 else ""
        return f"unexpected {str(cause.token)!r}{hint}"
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        at = cause.pos_in_stream
        ch = source[at] if at is not None and at < len(source) else ""
        if ch in "\"'":
            return "unterminated or malformed string literal"
        return f"unexpected character {ch!r}"
    if isinstance(cause, lark.exceptions.UnexpectedEOF):
        return "unexpected end of expression"
    return "syntax error"


def _balanced(fn: str, nodes: list[Node], positions: list[Pos], lo: int, hi: int) -> Node:
    """nodes[lo:hi] joined by `fn` into a balanced tree (cel-go's balancer); each call is placed where its
    first operand starts, as in the nested tree."""
    if hi - lo == 1:
        return nodes[lo]
    mid = (lo + hi + 1) // 2
    return Call(fn, None, (_balanced(fn, nodes, positions, lo, mid), _balanced(fn, nodes, positions, mid, hi)),
                positions[lo])


class _Builder:
    def __init__(self, source: str, namespaced: frozenset[str]) -> None:
        self.source = source
        self.namespaced = namespaced

    def build(self, t: lark.Tree, depth: int) -> Node:
        while t.data == "paren_expr":  # "(" expr ")": no node of its own, one level of nesting
            depth += 1
            t = t.children[1]
        if depth > MAX_DEPTH:
            raise CelSyntaxError(f"expression nests too deeply (more than {MAX_DEPTH} levels); split it up",
                                 *attrs.astuple(_pos(t)))
        method = getattr(self, "_" + t.data)
        return method(t, depth + 1)

    def _kids(self, t: lark.Tree) -> list[Any]:
        return [c for c in t.children if c is not None]

    # precedence chains ---------------------------------------------------------------------------
    # The grammar inlines a precedence rule with a single child (`?rule`): a tree of one of these rules always
    # holds an operator and its operands.
    def _expr(self, t: lark.Tree, d: int) -> Node:
        kids = self._kids(t)
        return Conditional(self.build(kids[0], d), self.build(kids[1], d), self.build(kids[2], d), _pos(t))

    def _logical(self, t: lark.Tree, d: int, fn: str) -> Node:
        """A chain `a || b || c ...` (the grammar nests it to the left, one level per operand) as a balanced
        tree, as cel-go builds it: a chain of any length nests log2(length) levels, not one per operand, so
        a 500-alternative condition is no "too deep" error. Same meaning: the operands keep their order, and
        CEL's `&&`/`||` are commutative, errors included (the deciding value wins wherever it is)."""
        operands: list[lark.Tree] = []
        node = t
        while node.data == t.data:
            left, right = self._kids(node)
            operands.append(right)
            node = left
        operands.append(node)
        operands.reverse()
        depth = d + (len(operands) - 1).bit_length()  # the balanced tree's levels above its operands
        built = [self.build(o, depth) for o in operands]
        return _balanced(fn, built, [_pos(o) for o in operands], 0, len(built))

    def _conditionalor(self, t: lark.Tree, d: int) -> Node:
        return self._logical(t, d, "_||_")

    def _conditionaland(self, t: lark.Tree, d: int) -> Node:
        return self._logical(t, d, "_&&_")

    def _binary(self, t: lark.Tree, d: int) -> Node:
        op_tree, right = self._kids(t)
        fn = _BINARY[op_tree.data]
        left, operator = op_tree.children
        return Call(fn, None, (self.build(left, d), self.build(right, d)), _pos(operator))

    _relation = _addition = _multiplication = _binary

    def _unary(self, t: lark.Tree, d: int) -> Node:
        op, operand = self._kids(t)
        fn = "-_" if op.data == "unary_neg" else "!_"
        return Call(fn, None, (self.build(operand, d),), _pos(t))

    # members ---------------------------------------------------------------------------------------
    def _member_dot(self, t: lark.Tree, d: int) -> Node:
        operand, name = self._kids(t)
        return Select(self.build(operand, d), str(name), _pos(name))

    def _member_dot_arg(self, t: lark.Tree, d: int) -> Node:
        kids = self._kids(t)
        operand, name = kids[0], str(kids[1])
        args = self._exprs(kids[2], d) if len(kids) > 2 else ()
        target = self.build(operand, d)
        pos = _pos(kids[1])
        arity = _MACROS.get(name, {}).get(len(args))
        namespace = qualified_name(target)
        if namespace == "cel" and name == "bind" and len(args) == 3:
            return Bind(_ident_name(args[0], "cel.bind"), args[1], args[2], pos)
        if namespace is not None and f"{namespace}.{name}" in self.namespaced:  # strings.quote(...)
            return Call(f"{namespace}.{name}", None, args, pos)
        if name in ("optMap", "optFlatMap") and len(args) == 2:
            return _optional_map(name, target, _ident_name(args[0], name), args[1], pos)
        if arity == 1:
            return self._macro1(name, target, args, pos)
        if arity == 2:
            return self._macro2(name, target, args, pos)
        return Call(name, target, args, pos)

    def _macro1(self, name: str, target: Node, args: tuple[Node, ...], pos: Pos) -> Node:
        var = _ident_name(args[0], name)
        kind = "exists_one" if name == "existsOne" else name
        if len(args) == 3:  # map(x, guard, transform)
            return Comprehension(kind, target, var, None, args[1], args[2], pos)
        return Comprehension(kind, target, var, None, None, args[1], pos)

    def _macro2(self, name: str, target: Node, args: tuple[Node, ...], pos: Pos) -> Node:
        var, var2 = _ident_name(args[0], name), _ident_name(args[1], name)
        if var == var2:
            raise CelSyntaxError(f"{name}(): the two variables must differ", pos.line, pos.column)
        kind = "exists_one" if name == "existsOne" else name
        guard, body = (args[2], args[3]) if len(args) == 4 else (None, args[2])
        return Comprehension(kind, target, var, var2, guard, body, pos)

    def _member_index(self, t: lark.Tree, d: int) -> Node:
        operand, index = self._kids(t)
        return Index(self.build(operand, d), self.build(index, d), _pos(t))

    def _member_dot_opt(self, t: lark.Tree, d: int) -> Node:
        operand, name = self._kids(t)
        pos = _pos(name)
        return Call(OPT_SELECT, None, (self.build(operand, d), Literal(str(name), pos)), pos)

    def _member_index_opt(self, t: lark.Tree, d: int) -> Node:
        operand, index = self._kids(t)
        return Call(OPT_INDEX, None, (self.build(operand, d), self.build(index, d)), _pos(t))

    def _member_object(self, t: lark.Tree, d: int) -> Node:
        raise CelSyntaxError("message construction is not supported (no protobuf types)", *attrs.astuple(_pos(t)))

    def _dot_ident_arg(self, t: lark.Tree, d: int) -> Node:
        name = t.children[1]  # "." IDENT "(" [exprlist] ")"
        args = self._exprs(t.children[3], d) if isinstance(t.children[3], lark.Tree) else ()
        return Call(str(name), None, args, _pos(name))

    def _dot_ident(self, t: lark.Tree, d: int) -> Node:
        name = t.children[1]  # "." IDENT
        return Ident(str(name), _pos(name))

    def _ident_arg(self, t: lark.Tree, d: int) -> Node:
        kids = self._kids(t)
        name = str(kids[0])
        args = self._exprs(kids[1], d) if len(kids) > 1 else ()
        if name == "has":
            if len(args) != 1 or not isinstance(args[0], Select):
                raise CelSyntaxError("has() takes a single field selection, e.g. has(args.name)",
                                     *attrs.astuple(_pos(kids[0])))
            sel = args[0]
            return Select(sel.operand, sel.field, sel.pos, test_only=True)
        return Call(name, None, args, _pos(kids[0]))

    def _ident(self, t: lark.Tree, d: int) -> Node:
        name = self._kids(t)[0]
        if str(name) in RESERVED:
            raise CelSyntaxError(f"reserved identifier '{name}'", *attrs.astuple(_pos(name)))
        return Ident(str(name), _pos(name))

    def _list_lit(self, t: lark.Tree, d: int) -> Node:
        inits = t.children[1]  # "[" [listinits] "]"
        items: list[Node] = []
        optional: list[int] = []
        for i, elem in enumerate(inits.children if isinstance(inits, lark.Tree) else ()):
            if isinstance(elem, lark.Tree) and elem.data == "opt_elem":  # `[?x]`
                optional.append(i)
                elem = elem.children[0]
            items.append(self.build(elem, d))
        return CreateList(tuple(items), _pos(t), tuple(optional))

    def _map_lit(self, t: lark.Tree, d: int) -> Node:
        inits = t.children[1]  # "{" [mapinits] "}"
        entries: list[tuple[Node, Node]] = []
        optional: list[int] = []
        for i, entry in enumerate(inits.children if isinstance(inits, lark.Tree) else ()):
            if entry.data == "opt_entry":  # `{?k: v}`
                optional.append(i)
            key, value = entry.children
            entries.append((self.build(key, d), self.build(value, d)))
        return CreateMap(tuple(entries), _pos(t), tuple(optional))

    def _exprs(self, t: lark.Tree, d: int) -> tuple[Node, ...]:
        return tuple([self.build(c, d) for c in t.children])

    def _literal(self, t: lark.Tree, d: int) -> Node:
        tok = cast(lark.Token, t.children[0])
        try:
            return Literal(literal_value(tok.type, str(tok)), _pos(tok))
        except ValueError as exc:
            raise CelSyntaxError(str(exc), *attrs.astuple(_pos(tok))) from None


def _optional_map(name: str, target: Node, var: str, body: Node, pos: Pos) -> Node:
    """`o.optMap(v, e)` -> `o.hasValue() ? optional.of(e[v := o.value()]) : optional.none()`, and `optFlatMap`
    without the `optional.of` (its `e` is an optional already), as cel-spec expands them. `o` is bound once to a
    variable no CEL source can name, so it is evaluated once."""
    held = Ident(OPTIONAL_TARGET, pos)
    value = Bind(var, Call("value", held, (), pos), body, pos)
    some = Call("optional.of", None, (value,), pos) if name == "optMap" else value
    test = Conditional(Call("hasValue", held, (), pos), some, Call("optional.none", None, (), pos), pos)
    return Bind(OPTIONAL_TARGET, target, test, pos)


OPTIONAL_TARGET = "@optional"  # the hidden variable of optMap/optFlatMap (not an identifier: no clash)


_CHILDREN: dict[type, Callable[[Any], list[Node]]] = {
    Literal: lambda n: [],
    Ident: lambda n: [],
    Select: lambda n: [n.operand],
    Call: lambda n: list(n.args) if n.target is None else [n.target, *n.args],
    Index: lambda n: [n.operand, n.index],
    CreateList: lambda n: list(n.items),
    CreateMap: lambda n: [part for entry in n.entries for part in entry],
    Comprehension: lambda n: [n.range, n.body] if n.guard is None else [n.range, n.guard, n.body],
    Conditional: lambda n: [n.cond, n.then, n.otherwise],
    Bind: lambda n: [n.init, n.body],
}
"""Per node class, its sub-expressions in field order: written out, as reading them through attrs' field list
was a tenth of a large `check` (tests/test_cel_ast_children.py compares the two on the conformance corpus)."""


def children(node: Node) -> list[Node]:
    """A node's direct sub-expressions (through tuples such as call arguments and map entries)."""
    return _CHILDREN[type(node)](node)


def walk(root: Node) -> Iterator[Node]:
    """Every node of the tree, each before its sub-expressions (iterative: trees nest MAX_DEPTH deep). One walk
    for every analysis that looks for node shapes: a walk per analysis through attrs' reflection dominated
    `check` of large sets."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(_CHILDREN[type(node)](node)))


def referenced_fields(node: Node, variable: str) -> frozenset[str] | None:
    """Names read from a map variable as `variable.name` or `variable["name"]` (or optionally, `.?name`,
    `[?"name"]`); None when the expression uses the variable any other way (`size(args)`, `args[k]`), i.e. when it
    may depend on every field."""
    found: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Select) and isinstance(n.operand, Ident) and n.operand.name == variable:
            found.add(n.field)
            continue
        if (isinstance(n, Index) and isinstance(n.operand, Ident) and n.operand.name == variable
                and isinstance(n.index, Literal) and isinstance(n.index.value, str)):
            found.add(n.index.value)
            continue
        name = optional_field(n, variable)  # `variable.?name`, `variable[?"name"]`
        if name is not None:
            found.add(name)
            continue
        if isinstance(n, Ident) and n.name == variable:
            return None
        stack.extend(children(n))
    return frozenset(found)


def optional_field(node: Node, variable: str) -> str | None:
    """The field name of `variable.?name` or `variable[?"name"]`, else None."""
    if isinstance(node, Call) and node.function in (OPT_SELECT, OPT_INDEX) and len(node.args) == 2:
        operand, key = node.args
        if isinstance(operand, Ident) and operand.name == variable and isinstance(key, Literal) \
                and isinstance(key.value, str):
            return key.value
    return None


def qualified_name(node: Node) -> str | None:
    """`a.b.c` as one dotted name when it is a chain of plain selections on an identifier."""
    parts: list[str] = []
    while isinstance(node, Select) and not node.test_only:
        parts.append(node.field)
        node = node.operand
    if not isinstance(node, Ident):
        return None
    parts.append(node.name)
    return ".".join(reversed(parts))


def _ident_name(node: Node, macro: str) -> str:
    if not isinstance(node, Ident):
        raise CelSyntaxError(f"{macro}(): the loop variable must be a simple identifier",
                             node.pos.line, node.pos.column)
    return node.name


# literals -------------------------------------------------------------------------------------------

def literal_value(kind: str, text: str) -> Value:
    if kind == "INT_LIT":
        value = _parse_int(text)
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"integer literal out of range: {text}")
        return value
    if kind == "UINT_LIT":
        value = _parse_int(text[:-1])
        if not 0 <= value <= UINT_MAX:
            raise ValueError(f"unsigned integer literal out of range: {text}")
        return UInt(value)
    if kind == "FLOAT_LIT":
        double = float(text)
        if math.isinf(double):  # cel-go: "invalid double literal"; `x < 1e400` would hold for every x
            raise ValueError(f"double literal out of range: {text} (the largest double is 1.7976931348623157e308)")
        return double
    if kind == "BOOL_LIT":
        return text == "true"
    if kind == "NULL_LIT":
        return None
    if kind in ("STRING_LIT", "MLSTRING_LIT"):
        return _unquote(text, as_bytes=False)
    if kind == "BYTES_LIT":
        return _unquote(text[1:], as_bytes=True)
    raise ValueError(f"unknown literal {text!r}")


def _parse_int(text: str) -> int:
    neg = text.startswith("-")
    body = text[1:] if neg else text
    value = int(body, 16) if body[:2].lower() == "0x" else int(body, 10)
    return -value if neg else value


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   '"': '"', "'": "'", "\\": "\\", "`": "`", "?": "?"}
_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\"'\\`?])|[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-3][0-7]{2})|(.))", re.S)


def _unquote(text: str, as_bytes: bool) -> str | bytes:
    raw = text[:1] in "rR"
    if raw:
        text = text[1:]
    quote = text[:3] if text[:3] in ('"""', "'''") else text[:1]
    body = text[len(quote):-len(quote)]
    if raw:
        return body.encode() if as_bytes else body
    out: list[bytes] = []
    pos = 0
    for m in _ESCAPE.finditer(body):
        out.append(body[pos:m.start()].encode())
        pos = m.end()
        simple, hx, u4, u8, octal, bad = m.groups()
        if bad is not None:
            raise ValueError(f"invalid escape sequence '\\{bad}'")
        if simple is not None:
            out.append(_SIMPLE_ESCAPES[simple].encode())
        elif hx is not None or octal is not None:
            code = int(hx, 16) if hx is not None else int(octal, 8)
            out.append(bytes([code]) if as_bytes else chr(code).encode())
        else:
            if as_bytes:
                raise ValueError("\\u and \\U escapes are not allowed in bytes literals")
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError(f"invalid code point in escape: {m.group(0)}")
            out.append(chr(code).encode())
    out.append(body[pos:].encode())
    data = b"".join(out)
    return data if as_bytes else data.decode("utf-8", errors="strict")
