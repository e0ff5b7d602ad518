"""Regular expressions and globs as Z3 regular languages.

A CEL `s.matches(re)` is an RE2 *search*: true when some substring matches. It is translated into the set of
whole strings it accepts, `.*R.*` with the anchors taken into account, so that the solver reasons about exactly
the strings the engine would accept. The regex is parsed with Python's own parser (re._parser), whose syntax
agrees with RE2 on the subset translated here; constructs where the two disagree or that a regular language
cannot express (backreferences, lookaround, word boundaries, anchors in the middle, POSIX classes, `{,n}`)
raise NotAnalysable instead of being approximated. Flavour "python" is the JSON-Schema `pattern` dialect that
fastjsonschema runs with Python's `re` (Unicode `\\d`, `$` rewritten to `\\Z`).

Globs are not re-implemented: the regex the policy layer compiles for a glob is itself translated (flavour
"python"), so the encoding follows the engine's glob rules exactly.

Character sets are kept as sorted interval lists so that negation and case folding are exact.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from typing import Any, Literal

import z3

from capengine.analysis.zstrings import MAX_CHAR, NotAnalysable, zchar, zstr
from capengine.cel.values import CelError
from capengine.policy import functions, globs

# the regex parser of the standard library; private modules without type stubs, hence imported by name
sre_parse: Any = importlib.import_module("re._parser")
sre_c: Any = importlib.import_module("re._constants")

Flavour = Literal["re2", "python"]
Intervals = list[tuple[int, int]]
_RE = z3.ReSort(z3.StringSort())
_NEWLINE = ord("\n")
_RE2_CLASSES: dict[object, Intervals] = {
    sre_c.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre_c.CATEGORY_SPACE: [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    sre_c.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}
_NEGATED = {sre_c.CATEGORY_NOT_DIGIT: sre_c.CATEGORY_DIGIT, sre_c.CATEGORY_NOT_SPACE: sre_c.CATEGORY_SPACE,
            sre_c.CATEGORY_NOT_WORD: sre_c.CATEGORY_WORD}
_START = (sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING)
_END = (sre_c.AT_END, sre_c.AT_END_STRING)


def union(parts: list[z3.ReRef]) -> z3.ReRef:
    if not parts:
        return z3.Empty(_RE)
    return parts[0] if len(parts) == 1 else z3.Union(*parts)


def concat(parts: list[z3.ReRef]) -> z3.ReRef:
    if not parts:
        return z3.Re(zstr(""))
    return parts[0] if len(parts) == 1 else z3.Concat(*parts)


def normalise(intervals: Intervals) -> Intervals:
    out: Intervals = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def complement(intervals: Intervals) -> Intervals:
    out: Intervals = []
    nxt = 0
    for lo, hi in normalise(intervals):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CHAR:
        out.append((nxt, MAX_CHAR))
    return out


def char_set(intervals: Intervals) -> z3.ReRef:
    return union([z3.Re(zchar(lo)) if lo == hi else z3.Range(zchar(lo), zchar(hi)) for lo, hi in normalise(intervals)])


@cache
def _fold_orbits() -> dict[int, frozenset[int]]:
    """Simple case-folding orbits (k/K/U+212A KELVIN SIGN, s/S/U+017F ...), the equivalence RE2's (?i) uses."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for cp in range(MAX_CHAR + 1):
        ch = chr(cp)
        for other in (ch.lower(), ch.upper(), ch.casefold()):
            if len(other) == 1 and other != ch:
                a, b = find(cp), find(ord(other))
                if a != b:
                    parent[a] = b
    groups: dict[int, set[int]] = {}
    for cp in parent:
        groups.setdefault(find(cp), set()).add(cp)
    for root, members in groups.items():
        members.add(root)
    return {cp: frozenset(members) for members in groups.values() for cp in members}


def fold(intervals: Intervals) -> Intervals:
    orbits = _fold_orbits()
    extra: Intervals = []
    for cp, members in orbits.items():
        if any(lo <= cp <= hi for lo, hi in intervals):
            extra.extend((m, m) for m in members)
    return normalise(intervals + extra)


class _Translator:
    def __init__(self, flavour: Flavour, pattern: str) -> None:
        self.flavour = flavour
        self.pattern = pattern

    def fail(self, what: str) -> NotAnalysable:
        return NotAnalysable(f"regex {self.pattern!r}: {what} is outside the analysable fragment")

    def seq(self, items: list, icase: bool, dotall: bool) -> z3.ReRef:
        return concat([self.item(op, av, icase, dotall) for op, av in items])

    def chars(self, intervals: Intervals, icase: bool) -> z3.ReRef:
        return char_set(fold(intervals) if icase else intervals)

    def item(self, op: object, av: object, icase: bool, dotall: bool) -> z3.ReRef:
        if op is sre_c.LITERAL:
            assert isinstance(av, int)
            return self.chars([(av, av)], icase)
        if op is sre_c.NOT_LITERAL:
            assert isinstance(av, int)
            base = fold([(av, av)]) if icase else [(av, av)]
            return char_set(complement(base))
        if op is sre_c.ANY:
            return char_set([(0, MAX_CHAR)] if dotall else complement([(_NEWLINE, _NEWLINE)]))
        if op is sre_c.IN:
            assert isinstance(av, list)
            return char_set(self.char_class(av, icase))
        if op is sre_c.BRANCH:
            assert isinstance(av, tuple)
            return union([self.seq(list(b), icase, dotall) for b in av[1]])
        if op is sre_c.SUBPATTERN:
            assert isinstance(av, tuple)
            _group, add, delete, body = av
            icase = (icase or bool(add & re.I)) and not delete & re.I
            dotall = (dotall or bool(add & re.S)) and not delete & re.S
            if (add | delete) & ~(re.I | re.S | re.U):
                raise self.fail("an inline flag other than i or s")
            return self.seq(list(body), icase, dotall)
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            assert isinstance(av, tuple)
            lo, hi, body = av
            inner = self.seq(list(body), icase, dotall)
            if hi is sre_c.MAXREPEAT:
                star = z3.Star(inner)
                return star if lo == 0 else z3.Concat(z3.Loop(inner, lo, lo), star)
            if hi == 0:
                return z3.Re(zstr(""))
            return z3.Loop(inner, lo, hi)
        if op is sre_c.AT:
            raise self.fail(f"the anchor {av} away from the start or end")
        raise self.fail(f"the construct {op}")

    def char_class(self, items: list, icase: bool) -> Intervals:
        negate = False
        out: Intervals = []
        for op, av in items:
            if op is sre_c.NEGATE:
                negate = True
            elif op is sre_c.LITERAL:
                out.append((av, av))
            elif op is sre_c.RANGE:
                out.append(av)
            elif op is sre_c.CATEGORY:
                out.extend(self.category(av))
            else:
                raise self.fail(f"the class item {op}")
        if icase:
            out = fold(out)
        return complement(out) if negate else normalise(out)

    def category(self, cat: object) -> Intervals:
        if self.flavour == "python":
            raise self.fail("a Unicode character category (Python's \\d, \\w, \\s)")
        if cat in _RE2_CLASSES:
            return _RE2_CLASSES[cat]
        if cat in _NEGATED:
            return complement(_RE2_CLASSES[_NEGATED[cat]])
        raise self.fail(f"the category {cat}")


_SUSPICIOUS = ("[:", "{,", "\\Q", "\\C", "\\p", "\\P", "\\z", "\\x{")


@cache
def search_language(pattern: str, flavour: Flavour = "re2") -> z3.ReRef:
    """The set of strings in which `pattern` finds a match (RE2 `search`, CEL `matches`)."""
    for marker in _SUSPICIOUS:
        if marker in pattern:
            raise NotAnalysable(f"regex {pattern!r}: {marker!r} is outside the analysable fragment")
    try:
        tree = sre_parse.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise NotAnalysable(f"regex {pattern!r} uses syntax the analyser cannot read: {exc}") from None
    flags = tree.state.flags
    if flags & ~(re.I | re.S | re.U):
        raise NotAnalysable(f"regex {pattern!r}: only the i and s flags are analysable")
    translator = _Translator(flavour, pattern)
    icase, dotall = bool(flags & re.I), bool(flags & re.S)
    items = list(tree)
    branches = [items]
    if len(items) == 1 and items[0][0] is sre_c.BRANCH:
        branches = [list(b) for b in items[0][1][1]]
    anything = z3.Full(_RE)
    out = []
    for branch in branches:
        start = bool(branch) and branch[0][0] is sre_c.AT and branch[0][1] in _START
        body = branch[1:] if start else branch
        end = bool(body) and body[-1][0] is sre_c.AT and body[-1][1] in _END
        body = body[:-1] if end else body
        core = translator.seq(body, icase, dotall)
        out.append(concat(([] if start else [anything]) + [core] + ([] if end else [anything])))
    return union(out)


def compiled_language(compiled: re.Pattern[str]) -> z3.ReRef:
    """The strings a compiled Python regex matches in full (`fullmatch`), with its flags."""
    flags = "".join(f for f, bit in (("s", re.S), ("i", re.I)) if compiled.flags & bit)
    prefix = f"(?{flags})" if flags else ""
    return search_language(f"{prefix}\\A(?:{compiled.pattern})\\Z", "python")


@cache
def glob_language(pattern: str, sep: str) -> z3.ReRef:
    """The names a segment-aware glob matches (extension ids, operation names): translated from the very
    regex capengine.policy.globs compiles, so the encoding cannot drift from the engine."""
    try:
        return compiled_language(globs.compile_glob(pattern, sep).python)
    except globs.GlobError as exc:
        raise NotAnalysable(f"glob {pattern!r}: {exc}") from None


@cache
def path_glob_language(pattern: str) -> z3.ReRef:
    """The paths `path.glob(pattern)` accepts, translated from the matcher the policy function itself compiles
    (whatever normalisation or segment rules it applies)."""
    try:
        matcher = functions._compile_glob(pattern)
    except CelError as exc:
        raise NotAnalysable(f"glob {pattern!r}: {exc}") from None
    compiled = getattr(matcher, "__self__", None)  # the bound `fullmatch` of a compiled glob
    compiled = compiled.python if isinstance(compiled, globs.Glob) else compiled
    if not isinstance(compiled, re.Pattern):
        raise NotAnalysable(f"glob {pattern!r}: the matcher is not a regular expression")
    return compiled_language(compiled)
