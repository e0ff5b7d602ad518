"""Split the extension ids into classes that every rule treats alike, one representative each.

When no condition reads the `extension` variable, an extension id matters only through which policies'
extension globs it matches. Ids matching the same globs are decided identically, so asking the solver once
per class, with a concrete representative, covers every id, and each question then holds only the rules that
apply to that class: far smaller formulas than one with the id left open (measured on a 100-rule diff: one
query went from 4-10 s to milliseconds). Classes are enumerated with the solver itself over the id alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import z3

from capengine.analysis.decision import parse_condition
from capengine.analysis.domain import extension_language
from capengine.analysis.fuse import fuse
from capengine.analysis.regex import glob_language
from capengine.analysis.zstrings import NotAnalysable, model_string
from capengine.cel import ast
from capengine.policy import globs
from capengine.policy.engine import CompiledRule

MAX_CLASSES = 256


def _reads_extension(rule: CompiledRule) -> bool:
    if rule.program is None:
        return False
    stack: list[object] = [parse_condition(rule.program.source)]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Ident) and node.name == "extension":
            return True
        if isinstance(node, tuple):
            stack.extend(node)
        elif hasattr(node, "__attrs_attrs__") and not isinstance(node, ast.Pos):
            stack.extend(getattr(node, a.name) for a in node.__attrs_attrs__)
    return False


def representatives(rules: Iterable[CompiledRule], timeout_ms: int) -> list[str] | None:
    """One extension id per class that at least one rule applies to; None when the classes cannot stand in
    for all ids (a condition reads `extension`, too many classes, or the solver gave up): then the caller
    keeps the id symbolic."""
    rules = list(rules)
    if any(_reads_extension(r) for r in rules):
        return None
    patterns = sorted({p for r in rules for p in r.extension_patterns})
    if not patterns:
        return []
    try:
        languages = [glob_language(p, ".") for p in patterns]
    except NotAnalysable:
        return None
    ext = z3.String("extension")
    constraints = [z3.InRe(ext, extension_language()), z3.Or([z3.InRe(ext, lang) for lang in languages])]
    out: list[str] = []
    while len(out) <= MAX_CLASSES:
        solver = z3.Solver()
        solver.set(timeout=timeout_ms)
        solver.add(fuse(constraints))
        result = solver.check()
        if result == z3.unsat:
            return out
        if result == z3.unknown:
            return None
        name = model_string(solver.model(), ext)
        out.append(name)
        vector = [globs.glob_match(p, name) for p in patterns]
        same = [z3.InRe(ext, lang) if hit else z3.Not(z3.InRe(ext, lang)) for lang, hit in zip(languages, vector)]
        constraints.append(z3.Not(z3.And(same)))
    return None
