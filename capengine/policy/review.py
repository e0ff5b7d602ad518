"""Conditions that load, type-check and look right, but do not mean what they say: what a security review of a
policy looks for. Each finding names the sub-expression, why it is wrong, and the fix (warnings; errors under
`--strict`).

- `unanchored-regex`: an allow's `path.matches("/photos/.*\\.png")` also matches `/x/photos/a.png.exe`;
- `path-not-equal`: `path != "/secrets/key"` as a rule's only path test holds for every other path (a `==`
  typed as `!=` turns a narrow deny into "deny everything", a narrow allow into "allow everything");
- `constant-condition`: `... || true` is always true; `size(x) < 0` and `... && false` never (`never-matches`);
- `never-matches` for a literal the rule can never see: `extension == "com.example.ap"` when the policy applies
  to `com.example.app` only, `operation == "vdfs.readfile"`, `library == "6C1F..."` (library ids are
  lowercase), `path.under("/a") && path.under("/b")`;
- `non-canonical-path`: request paths are canonical (absolute, no `.`/`..`/`//`, no trailing `/`), so
  `path == "/secrets/"`, `path == "secrets/key"` or `path.glob("/photos/../secrets/**")` never match, and
  `path.under("/photos/../secrets")` is `path.under("/secrets")`;
- `mixed-script`: a literal mixing Latin with Cyrillic or Greek letters (`/phоtos`, with a Cyrillic `о`) looks
  like a path it never equals;
- `case-mismatch` (across the set): `path.under("/Photos/private")` beside rules on `/photos`: paths are
  case-sensitive, so the deny covers nothing the allow grants.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping

import attrs

from capengine.cel import ast
from capengine.cel.checker import did_you_mean
from capengine.cel.compiler import Program
from capengine.policy import globs, paths
from capengine.policy.codes import Code
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.model import Finding, Policy, Rule

Issue = tuple[Code, str, ast.Pos]
_REQUEST_VARS = ("path", "extension", "operation", "library")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FLAGS = re.compile(r"^\(\?[a-zA-Z]+\)")


@attrs.frozen
class RuleContext:
    """What a condition is evaluated against: only calls of `operations` (the registered operations the rule's
    selectors match) by extensions matching `extensions` (the policy's patterns) reach it."""

    deny: bool
    operations: tuple[str, ...]
    extensions: tuple[str, ...]


def condition_findings(root: ast.Node, context: RuleContext) -> list[Issue]:
    conjuncts = _flatten(root, "_&&_")
    out: list[Issue] = []
    out += _constant(root, conjuncts)
    out += _impossible_literals(conjuncts, context)
    out += _disjoint_paths(conjuncts)
    out += _path_not_equal(conjuncts, context)
    for node in ast.walk(root):
        if not context.deny:
            out += _unanchored(node)
        out += _non_canonical(node)
        if isinstance(node, ast.Literal) and isinstance(node.value, str):
            mixed = _mixed_script(node.value)
            if mixed:
                out.append((Code.MIXED_SCRIPT, mixed, node.pos))
    return out


def _flatten(node: ast.Node, op: str) -> list[ast.Node]:
    if isinstance(node, ast.Call) and node.function == op and node.target is None:
        return [n for arg in node.args for n in _flatten(arg, op)]
    return [node]


def _is_var(node: ast.Node, name: str | tuple[str, ...]) -> bool:
    return isinstance(node, ast.Ident) and node.name in ((name,) if isinstance(name, str) else name)


def _string(node: ast.Node) -> str | None:
    return node.value if isinstance(node, ast.Literal) and isinstance(node.value, str) else None


def _compare(node: ast.Node, op: str) -> tuple[str, str, ast.Pos] | None:
    """(variable, literal, position of the literal) for `var <op> "literal"` either way round."""
    if not (isinstance(node, ast.Call) and node.function == op and node.target is None and len(node.args) == 2):
        return None
    left, right = node.args
    for var, lit in ((left, right), (right, left)):
        text = _string(lit)
        if isinstance(var, ast.Ident) and var.name in _REQUEST_VARS and text is not None:
            return var.name, text, lit.pos
    return None


def _size_bound(node: ast.Node) -> bool | None:
    """True for `size(x) >= 0` (always), False for `size(x) < 0` (never), None otherwise."""
    if not (isinstance(node, ast.Call) and node.target is None and len(node.args) == 2):
        return None
    left, right = node.args
    if not (isinstance(left, ast.Call) and left.function == "size" and isinstance(right, ast.Literal)
            and type(right.value) is int):
        return None
    bound = right.value
    if (node.function == "_<_" and bound <= 0) or (node.function == "_<=_" and bound < 0):
        return False
    if (node.function == "_>=_" and bound <= 0) or (node.function == "_>_" and bound < 0):
        return True
    return None


def _constant(root: ast.Node, conjuncts: list[ast.Node]) -> list[Issue]:
    out: list[Issue] = []
    disjuncts = _flatten(root, "_||_")
    if len(disjuncts) > 1 and any(isinstance(d, ast.Literal) and d.value is True or _size_bound(d) is True
                                  for d in disjuncts):
        out.append((Code.CONSTANT_CONDITION, "the condition is always true: one `||` operand is always true "
                    "(`true`, `size(x) >= 0`), so the other operands change nothing; remove it", root.pos))
    elif isinstance(root, ast.Literal) and root.value is True:
        out.append((Code.CONSTANT_CONDITION, "condition 'true' is the same as no condition; remove it (or write "
                    "the test you meant)", root.pos))
    for c in conjuncts:
        if len(conjuncts) > 1 and isinstance(c, ast.Literal) and c.value is False:
            out.append((Code.NEVER_MATCHES, "a `&& false` operand makes the condition never true: the rule never "
                        "matches; remove the operand (or the rule)", root.pos))
        elif _size_bound(c) is False:
            out.append((Code.NEVER_MATCHES, "a size is never negative, so this is never true and the rule never "
                        "matches; did you mean `> 0` or `== 0`?", c.pos))
    return out


def _impossible_literals(conjuncts: list[ast.Node], context: RuleContext) -> Iterator[Issue]:
    """`extension == "x"` / `operation == "x"` / `library == "x"` that no call reaching this rule can satisfy."""
    for c in conjuncts:
        found = _compare(c, "_==_")
        if found is None:
            continue
        var, text, pos = found
        if var in ("extension", "operation") and any(ch in text for ch in "*?"):
            yield (Code.NEVER_MATCHES, f"{var} == {_q(text)} compares text, not a glob: it is never true (no "
                   f"{var} name contains '{'*' if '*' in text else '?'}') and the rule never matches; "
                   + ("narrow the policy's `extensions:` or use extension.startsWith(...)" if var == "extension"
                      else "put the glob in the rule's `operations:`"), pos)
        elif var == "extension" and context.extensions \
                and not any(globs.glob_match(p, text) for p in context.extensions):
            yield (Code.NEVER_MATCHES, f"extension == {_q(text)} is never true here: the policy applies only to "
                   f"{', '.join(context.extensions)}{_suggest(text, context.extensions)}; the rule never matches",
                   pos)
        elif var == "operation" and context.operations and text not in context.operations:
            yield (Code.NEVER_MATCHES, f"operation == {_q(text)} is never true here: the rule's operations are "
                   f"{_listed(context.operations)}{did_you_mean(text, context.operations)}; the rule never matches",
                   pos)
        elif var == "library" and not _UUID.fullmatch(text):
            fix = f"write {_q(text.lower())}" if _UUID.fullmatch(text.lower()) else "write the library's UUID"
            yield (Code.NEVER_MATCHES, f"library == {_q(text)} is never true: `library` is the library's UUID in "
                   f"lowercase; {fix}", pos)


def _q(text: str) -> str:
    """A string as a CEL literal, as the author would write it in the condition."""
    return json.dumps(text, ensure_ascii=False)


def _suggest(text: str, patterns: Iterable[str]) -> str:
    return did_you_mean(text, [p for p in patterns if globs.is_literal(p)])


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def _region(node: ast.Node) -> tuple[str, str, ast.Pos] | None:
    """("dir" | "glob" | "exact", literal, position) of a path test with a literal."""
    if isinstance(node, ast.Call) and node.function in ("under", "glob") and node.target is not None \
            and _is_var(node.target, "path") and len(node.args) == 1 and _string(node.args[0]) is not None:
        literal = _string(node.args[0]) or ""
        try:
            if node.function == "under":
                return "dir", paths.canonical_path(literal), node.args[0].pos
            globs.compile_glob(literal, "/", True)
        except (paths.PathError, globs.GlobError):
            return None
        return "glob", literal, node.args[0].pos
    found = _compare(node, "_==_")
    if found is not None and found[0] == "path":
        return "exact", found[1], found[2]
    return None


def _glob_dir(pattern: str) -> str:
    """The literal directory every path a glob matches lies under."""
    kept = []
    for seg in pattern.split("/"):
        if any(ch in seg for ch in "*?["):
            break
        kept.append(seg)
    return "/".join(kept) or "/"


def _disjoint(a: tuple[str, str, ast.Pos], b: tuple[str, str, ast.Pos]) -> bool:
    (ka, la, _), (kb, lb, _) = a, b
    if ka == "exact" or kb == "exact":
        (_, exact, _), (kind, other, _) = (a, b) if ka == "exact" else (b, a)
        if kind == "exact":
            return exact != other
        if kind == "dir":
            return not paths.is_under(exact, other)
        return globs.compile_glob(other, "/", True).fullmatch(exact) is None
    da = la if ka == "dir" else _glob_dir(la)
    db = lb if kb == "dir" else _glob_dir(lb)
    return not (paths.is_under(da, db) or paths.is_under(db, da))


def _disjoint_paths(conjuncts: list[ast.Node]) -> Iterator[Issue]:
    regions = [r for r in map(_region, conjuncts) if r is not None]
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            try:
                disjoint = _disjoint(a, b)
            except paths.PathError:
                continue
            if disjoint:
                yield (Code.NEVER_MATCHES, f"no path is both {_shown(a)} and {_shown(b)} (both tested with `&&`): "
                       "the rule never matches; did you mean `||`?", b[2])
                return


def _shown(region: tuple[str, str, ast.Pos]) -> str:
    kind, literal, _ = region
    return {"dir": f"under {_q(literal)}", "glob": f"matched by glob {_q(literal)}"}.get(kind, f"== {_q(literal)}")


def _path_not_equal(conjuncts: list[ast.Node], context: RuleContext) -> Iterator[Issue]:
    tests = [(c, _compare(c, "_!=_")) for c in conjuncts]
    others = [c for c, found in tests if found is None]
    for _, found in tests:
        if found is None or found[0] != "path":
            continue
        if any(_is_var(n, "path") for c in others for n in ast.walk(c)):
            continue  # another operand narrows the path: `path.under("/a") && path != "/a/b"` is an exclusion
        what = "denies every call on any other path" if context.deny else "allows every other path"
        yield (Code.PATH_NOT_EQUAL, f"path != {_q(found[1])} is the rule's only path test: it {what}; did you mean "
               f"path == {_q(found[1])}? (to exclude one path, also say which paths: "
               f"path.under(\"/dir\") && path != ...)", found[2])


def _unanchored(node: ast.Node) -> list[Issue]:
    """An allow's regex over `path` or `extension` that matches more than the text it spells out."""
    if not (isinstance(node, ast.Call) and node.function == "matches"):
        return []
    subject, args = (node.target, node.args) if node.target is not None else (node.args[0], node.args[1:])
    if not (subject is not None and _is_var(subject, ("path", "extension")) and len(args) == 1):
        return []
    pattern = _string(args[0])
    if pattern is None:
        return []
    body = _FLAGS.sub("", pattern)
    start = body.startswith(("^", "\\A"))
    end = body.endswith("$") and not body.endswith("\\$") or body.endswith("\\z")
    name = subject.name if isinstance(subject, ast.Ident) else "path"
    fixed = _FLAGS.match(pattern)
    anchored = (fixed.group(0) if fixed else "") + ("" if start else "^") + body + ("" if end else "$")
    if end and (start or not body.startswith("/")):
        return []  # anchored at both ends, or a suffix test such as `\.png$`
    if not end and (start or body.startswith("/")):
        how = "has no `$`: it also matches longer paths (a `.png.exe`, anything below)"
    elif not start and body.startswith("/"):
        how = "has no `^`: it also matches the same text deeper in any path (`/elsewhere" + body.split("$")[0] + "`)"
    else:
        how = "is anchored at neither end: it matches any path containing such text"
    return [(Code.UNANCHORED_REGEX, f"{name}.matches({_q(pattern)}) {how}; anchor it ({_q(anchored)}) or use "
             "path.under()/path.glob(), which match whole segments", args[0].pos)]


def _non_canonical(node: ast.Node) -> list[Issue]:
    """Path literals no canonical request path can be equal to (or that mean another directory)."""
    if not isinstance(node, ast.Call):
        return []
    literals: list[tuple[str, ast.Pos, str]] = []  # (literal, position, how it is used)
    if node.function in ("_==_", "_!=_"):
        found = _compare(node, node.function)
        if found is not None and found[0] == "path":
            literals.append((found[1], found[2], "equal"))
    elif node.function == "@in" and _is_var(node.args[0], "path") and isinstance(node.args[1], ast.CreateList):
        literals += [(text, item.pos, "equal") for item in node.args[1].items if (text := _string(item)) is not None]
    elif node.target is not None and _is_var(node.target, "path") and len(node.args) == 1 \
            and node.function in ("under", "glob", "startsWith") and (text := _string(node.args[0])) is not None:
        literals.append((text, node.args[0].pos, node.function))
    out: list[Issue] = []
    for text, pos, how in literals:
        problem = _path_problem(text, how)
        if problem:
            out.append((Code.NON_CANONICAL_PATH, problem, pos))
    return out


def _path_problem(text: str, how: str) -> str | None:
    if text == "" or any(unicodedata.category(ch) == "Cc" for ch in text) or "\\" in text:
        return None  # "" is "no path"; control characters and backslashes are load errors elsewhere
    segments = text.split("/")
    dots = [s for s in segments[1:-1] if s in (".", "..", "")] + [s for s in segments[-1:] if s in (".", "..")]
    if how == "under":
        if not dots:
            return None
        return (f"under({_q(text)}) is read as under({_q(paths.canonical_path(text))}) (paths are canonical: '.', "
                "'..' and '//' are resolved); write that")
    if how == "glob":
        if dots or (text.endswith("/") and text != "/"):
            return (f"glob({_q(text)}) never matches: request paths are canonical (no '.', '..' or '//' segments, "
                    "no trailing '/'); write the directory as it is")
        return None
    if how == "startsWith":
        if not text.startswith("/"):
            return f"path.startsWith({_q(text)}) is never true: request paths are absolute (start with '/')"
        if dots:
            return f"path.startsWith({_q(text)}) is never true: request paths have no '.', '..' or '//' segments"
        return None
    try:
        canonical = paths.canonical_path(text) if text.startswith("/") else None
    except paths.PathError:
        return None
    if canonical == text:
        return None
    fix = f"; write {_q(canonical)}" if canonical else "; paths are absolute: write '/" + text.lstrip("./") + "'"
    return f"path == {_q(text)} is never true: request paths are canonical (absolute, no trailing '/', no '.', '..' " \
           f"or '//'){fix}"


_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE")


def _mixed_script(text: str) -> str | None:
    """A word mixing Latin letters with look-alike letters of another script (`phоtos` with a Cyrillic о)."""
    for word in re.split(r"[^\w]+", text):
        scripts: dict[str, str] = {}
        for ch in word:
            if ch.isalpha():
                script = unicodedata.name(ch, "").split(" ")[0]
                if script in _SCRIPTS:
                    scripts.setdefault(script, ch)
        if len(scripts) > 1 and "LATIN" in scripts:
            other, ch = next((s, c) for s, c in scripts.items() if s != "LATIN")
            return (f"{_q(text)} mixes Latin letters with {other.title()} {ch!r} (U+{ord(ch):04X}, "
                    f"{unicodedata.name(ch)}) in {word!r}: it looks like a name it never equals; retype it in "
                    "one script")
    return None


# across the set --------------------------------------------------------------------------------------------

def set_findings(policies: list[Policy], programs: Mapping[str, Program]) -> list[Finding]:
    """`case-mismatch`: a path literal that differs only in letter case from one another rule uses."""
    trees = _Trees(programs)
    dirs: list[tuple[Rule, tuple[str, ...]]] = []
    spellings: dict[str, dict[str, Rule]] = {}  # casefolded directory -> spelling -> first rule using it
    for policy in policies:
        for rule in policy.rules:
            found = _rule_dirs(rule.condition, trees)
            if found:
                dirs.append((rule, found))
                for d in found:
                    for prefix in _prefixes(d):
                        spellings.setdefault(prefix.casefold(), {}).setdefault(prefix, rule)
    uses: dict[str, int] = {}  # spelling -> how many rules use it
    for _, found in dirs:
        for prefix in {p for d in found for p in _prefixes(d)}:
            uses[prefix] = uses.get(prefix, 0) + 1
    out = []
    for rule, found in dirs:
        clash = next(((prefix, other, by) for d in found for prefix in _prefixes(d)
                      for other, by in spellings[prefix.casefold()].items()
                      if other != prefix and by is not rule and uses[other] >= uses[prefix]), None)
        if clash:  # reported at the rules using the rarer spelling (at both when as common)
            prefix, other, by = clash
            out.append(Finding(rule.location, "warning", Code.CASE_MISMATCH,
                               f"rule {rule.qualified_id} tests {_q(prefix)} but rule {by.qualified_id} {_q(other)}: "
                               "paths are case-sensitive, so they name different directories and neither rule covers "
                               "the other's; use one spelling"))
    return out


_DIRS_KEPT = 65536
_dirs: dict[str, tuple[str, ...]] = {}  # condition text -> the directories it tests, across runs (reloads)


def _rule_dirs(condition: str | None, trees: Mapping[str, ast.Node]) -> tuple[str, ...]:
    """The directories a condition tests by literal (under, glob's literal part, ==), remembered by text so a
    reload re-derives only the edited files' (bounded like lint's facts)."""
    if condition is None:
        return ()
    found = _dirs.get(condition)
    if found is None:
        if len(_dirs) >= _DIRS_KEPT:
            _dirs.clear()
        found = _dirs[condition] = _derive_dirs(condition, trees)
    return found


def _derive_dirs(condition: str, trees: Mapping[str, ast.Node]) -> tuple[str, ...]:
    root = trees.get(condition)
    if root is None:
        try:
            root = ast.parse(condition, POLICY_ENVIRONMENT.namespaced)
        except ast.CelSyntaxError:
            return ()
    found = []
    for node in ast.walk(root):
        region = _region(node)
        if region is not None:
            kind, literal, _ = region
            found.append(_glob_dir(literal) if kind == "glob" else literal)
    return tuple(d for d in dict.fromkeys(found) if d.startswith("/") and d != "/")


class _Trees(Mapping[str, ast.Node]):
    """The compiled conditions' trees by source text, gathered only if some condition is not remembered yet."""

    def __init__(self, programs: Mapping[str, Program]) -> None:
        self._programs = programs
        self._trees: dict[str, ast.Node] | None = None

    def _all(self) -> dict[str, ast.Node]:
        if self._trees is None:
            self._trees = {p.source: p.node for p in self._programs.values() if p.node is not None}
        return self._trees

    def __getitem__(self, key: str) -> ast.Node:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _prefixes(directory: str) -> list[str]:
    parts = directory.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
