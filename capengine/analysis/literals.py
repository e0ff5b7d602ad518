"""The literals a policy set tests the request against: the candidate regions, libraries and argument values
that `analyze permissions` asks the solver about."""

from __future__ import annotations

import attrs

from capengine.analysis.decision import parse_condition
from capengine.cel import ast
from capengine.policy.engine import CompiledRule


@attrs.define
class Literals:
    directories: set[str] = attrs.Factory(set)  # path.under(D)
    globs: set[str] = attrs.Factory(set)  # path.glob(G)
    prefixes: set[str] = attrs.Factory(set)  # path.startsWith(P)
    libraries: set[str] = attrs.Factory(set)  # library == L / L in [...]
    strings: dict[str, set[str]] = attrs.Factory(dict)  # args field -> compared/prefix literals
    ints: dict[str, set[int]] = attrs.Factory(dict)  # args field -> compared int literals
    fields: set[str] = attrs.Factory(set)  # args fields read


def _subject(node: ast.Node) -> str | None:
    """"path", "library", "args.<f>" or None."""
    if isinstance(node, ast.Ident) and node.name in ("path", "library"):
        return node.name
    if isinstance(node, ast.Select) and isinstance(node.operand, ast.Ident) and node.operand.name == "args":
        return f"args.{node.field}"
    if (isinstance(node, ast.Index) and isinstance(node.operand, ast.Ident) and node.operand.name == "args"
            and isinstance(node.index, ast.Literal) and type(node.index.value) is str):
        return f"args.{node.index.value}"
    return None


def collect(rules: list[CompiledRule]) -> Literals:
    out = Literals()
    for rule in rules:
        if rule.program is None:
            continue
        for node in ast.walk(parse_condition(rule.program.source)):
            if isinstance(node, ast.Select) and _subject(node) and _subject(node) != "path":
                out.fields.add(node.field)
            optional = ast.optional_field(node, "args")  # args.?f, args[?"f"]
            if optional is not None:
                out.fields.add(optional)
            if isinstance(node, ast.Call):
                _record(out, node)
    return out


def _record(out: Literals, node: ast.Call) -> None:
    operands = ((node.target,) if node.target is not None else ()) + node.args
    if len(operands) != 2:
        return
    left, right = operands
    lits = [right.value] if isinstance(right, ast.Literal) else (
        [i.value for i in right.items if isinstance(i, ast.Literal)] if isinstance(right, ast.CreateList) else [])
    subject = _subject(left)
    if subject is None and isinstance(left, ast.Literal) and node.function in ("_==_", "_!=_"):
        subject, lits = _subject(right), [left.value]
    if subject is None:
        return
    fn = node.function
    for lit in lits:
        if subject == "path" and type(lit) is str:
            {"under": out.directories, "glob": out.globs, "startsWith": out.prefixes}.get(fn, set()).add(lit)
        elif subject == "library" and type(lit) is str and fn in ("_==_", "_!=_", "@in"):
            out.libraries.add(lit)
        elif subject.startswith("args."):
            name = subject[5:]
            if type(lit) is str and fn in ("_==_", "_!=_", "@in", "startsWith"):
                out.strings.setdefault(name, set()).add(lit)
            elif type(lit) is int:
                out.ints.setdefault(name, set()).add(lit)
