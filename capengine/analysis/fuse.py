"""Fuse Boolean combinations of regular-membership tests on the same variable into one membership test.

Policies test the path (and library, extension, string arguments) with several predicates joined by
`&&`/`||`/`!`; each is a membership `x in R`. Z3 decides one membership in an intersection of languages in
milliseconds, but the same question split into several memberships joined by Boolean connectives makes its
string solver case-split and can take seconds (measured: 6 ms vs 1 s for `library in UUID && library != ""`).
So, bottom-up: `not (x in R)` -> `x in ~R`, `(x in R) and (x in S)` -> `x in R & S`, likewise `or` -> union.
The rewrite is an equivalence, so proofs and witnesses are unaffected.
"""

from __future__ import annotations

from typing import TypeAlias

import z3


def _var_membership(e: z3.ExprRef) -> tuple[z3.ExprRef, z3.ReRef] | None:
    if z3.is_app_of(e, z3.Z3_OP_SEQ_IN_RE):
        x, r = e.children()
        if z3.is_const(x) and x.decl().kind() == z3.Z3_OP_UNINTERPRETED:
            return x, r
    return None


_Part: TypeAlias = "tuple[z3.ExprRef, z3.ReRef] | z3.BoolRef"


def _part(e: z3.ExprRef, negate: bool = False) -> _Part:
    """A membership (var, regex) or a formula, with negations pushed down to the memberships (De Morgan),
    so that nested `and`/`or` flatten and every test of a variable can meet the others."""
    member = _var_membership(e)
    if member is not None:
        return (member[0], z3.Complement(member[1])) if negate else member
    if z3.is_not(e):
        return _part(e.children()[0], not negate)
    if z3.is_and(e) or z3.is_or(e):
        return _combine([_part(c, negate) for c in e.children()], z3.is_and(e) != negate)
    if z3.is_true(e) or z3.is_false(e):
        return z3.BoolVal(z3.is_true(e) != negate)
    return z3.Not(e) if negate else e


def _flatten(parts: list[_Part], conjunction: bool) -> list[_Part]:
    out: list[_Part] = []
    for p in parts:
        if not isinstance(p, tuple) and (z3.is_and(p) if conjunction else z3.is_or(p)):
            for c in p.children():
                member = _var_membership(c)
                out.append(member if member is not None else c)
        else:
            out.append(p)
    return out


def _combine(parts: list[_Part], conjunction: bool) -> _Part:
    groups: dict[int, tuple[z3.ExprRef, list[z3.ReRef]]] = {}
    formulas: list[z3.BoolRef] = []
    for p in _flatten(parts, conjunction):
        if isinstance(p, tuple):
            groups.setdefault(p[0].get_id(), (p[0], []))[1].append(p[1])
            continue
        if z3.is_true(p) if conjunction else z3.is_false(p):
            continue  # neutral element
        if z3.is_false(p) if conjunction else z3.is_true(p):
            return z3.BoolVal(not conjunction)  # absorbing element
        formulas.append(p)
    join = z3.Intersect if conjunction else z3.Union
    fused: list[_Part] = []
    for var, langs in groups.values():
        fused.append((var, langs[0] if len(langs) == 1 else join(*langs)))
    if len(fused) == 1 and not formulas:
        return fused[0]
    out = [as_formula(f) for f in fused] + formulas
    if not out:
        return z3.BoolVal(conjunction)
    if len(out) == 1:
        return out[0]
    return z3.And(*out) if conjunction else z3.Or(*out)


def as_formula(p: _Part) -> z3.BoolRef:
    if isinstance(p, tuple):
        return z3.InRe(p[0], p[1])
    return p


def fuse(formulas: list[z3.BoolRef]) -> z3.BoolRef:
    return as_formula(_combine([_part(f) for f in formulas], True))
