"""An index over the rules of one (extension, operation), so that deciding a call with 10,000 rules on the
same operation evaluates the few rules that can match instead of all of them.

Each rule's condition is searched for a *guard*: a conjunct at the top level of its `&&` chain that is a
literal test of the request, `path.under("/dir")`, `path.glob("/dir/...")`, `path == "/p"`,
`library == "uuid"`, `args.f == "v"` or `args.f in ["v", ...]`. When a guard is false, CEL's `&&` makes the
whole condition false whatever the other conjuncts do (an error on the other side is absorbed), so the rule
can neither match nor report an error: skipping it changes nothing in the decision, its deciding rule or
its error list. Rules without a guard are always evaluated. Candidates are evaluated in policy order.

A path or library guard is always computable (both are strings in every request); an `args` guard is used
only when the field is present with a plain string or integer value; otherwise every rule guarded on that
field is a candidate and its condition decides, errors included — except, for an absent field, the rules
that also test `has(args.field)`, which are false without it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from capengine.cel import ast
from capengine.policy import paths


class IndexedRule(Protocol):
    order: int

    @property
    def guard_node(self) -> ast.Node | None: ...


@attrs.frozen
class Guard:
    kind: str  # "under" | "library" | "arg"
    keys: tuple[Any, ...]  # directories, library ids, or (type, value) pairs of an arg
    field: str = ""  # the arg name, for kind "arg"
    has_checked: bool = False  # `has(args.field)` is another conjunct: an absent field makes the rule false


def _conjuncts(node: ast.Node) -> Iterable[ast.Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call) and n.function == "_&&_" and n.target is None:
            stack.extend(reversed(n.args))
        else:
            yield n


def _is_var(node: ast.Node, name: str) -> bool:
    return isinstance(node, ast.Ident) and node.name == name


def _str_literal(node: ast.Node) -> str | None:
    return node.value if isinstance(node, ast.Literal) and type(node.value) is str else None


def _arg_key(value: object) -> tuple[type, object] | None:
    """Only str and int (not bool, not uint, not double) values are indexed: for those, CEL equality with a
    literal is exactly Python equality of (type, value)."""
    return (type(value), value) if type(value) in (str, int) else None


def _glob_prefix(pattern: str) -> str | None:
    """The literal directory a path must be under for `pattern` to match it, or None. Normalised to NFC as
    `glob()` normalises its pattern (functions.py)."""
    if not pattern.startswith("/"):
        return None
    literal: list[str] = []
    for segment in unicodedata.normalize("NFC", pattern).split("/")[1:]:
        if not segment or "*" in segment or "?" in segment:
            break
        literal.append(segment)
    return "/" + "/".join(literal) if literal else None


def _guard(node: ast.Node) -> Guard | None:
    if not isinstance(node, ast.Call):
        return None
    args = node.args
    if node.function in ("under", "glob") and node.target is not None and _is_var(node.target, "path"):
        literal = _str_literal(args[0]) if len(args) == 1 else None
        if literal is None:
            return None
        if node.function == "glob":
            literal = _glob_prefix(literal)
            if literal is None:
                return None
        try:
            directory = paths.canonical_path(literal)
        except paths.PathError:
            return None
        return None if directory in ("", "/") else Guard("under", (directory,))
    if node.function == "_==_" and len(args) == 2:
        for var, lit in (args, args[::-1]):
            text = _str_literal(lit)
            if _is_var(var, "path") and text is not None and text != "/" and _is_canonical(text):
                return Guard("under", (text,))  # equal implies under; the condition still decides
            if _is_var(var, "library") and text is not None:
                return Guard("library", (text,))
            if isinstance(var, ast.Select) and _is_var(var.operand, "args") and not var.test_only \
                    and isinstance(lit, ast.Literal):
                key = _arg_key(lit.value)
                if key is not None:
                    return Guard("arg", (key,), var.field)
        return None
    if node.function == "@in" and len(args) == 2:
        var, items = args
        if isinstance(var, ast.Select) and _is_var(var.operand, "args") and not var.test_only \
                and isinstance(items, ast.CreateList) and items.items \
                and all(isinstance(i, ast.Literal) for i in items.items):
            keys = [_arg_key(i.value) for i in items.items if isinstance(i, ast.Literal)]
            if all(k is not None for k in keys):
                return Guard("arg", tuple(keys), var.field)
    return None


def _is_canonical(text: str) -> bool:
    try:
        return paths.canonical_path(text) == text
    except paths.PathError:
        return False


_PREFERENCE = {"under": 0, "library": 1, "arg": 2}


def guard_of(condition: ast.Node | None) -> Guard | None:
    """The most selective guard among the top-level conjuncts: the deepest directory, else a library,
    else an argument."""
    if condition is None:
        return None
    conjuncts = list(_conjuncts(condition))
    guards = [g for g in map(_guard, conjuncts) if g is not None]
    if not guards:
        return None
    best = min(guards, key=lambda g: (_PREFERENCE[g.kind], -max(len(str(k)) for k in g.keys)))
    if best.kind == "arg" and any(isinstance(c, ast.Select) and c.test_only and _is_var(c.operand, "args")
                                  and c.field == best.field for c in conjuncts):
        best = attrs.evolve(best, has_checked=True)
    return best


def _ancestors(path: str) -> list[str]:
    """"/a/b/c" -> ["/a", "/a/b", "/a/b/c"]: every directory `path` is under (the root is never a key)."""
    if not path.startswith("/"):
        return []
    out = []
    end = path.find("/", 1)
    while end != -1:
        out.append(path[:end])
        end = path.find("/", end + 1)
    if len(path) > 1:
        out.append(path)
    return out


class RuleIndex:
    """Candidate rules for one (extension, operation), selected by the request's path, library and args."""

    def __init__(self, rules: Sequence[Any]) -> None:
        self.always: list[Any] = []
        self.by_directory: dict[str, list[Any]] = {}
        self.by_library: dict[str, list[Any]] = {}
        self.by_arg: dict[str, dict[tuple[type, object], list[Any]]] = {}
        self.odd_value: dict[str, list[Any]] = {}  # rules guarded on the field, for values not indexed
        self.absent: dict[str, list[Any]] = {}  # rules guarded on the field that can still match without it
        for rule in rules:
            guard = guard_of(rule.guard_node)
            if guard is None:
                self.always.append(rule)
            elif guard.kind == "under":
                self.by_directory.setdefault(guard.keys[0], []).append(rule)
            elif guard.kind == "library":
                self.by_library.setdefault(guard.keys[0], []).append(rule)
            else:
                buckets = self.by_arg.setdefault(guard.field, {})
                for key in dict.fromkeys(guard.keys):
                    buckets.setdefault(key, []).append(rule)
                self.odd_value.setdefault(guard.field, []).append(rule)
                if not guard.has_checked:
                    self.absent.setdefault(guard.field, []).append(rule)

    def select(self, path: str, library: str, args: Mapping[str, Any]) -> list[Any]:
        """The rules that may match, in policy order."""
        found: list[Any] = list(self.always)
        groups = 1 if found else 0
        for directory in _ancestors(path):
            bucket = self.by_directory.get(directory)
            if bucket:
                found.extend(bucket)
                groups += 1
        bucket = self.by_library.get(library)
        if bucket:
            found.extend(bucket)
            groups += 1
        for field, buckets in self.by_arg.items():
            if field not in args:
                bucket = self.absent.get(field)
            else:
                key = _arg_key(args[field])
                bucket = buckets.get(key) if key is not None else self.odd_value[field]
            if bucket:
                found.extend(bucket)
                groups += 1
        if groups > 1:
            found.sort(key=_order)
        return found


def _order(rule: Any) -> int:
    return int(rule.order)
