"""An index over the rules of one (extension, operation), so that deciding a call with 10,000 rules on the
same operation evaluates the few rules that can match instead of all of them.

Each rule's condition is searched for a *guard*: a conjunct at the top level of its `&&` chain that is a
literal test of the request, `path.under("/dir")`, `path.glob("/dir/...")`, `path == "/p"`,
`path.startsWith("/dir/..")`, `path.matches("^/dir/..")` (the literal prefix of an anchored pattern),
`path.endsWith("lit")`, `library == "uuid"`, `args.f == lit`, `args.f in [lits]`, or integer bounds on
`args.f` (`args.f >= K && args.f < K + N` is `args.f in [K, ..., K + N - 1]` for N <= 64; a bound on one
side only is looked up in a sorted list). When a guard is false, CEL's `&&` makes the whole condition false
whatever the other conjuncts do (an error on the other side is absorbed), so the rule can neither match nor
report an error: skipping it changes nothing in the decision, its deciding rule or its error list. Rules
without a guard are always evaluated. Candidates are evaluated in policy order.

A condition `A || B || ...` is indexed when every disjunct has a guard: it is selected when any of them
holds. Skipping it is exact only because each guard, when the index says it is false, makes its disjunct
exactly `false` (never an error, which `||` would not absorb): `false || false` is false.

The index skips a rule only where its guard is *known* false, i.e. evaluates to `false` without error.
A path or library guard is always computable (both are strings in every request); an `args` guard only when
the field is present with a plain string or integer value (not bool, not uint, not double: `3.0 == 3` in
CEL); otherwise every rule guarded on that field is a candidate and its condition decides, errors included
— except, for an absent field, the rules that also test `has(args.field)`, which are false without it. A
string value skips equality-guarded rules, but not rules guarded by integer bounds: `"a" < 3` is an error.
A metered condition (cost checked at run time) has a stricter rule, since its spent budget is absorbed by
no `&&`: only guards that no conjunct of unbounded cost precedes (_metered_guards).
"""

from __future__ import annotations

import bisect
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from capengine.cel import ast
from capengine.cel.standard import compile_regex
from capengine.cel.values import INT_MAX, INT_MIN, CelError
from capengine.policy import paths

MAX_RANGE = 64  # an integer range up to this many values is indexed as that many equality keys


class IndexedRule(Protocol):
    order: int

    @property
    def guard_node(self) -> ast.Node | None: ...


@attrs.frozen
class Guard:
    # "under": path under keys[0] | "library": library == keys[0] | "suffix": path ends with keys[0]
    # "arg": args[field] is one of keys ((type, value) pairs) | "above": int args[field] >= keys[0]
    # "below": int args[field] < keys[0]
    kind: str
    keys: tuple[Any, ...]
    field: str = ""  # the arg name, for kinds "arg", "above", "below"
    has_checked: bool = False  # `has(args.field)` is another conjunct: an absent field makes the rule false
    numeric: bool = False  # "arg" keys from integer bounds: a string value makes the comparison an error


def _conjuncts(node: ast.Node) -> Iterable[ast.Node]:
    return _flatten(node, "_&&_")


def _flatten(node: ast.Node, function: str) -> Iterable[ast.Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call) and n.function == function and n.target is None:
            stack.extend(reversed(n.args))
        else:
            yield n


def _is_var(node: ast.Node, name: str) -> bool:
    return isinstance(node, ast.Ident) and node.name == name


def _str_literal(node: ast.Node) -> str | None:
    return node.value if isinstance(node, ast.Literal) and type(node.value) is str else None


def _int_constant(node: ast.Node) -> int | None:
    """The value of an int literal or of `+`/`-` over int literals (`K + 3`), or None. None too when CEL would
    overflow (an error, not a bound)."""
    if isinstance(node, ast.Literal):
        value = node.value if type(node.value) is int else None
    elif isinstance(node, ast.Call) and node.target is None and len(node.args) == 2 \
            and node.function in ("_+_", "_-_"):
        left, right = _int_constant(node.args[0]), _int_constant(node.args[1])
        if left is None or right is None:
            return None
        value = left + right if node.function == "_+_" else left - right
    elif isinstance(node, ast.Call) and node.target is None and len(node.args) == 1 and node.function == "-_":
        inner = _int_constant(node.args[0])
        value = None if inner is None else -inner
    else:
        return None
    return value if value is not None and INT_MIN <= value <= INT_MAX else None


def _arg_field(node: ast.Node) -> str | None:
    if isinstance(node, ast.Select) and _is_var(node.operand, "args") and not node.test_only:
        return node.field
    return None


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


def _prefix_directory(prefix: str) -> str | None:
    """A path starting with `prefix` starts with "<this>/", so it is under this directory in the sense of
    the index (an exact string prefix ending at a '/'; request paths are canonical). None if that is only
    the root. The directory need not be canonical: a non-canonical one ("/a//b", NFD) is a prefix of no
    request path, so its rules are never selected, and they could never match either."""
    cut = prefix.rfind("/")
    return prefix[:cut] if cut > 0 and prefix.startswith("/") else None


_REGEX_META = frozenset("\\.+*?()|[]{}^$")
_QUANTIFIERS = frozenset("*+?{")
_PUNCTUATION = frozenset(string.punctuation)


def _regex_literal_prefix(pattern: str) -> str | None:
    """What every string `pattern` finds (RE2 search) starts with, when the pattern is anchored with `^`;
    conservative: literal characters and escaped ASCII punctuation up to the first metacharacter, without a
    character a quantifier applies to. None for a pattern that does not compile (`matches` then errors on
    every path: the rule must always be evaluated), that can reach past its `^` through a top-level `|`, or
    that uses `\\Q..\\E` or `[:class:]` (whose quoting this scan does not follow)."""
    if not pattern.startswith("^") or "\\Q" in pattern or "[:" in pattern or not _no_top_level_bar(pattern):
        return None
    try:
        compile_regex(pattern)
    except CelError:
        return None
    literal: list[str] = []
    i = 1
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1:i + 2]
            if escaped not in _PUNCTUATION:
                break
            char, width = escaped, 2
        elif char in _REGEX_META:
            break
        else:
            width = 1
        if pattern[i + width:i + width + 1] in _QUANTIFIERS:
            break
        literal.append(char)
        i += width
    return "".join(literal)


def _no_top_level_bar(pattern: str) -> bool:
    """No `|` outside parentheses (one would make the `^` apply to its first branch only). Escapes skip the
    next character; a character class `[..]` (`]` first in it is literal) is skipped whole."""
    depth, i, n = 0, 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i += 1
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            if i >= n:
                return False
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth <= 0:
            return False
        i += 1
    return True


def _path_call(node: ast.Call, function: str) -> str | None:
    """The literal argument of `path.function(lit)` (or `function(path, lit)`), or None."""
    if node.function != function:
        return None
    if node.target is not None and _is_var(node.target, "path") and len(node.args) == 1:
        return _str_literal(node.args[0])
    if node.target is None and len(node.args) == 2 and _is_var(node.args[0], "path"):
        return _str_literal(node.args[1])
    return None


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
    for function in ("startsWith", "matches"):
        argument = _path_call(node, function)
        if argument is not None:
            prefix = argument if function == "startsWith" else _regex_literal_prefix(argument)
            above = None if prefix is None else _prefix_directory(prefix)
            return None if above is None else Guard("under", (above,))
    suffix = _path_call(node, "endsWith")
    if suffix is not None and node.target is not None:
        return Guard("suffix", (suffix,)) if suffix else None
    if node.function == "_==_" and len(args) == 2:
        for var, lit in (args, args[::-1]):
            text = _str_literal(lit)
            # equal implies under; the condition still decides. Not "" (a request without a path, which no
            # directory probe looks up) and not the root.
            if _is_var(var, "path") and text is not None and text not in ("", "/") and _is_canonical(text):
                return Guard("under", (text,))
            if _is_var(var, "library") and text is not None:
                return Guard("library", (text,))
            field = _arg_field(var)
            if field is not None and isinstance(lit, ast.Literal):
                key = _arg_key(lit.value)
                if key is not None:
                    return Guard("arg", (key,), field)
        return None
    if node.function == "@in" and len(args) == 2:
        field, items = _arg_field(args[0]), args[1]
        if field is not None and isinstance(items, ast.CreateList) and items.items \
                and all(isinstance(i, ast.Literal) for i in items.items):
            keys = [_arg_key(i.value) for i in items.items if isinstance(i, ast.Literal)]
            if all(k is not None for k in keys):
                return Guard("arg", tuple(keys), field)
    return None


# `args.f OP K` as (inclusive lower, exclusive upper) adjustments; `K OP args.f` uses the mirrored operator.
_MIRROR = {"_<_": "_>_", "_<=_": "_>=_", "_>_": "_<_", "_>=_": "_<=_"}


def _bound(node: ast.Node) -> tuple[str, int | None, int | None] | None:
    """(field, lower, upper) for an integer comparison of an arg with a constant: the int values of the field
    for which it holds are lower <= v < upper (None: unbounded)."""
    if not (isinstance(node, ast.Call) and node.target is None and node.function in _MIRROR
            and len(node.args) == 2):
        return None
    function, (left, right) = node.function, node.args
    field = _arg_field(left)
    if field is None:
        field, left, right, function = _arg_field(right), right, left, _MIRROR[function]
    constant = _int_constant(right)
    if field is None or constant is None:
        return None
    if function == "_<_":
        return field, None, constant
    if function == "_<=_":
        return field, None, constant + 1
    if function == "_>_":
        return field, constant + 1, None
    return field, constant, None


def _bound_guards(conjuncts: Sequence[ast.Node]) -> list[Guard]:
    """Each field's integer bounds across the conjuncts, intersected (every conjunct must hold)."""
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    for node in conjuncts:
        found = _bound(node)
        if found is None:
            continue
        field, low, high = found
        if low is not None:
            lows[field] = max(low, lows.get(field, low))
        if high is not None:
            highs[field] = min(high, highs.get(field, high))
    guards = []
    for field in dict.fromkeys([*lows, *highs]):
        low, high = lows.get(field), highs.get(field)
        if low is not None and high is not None and 0 < high - low <= MAX_RANGE:
            guards.append(Guard("arg", tuple((int, v) for v in range(low, high)), field, numeric=True))
        elif low is not None:
            guards.append(Guard("above", (low,), field))
        elif high is not None:
            guards.append(Guard("below", (high,), field))
    return guards


def _is_canonical(text: str) -> bool:
    try:
        return paths.canonical_path(text) == text
    except paths.PathError:
        return False


_PREFERENCE = {"under": 0, "library": 1, "suffix": 2, "arg": 3, "above": 4, "below": 4}


def _is_has(node: ast.Node, field: str | None = None) -> bool:
    """`has(args.f)` (of `field`, when given): never an error, never charged to a metered budget."""
    return isinstance(node, ast.Select) and node.test_only and _is_var(node.operand, "args") \
        and (field is None or node.field == field)


_BOUNDED_KINDS = ("under", "library", "suffix")  # tests of the path and library, whose sizes Request bounds


def _leading(conjuncts: Sequence[ast.Node], admit: Callable[[ast.Node], bool]) -> list[ast.Node]:
    run = []
    for node in conjuncts:
        if not admit(node):
            break
        run.append(node)
    return run


def _metered_guards(conjuncts: Sequence[ast.Node]) -> list[Guard]:
    """Guards of a metered condition. Its budget running out is the one error no `&&` absorbs
    (cost.BudgetExceeded): a conjunct evaluated before a false guard could spend it on a guest-sized value
    (`int(args.s)` of a 100 MB string), and the plain evaluation would then fail closed where a skip would
    not. So a guard counts only when every conjunct evaluated before it costs a bounded amount whatever the
    request holds: `has(args.f)`, path and library tests (the path is at most 4 KiB), and for integer bounds
    on a field, other bounds on that same field (one unit each for the int values the index skips; a value
    of any other type is never skipped). Argument equality is not used: a long string would be charged."""
    def bounded(node: ast.Node) -> bool:
        guard = _guard(node)
        return _is_has(node) or (guard is not None and guard.kind in _BOUNDED_KINDS)

    guards = [g for g in map(_guard, _leading(conjuncts, bounded)) if g is not None]
    for field in dict.fromkeys(b[0] for b in map(_bound, conjuncts) if b is not None):
        def on_field(node: ast.Node, field: str = field) -> bool:
            bound = _bound(node)
            return _is_has(node) or (bound is not None and bound[0] == field)

        run = _leading(conjuncts, on_field)
        guards += [_with_has(g, run) for g in _bound_guards(run)]
    return guards


def _with_has(guard: Guard, conjuncts: Sequence[ast.Node]) -> Guard:
    if guard.field and any(_is_has(c, guard.field) for c in conjuncts):
        return attrs.evolve(guard, has_checked=True)
    return guard


def _conjunction_guard(condition: ast.Node, metered: bool) -> Guard | None:
    """The most selective guard among the top-level conjuncts: the deepest directory, else a library,
    else a suffix, else an argument."""
    conjuncts = list(_conjuncts(condition))
    if metered:
        guards = _metered_guards(conjuncts)
    else:
        guards = [_with_has(g, conjuncts) for g in map(_guard, conjuncts) if g is not None]
        guards += [_with_has(g, conjuncts) for g in _bound_guards(conjuncts)]
    if not guards:
        return None
    return min(guards, key=lambda g: (_PREFERENCE[g.kind], -max(len(str(k)) for k in g.keys)))


def guard_of(condition: ast.Node | None, metered: bool = False) -> tuple[Guard, ...] | None:
    """One guard per top-level disjunct (a plain conjunction is one disjunct), or None when a disjunct has
    none: the rule can match only where one of these guards holds. `metered`: the condition's program is
    metered at run time (see _metered_guards)."""
    if condition is None:
        return None
    guards = []
    for disjunct in _flatten(condition, "_||_"):
        guard = _conjunction_guard(disjunct, metered)
        if guard is None:
            return None
        guards.append(guard)
    return tuple(guards)


def _metered(rule: Any) -> bool:
    """Whether the rule's program charges a run-time budget (CompiledRule.program.metered); assumed so when
    the rule does not say."""
    program = getattr(rule, "program", None)
    return bool(getattr(program, "metered", True))


def _add(bucket: list[Any], rule: Any) -> None:
    """Rules are added in policy order; a rule whose disjuncts land in one bucket is added once."""
    if not bucket or bucket[-1] is not rule:
        bucket.append(rule)


class RuleIndex:
    """Candidate rules for one (extension, operation), selected by the request's path, library and args."""

    def __init__(self, rules: Sequence[Any]) -> None:
        self.always: list[Any] = []
        self.by_directory: dict[str, list[Any]] = {}
        self.by_library: dict[str, list[Any]] = {}
        self.by_suffix: dict[str, list[Any]] = {}
        self.by_arg: dict[str, dict[tuple[type, object], list[Any]]] = {}
        self.odd_value: dict[str, list[Any]] = {}  # rules guarded on the field, for values not indexed
        self.absent: dict[str, list[Any]] = {}  # rules guarded on the field that can still match without it
        self.numeric: dict[str, list[Any]] = {}  # rules guarded on the field by int bounds: for string values
        above: dict[str, list[tuple[int, int, Any]]] = {}
        below: dict[str, list[tuple[int, int, Any]]] = {}
        self.shared = False  # some rule is in more than one bucket: select() must drop repeats
        for rule in rules:
            guards = guard_of(rule.guard_node, _metered(rule))
            if guards is None:
                self.always.append(rule)
                continue
            self.shared = self.shared or len(guards) > 1
            for guard in guards:
                self._add_guard(guard, rule, above, below)
        self.suffix_lengths = sorted({len(s) for s in self.by_suffix})
        self.above = {f: ([b for b, _, _ in items], [r for _, _, r in items])
                      for f, items in ((f, sorted(v, key=lambda t: t[:2])) for f, v in above.items())}
        self.below = {f: ([b for b, _, _ in items], [r for _, _, r in items])
                      for f, items in ((f, sorted(v, key=lambda t: t[:2])) for f, v in below.items())}
        # per field: (name, equality buckets, rules for other values, for an absent field, for a string value,
        # (sorted lower bounds, rules), (sorted upper bounds, rules)), unpacked in one step per call
        self.arg_tables = tuple(
            (field, self.by_arg.get(field, {}), self.odd_value[field], self.absent.get(field),
             self.numeric.get(field), self.above.get(field), self.below.get(field)) for field in self.odd_value)

    def _add_guard(self, guard: Guard, rule: Any, above: dict[str, list[tuple[int, int, Any]]],
                   below: dict[str, list[tuple[int, int, Any]]]) -> None:
        if guard.kind == "under":
            _add(self.by_directory.setdefault(guard.keys[0], []), rule)
        elif guard.kind == "library":
            _add(self.by_library.setdefault(guard.keys[0], []), rule)
        elif guard.kind == "suffix":
            _add(self.by_suffix.setdefault(guard.keys[0], []), rule)
        else:
            if guard.kind == "arg":
                buckets = self.by_arg.setdefault(guard.field, {})
                for key in dict.fromkeys(guard.keys):
                    _add(buckets.setdefault(key, []), rule)
            else:
                (above if guard.kind == "above" else below).setdefault(guard.field, []).append(
                    (guard.keys[0], int(rule.order), rule))
            if guard.kind != "arg" or guard.numeric:
                _add(self.numeric.setdefault(guard.field, []), rule)
            _add(self.odd_value.setdefault(guard.field, []), rule)
            if not guard.has_checked:
                _add(self.absent.setdefault(guard.field, []), rule)

    def select(self, path: str, library: str, args: Mapping[str, Any]) -> list[Any]:
        """The rules that may match, in policy order. The reference semantics of the selector that
        select_codegen.py generates for this index (what decide() calls); tests compare the two."""
        found: list[Any] = list(self.always)
        groups = 1 if found else 0
        by_directory = self.by_directory
        if by_directory and path:
            end = path.find("/", 1)  # every proper ancestor "/a", "/a/b" (never the root), then the path itself
            while end != -1:
                bucket = by_directory.get(path[:end])
                if bucket:
                    found.extend(bucket)
                    groups += 1
                end = path.find("/", end + 1)
            bucket = by_directory.get(path)
            if bucket:
                found.extend(bucket)
                groups += 1
        bucket = self.by_library.get(library)
        if bucket:
            found.extend(bucket)
            groups += 1
        for length in self.suffix_lengths:
            bucket = self.by_suffix.get(path[-length:])
            if bucket:
                found.extend(bucket)
                groups += 1
        for field, equal, odd, absent, numeric, above, below in self.arg_tables:
            if field not in args:
                bucket = absent
            else:
                value = args[field]
                kind = type(value)
                if kind is int:
                    bucket = equal.get((int, value))
                    if above is not None:
                        end = bisect.bisect_right(above[0], value)
                        if end:  # a slice is in the order of its bounds, not policy order: found must be sorted
                            found.extend(above[1][:end])
                            groups += 2
                    if below is not None:
                        start = bisect.bisect_right(below[0], value)
                        if start < len(below[1]):
                            found.extend(below[1][start:])
                            groups += 2
                elif kind is str:
                    bucket = equal.get((str, value))
                    if numeric:  # `"a" < 3` is an error, not false
                        found.extend(numeric)
                        groups += 1
                else:
                    bucket = odd
            if bucket:
                found.extend(bucket)
                groups += 1
        if groups > 1:
            found.sort(key=_order)
            if self.shared:  # a rule in two buckets: its two copies are now adjacent
                found = [r for i, r in enumerate(found) if i == 0 or found[i - 1] is not r]
        return found


def _order(rule: Any) -> int:
    return int(rule.order)
