"""Branch coverage of policy tests: each `&&`/`||` operand of a rule's condition seen both true and false.

Rule coverage says a rule decided some case; it cannot tell that `!path.under("/secrets") && has(args.length)`
was only ever tested with `has(args.length)` true, leaving the other half of the guard untested. The operands
are found on the condition's own text (so a report names them as the author wrote them): split at the
top-level operator of the parsed expression, recursively, and each piece compiled on its own. Every operand is
evaluated on every case the rule is a candidate for (its extension and operation apply), without short-circuit,
so "seen false" means a request really made that operand false.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from capengine.cel import ast as cel_ast
from capengine.cel.compiler import Program, compile_expression
from capengine.cel.values import CelError, OptionalValue
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.loader import POLICY_DECLS

_OPERATORS = {"_&&_": "&&", "_||_": "||"}
_OPEN, _CLOSE = "([{", ")]}"


@attrs.define
class Branch:
    """One operand of a condition and what the cases made of it."""

    text: str
    program: Program | None  # None: could not be compiled alone (then it is never counted covered)
    seen_true: int = 0
    seen_false: int = 0
    seen_error: int = 0

    @property
    def covered(self) -> bool:
        return self.seen_true > 0 and self.seen_false > 0

    def observe(self, activation: dict[str, Any]) -> None:
        if self.program is None:
            return
        try:
            value = self.program.evaluate(activation)
        except CelError:
            self.seen_error += 1
            return
        if value is True:
            self.seen_true += 1
        elif value is False:
            self.seen_false += 1
        else:
            self.seen_error += 1

    def missing(self) -> str:
        """Which truth value no case produced ("" when covered)."""
        if self.program is None:
            return "could not be evaluated on its own"
        lacks = [name for name, seen in (("true", self.seen_true), ("false", self.seen_false)) if not seen]
        return "never " + " nor ".join(lacks) if lacks else ""

    def to_json(self) -> dict[str, Any]:
        return {"operand": self.text, "true": self.seen_true, "false": self.seen_false, "errors": self.seen_error,
                "covered": self.covered}


def operands(condition: str) -> list[str]:
    """The operands of the top-level `&&`/`||` structure of `condition`, as source text; the whole condition
    (stripped) when it is not such a combination or cannot be split reliably."""
    text = _strip_parens(condition.strip())
    try:
        node = cel_ast.parse(text, POLICY_ENVIRONMENT.namespaced)
    except cel_ast.CelSyntaxError:
        return [text]
    op = _OPERATORS.get(node.function, "") if isinstance(node, cel_ast.Call) and node.target is None else ""
    if not op:
        return [text]
    pieces = _split(text, op)
    if len(pieces) < 2:
        return [text]
    out: list[str] = []
    for piece in pieces:
        out.extend(operands(piece))
    return out


def branches(condition: str) -> list[Branch]:
    return [Branch(text, _compile(text)) for text in operands(condition)]


def operand_values(condition: str, activation: dict[str, Any]) -> list[tuple[str, str]]:
    """Each `&&`/`||` operand of `condition` with what it evaluates to on one request, in CEL's own notation
    (`true`, `"text"`, `error: ...`): what `capengine explain` shows so the deciding sub-expression is visible.
    Empty when the condition is a single operand (its value is the rule's)."""
    found = operands(condition)
    if len(found) < 2:
        return []
    out = []
    for text in found:
        program = _compile(text)
        if program is None:
            out.append((text, "not evaluable on its own"))
            continue
        try:
            out.append((text, cel_text(program.evaluate(activation))))
        except CelError as exc:
            out.append((text, f"error: {exc}"))
    return out


def cel_text(value: object) -> str:
    """A value as CEL writes it: true/false, null, quoted strings, lists and maps of those."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cel_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{cel_text(k)}: {cel_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, OptionalValue):
        return f"optional.of({cel_text(value.value)})" if value.has_value else "optional.none()"
    return str(value)


def _compile(text: str) -> Program | None:
    program, errors = compile_expression(text, POLICY_DECLS, POLICY_ENVIRONMENT, total=True)
    if program is None:  # typed args made it a type error alone? evaluate dynamically, as the rule would
        program, errors = compile_expression(text, None, POLICY_ENVIRONMENT)
    return program if not errors else None


def _strip_parens(text: str) -> str:
    while text.startswith("(") and text.endswith(")") and _matching_close(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _matching_close(text: str, start: int) -> int:
    depth = 0
    for i, ch in _code_chars(text):
        if i < start:
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split(text: str, op: str) -> list[str]:
    """`text` cut at every occurrence of `op` outside brackets and string literals. When the parsed root is
    `op`, those are exactly its operands: the other logical operator binds tighter (`&&`) or would have been the
    root (`||`), and a `?:` at depth 0 would have been the root too."""
    pieces, depth, last, skip = [], 0, 0, -1
    for i, ch in _code_chars(text):
        if i <= skip:
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and text.startswith(op, i):
            pieces.append(text[last:i].strip())
            last, skip = i + len(op), i + len(op) - 1
    pieces.append(text[last:].strip())
    return [p for p in pieces if p] if all(pieces) else []


def _code_chars(text: str) -> Iterable[tuple[int, str]]:
    """(index, char) of every character outside string literals (CEL: '..', "..", triple-quoted, raw) and
    `//` comments (an operator or a quote in a comment is no part of the expression)."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        if ch not in "'\"":
            yield i, ch
            i += 1
            continue
        raw = i > 0 and text[i - 1] in "rR"
        quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else ch
        i += len(quote)
        while i < n and not text.startswith(quote, i):
            i += 2 if text[i] == "\\" and not raw else 1
        i += len(quote)
