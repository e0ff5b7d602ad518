"""Policy and policy-test files -> model objects + findings.

Everything that can be wrong with a file is reported as a Finding with file:line:column, all of them, not
just the first: YAML syntax, duplicate keys, schema violations (unknown keys, wrong types), duplicate ids,
CEL syntax and type errors. A file with an error contributes nothing to the policy set; callers that must
fail closed (the daemon) refuse the whole set when any error exists.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import stat
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache, partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import jsonschema
import yaml

from capengine.cel import ast as cel_ast
from capengine.cel import checker as cel_checker
from capengine.cel import compiler as cel_compiler
from capengine.cel.checker import did_you_mean
from capengine.cel.cost import Bound
from capengine.cel.types import DYN, STRING, Field, Type, map_of
from capengine.cel.values import Activation, Value
from capengine.policy import arg_types, globs, loader_parallel, operations, paths, review
from capengine.policy.codes import Code
from capengine.policy.functions import POLICY_ENVIRONMENT
from capengine.policy.memo import IdentityMemo
from capengine.policy.model import Finding, Limit, Location, Policy, Rule, Severity, TestCase, TestSuite
from capengine.policy.operations import Catalog
from capengine.policy.schemas import conforms, validator
from capengine.policy.yaml_source import Document, JsonPath, YamlSourceError, expression_position, load_documents

Json = Any  # a YAML document's plain data, checked against the JSON Schema before it is trusted

POLICY_DECLS: dict[str, Type] = {
    "extension": STRING, "operation": STRING, "path": STRING, "library": STRING, "args": map_of(STRING, DYN),
}
SCHEMA_PATH_ENV = "CAPENGINE_OPERATION_SCHEMAS"
MAX_ARGS_BYTES = 1024 * 1024
"""The largest call payload a guest can send (the host's request cap), hence the largest any args value can be."""
POLICY_COSTS = cel_compiler.CostModel(
    MappingProxyType({"extension": Bound(256), "operation": Bound(256), "path": Bound(paths.MAX_PATH_BYTES),
                      "library": Bound(36), "args": Bound(MAX_ARGS_BYTES // 2)}),
    unknown=Bound(MAX_ARGS_BYTES))
"""Size bounds for the static cost estimate of conditions (a map of n keys needs at least 2n JSON bytes)."""
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600}
MAX_FILE_BYTES = 4 * 1024 * 1024


@attrs.define
class LoadedFile:
    path: str
    text: str
    digest: bytes = b""  # sha256 of the text (UTF-8): the file's part of the revision, computed once per version
    policies: list[Policy] = attrs.field(factory=list)
    suites: list[TestSuite] = attrs.field(factory=list)
    programs: dict[str, cel_compiler.Program] = attrs.field(factory=dict)  # qualified rule id -> program


@attrs.define
class LoadResult:
    files: list[LoadedFile]
    findings: list[Finding]
    catalog: Catalog = attrs.field(factory=operations.builtin)  # the operations rules could name

    @property
    def policies(self) -> list[Policy]:
        return [p for f in self.files for p in f.policies]

    @property
    def suites(self) -> list[TestSuite]:
        return [s for f in self.files for s in f.suites]

    @property
    def programs(self) -> dict[str, cel_compiler.Program]:
        return {k: v for f in self.files for k, v in f.programs.items()}

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def revision(self) -> str:
        """Content hash of the policy set: the sorted digests of the policy files' texts (test files do not
        change decisions). Paths are left out, so `check policies`, `check /abs/policies` and a daemon reading a
        copy elsewhere agree on the revision their audit records carry."""
        texts = sorted(f.digest or _digest(f.text) for f in self.files if f.policies)
        return hashlib.sha256(b"capengine-policy-set\0" + b"".join(texts)).hexdigest()[:16]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


POLICY_SUFFIXES = (".yaml", ".yml")


def walk(root: str | Path, special: list[str] | None = None) -> list[str]:
    """Relative paths of the YAML files under a directory, in the order `sorted(Path.rglob)` gives (by path
    components), which fixes the order of policies and so which rule a decision names. One scandir per
    directory: symlinked directories are not descended into (as rglob), symlinked files are included. A
    symlink that leads nowhere (dangling, or a loop) is included too: reading it fails and says why, where
    skipping it would quietly drop the policy it stood for (except an editor's lock link, `.#<name>`). FIFOs,
    sockets and devices are not (reading one would block); their names go to `special` when given, for the
    caller to report, else they raise OSError (the daemon then refuses the tree, as `check` fails on it).
    Raises OSError when the tree changes under the walk too."""
    found: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                name = rel + entry.name if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(name + os.sep)
                elif (dot := entry.name.rfind(".")) > 0 and entry.name[dot:] in POLICY_SUFFIXES:
                    # the test is Path.suffix's: ".yaml" alone is a hidden file, not YAML
                    kind = _entry_kind(entry)
                    if kind == "file":
                        found.append(name)
                    elif kind == "special" and special is not None:
                        special.append(name)
                    elif kind == "special":  # a reader of the tree (the daemon) refuses it, as check reports it
                        where = os.path.join(root, name)
                        raise OSError(errno.EINVAL, f"{where}: {_not_regular(Path(where))}")
    found.sort(key=lambda name: name.split(os.sep))
    return found


def _entry_kind(entry: os.DirEntry[str]) -> str:
    """"file" (a regular file, or a link that cannot be followed: read, so that its error is reported), "dir"
    (a directory, or a link to one: not a policy file, as rglob's is_file() says; an editor's lock link too)
    or "special"."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "dir"
        if entry.is_symlink() and not os.path.exists(entry.path):
            # dangling; but Emacs marks a file being edited with a dangling link `.#<name>`: not a policy
            return "dir" if entry.name.startswith(".#") else "file"
    except OSError:  # a symlink loop (ELOOP) or a name the system cannot resolve
        return "file"
    return "special"


def _not_regular(path: Path) -> str:
    """Why `path`, which exists but is neither a regular file nor a directory, is not read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return (f"not a regular file ({kind}{', through a symlink' if path.is_symlink() else ''}); policies are read "
            "from regular files only: replace it with one or remove it")


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[Finding]]:
    """YAML files under the given files/directories, sorted so that results never depend on disk order. A
    YAML name that is not a regular file (a FIFO, a socket, a device) is an error, never read nor skipped
    quietly; a link that leads nowhere is listed, and reading it reports why."""
    found: list[Path] = []
    findings: list[Finding] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            special: list[str] = []
            found.extend(p / name for name in walk(p, special))
            findings.extend(Finding(Location(str(p / name)), "error", Code.IO, _not_regular(p / name))
                            for name in special)
        elif p.is_file():
            found.append(p)
        elif os.path.lexists(p):
            try:
                os.stat(p)
            except OSError as exc:  # dangling, a loop, no permission to search a directory on the way
                findings.append(Finding(Location(str(p)), "error", Code.IO, f"cannot read: {exc.strerror or exc}"))
                continue
            findings.append(Finding(Location(str(p)), "error", Code.IO, _not_regular(p)))
        else:
            findings.append(Finding(Location(str(p)), "error", Code.IO, "no such file or directory"))
    return found, findings


def _catalog(schema_dirs: Iterable[str | Path], findings: list[Finding]) -> Catalog:
    catalog = operations.builtin()
    schema_dirs = list(schema_dirs) or [d for d in os.environ.get(SCHEMA_PATH_ENV, "").split(os.pathsep) if d]
    if schema_dirs:
        try:
            catalog = catalog.with_directories(schema_dirs)
        except (OSError, ValueError) as exc:
            findings.append(Finding(Location(str(schema_dirs[0])), "error", Code.IO,
                                    f"cannot read operation schemas: {exc}; fix the file or the directory list "
                                    f"(schema_dirs / ${SCHEMA_PATH_ENV})"))
    return catalog


def load_paths(paths: Iterable[str | Path], schema_dirs: Iterable[str | Path] = (),
               generate: bool = True, processes: int | None = 1) -> LoadResult:
    """Load every policy and test file under `paths`. `schema_dirs`: extra operation schema directories
    (operations an embedding registers besides the built-in ones), so rules may name them; by default the
    directories listed in $CAPENGINE_OPERATION_SCHEMAS (os.pathsep-separated), which reaches `capengine check`
    and the daemon too. `generate`: compile conditions to generated functions (fast decisions, ~0.2 ms more
    per condition to load); `capengine check`, which decides only its test cases, does without. `processes`:
    load the files on that many processes (None: as many as pay off, see loader_parallel), without `generate`
    only (generated functions do not cross processes)."""
    files, findings = discover(paths)
    contents: dict[str, bytes | OSError] = {}
    for path in files:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise OSError(f"file larger than {MAX_FILE_BYTES} bytes")
            contents[str(path)] = path.read_bytes()
        except OSError as exc:
            contents[str(path)] = _explained(path, exc)
    return load_contents(contents, schema_dirs, findings, generate, processes)


def _explained(path: Path, exc: OSError) -> OSError:
    """`exc`, saying where a symbolic link that cannot be read points."""
    if not path.is_symlink():
        return exc
    try:
        target = os.readlink(path)
    except OSError:
        return exc
    return OSError(exc.errno, f"it is a symbolic link to {target}, which cannot be read ({exc.strerror}); fix or "
                              "remove the link")


def load_contents(contents: Mapping[str, bytes | OSError], schema_dirs: Iterable[str | Path] = (),
                  findings: Iterable[Finding] = (), generate: bool = True, processes: int | None = 1) -> LoadResult:
    """Load files already read, in the mapping's order (the daemon reads them once to compare versions): path
    -> its bytes, or the OSError reading it raised (reported as a finding). `processes`: as load_paths."""
    findings = list(findings)
    result = LoadResult([], findings, _catalog(schema_dirs, findings))
    items = list(contents.items())
    count = 1 if generate else loader_parallel.processes_for(len(items), processes)
    if count > 1:
        load = partial(_load_items, catalog=result.catalog, generate=generate, portable=True)
        loaded_files = loader_parallel.map_chunks(load, items, count, _REDUCERS)
    else:
        loaded_files = _load_items(items, result.catalog, generate)
    for loaded, file_findings in loaded_files:
        if loaded is not None:
            result.files.append(loaded)
        result.findings.extend(file_findings)
    result.findings.extend(_cross_file_checks(result))
    return result


def _load_items(items: Sequence[tuple[str, bytes | OSError]], catalog: Catalog, generate: bool,
                portable: bool = False) -> list[tuple[LoadedFile | None, list[Finding]]]:
    """Each file loaded (None: it could not be read), with its findings. `portable`: in a child process of
    loader_parallel, programs carry what compiles them again in place of their closures (which do not pickle)."""
    out: list[tuple[LoadedFile | None, list[Finding]]] = []
    for path, data in items:
        if isinstance(data, OSError):
            out.append((None, [Finding(Location(path), "error", Code.IO, f"cannot read: {data}")]))
            continue
        if len(data) > MAX_FILE_BYTES:
            out.append((None, [Finding(Location(path), "error", Code.IO,
                                       f"cannot read: file larger than {MAX_FILE_BYTES} bytes")]))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            out.append((None, [Finding(Location(path, line, 1), "error", Code.IO,
                                       f"not UTF-8 (byte {exc.start}); save the file as UTF-8")]))
            continue
        if "\r" in text:  # what reading in text mode did: universal newlines
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        loaded, file_findings = _load_cached(path, data, text, catalog, generate)
        out.append((_portable(loaded, catalog) if portable else loaded, file_findings))
    return out


_CACHE_FILES = 16384
_cache: OrderedDict[tuple[str, bytes, int, bool], tuple[Catalog, LoadedFile, tuple[Finding, ...]]] = OrderedDict()
_cache_lock = threading.Lock()


def _load_cached(path: str, data: bytes, text: str, catalog: Catalog,
                 generate: bool = True) -> tuple[LoadedFile, list[Finding]]:
    """load_text, remembered by (path, content hash, catalog): a reload after one file of a thousand changed
    parses, validates and compiles that one file only. A loaded file is never modified afterwards, so the
    same LoadedFile may serve several policy sets (and its identity tells later stages it is unchanged)."""
    key = (path, hashlib.sha256(data).digest(), id(catalog), generate)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is catalog:
            _cache.move_to_end(key)
            return hit[1], list(hit[2])
    loaded, findings = load_text(path, text, catalog, generate)
    with _cache_lock:
        _cache[key] = (catalog, loaded, tuple(findings))
        while len(_cache) > _CACHE_FILES:
            _cache.popitem(last=False)
    return loaded, findings


def load_text_cached(path: str, text: str, catalog: Catalog) -> tuple[LoadedFile, list[Finding]]:
    """load_text through the content-hash cache load_paths uses: the daemon's worker processes compile the
    texts the daemon sends them at each reload, and should recompile only the files that changed."""
    return _load_cached(path, text.encode("utf-8", "surrogatepass"), text, catalog)


def load_text(path: str, text: str, catalog: Catalog | None = None,
              generate: bool = True) -> tuple[LoadedFile, list[Finding]]:
    """Load one file's text. On any error in a document, that document contributes nothing."""
    loaded = LoadedFile(path, text, _digest(text))
    findings: list[Finding] = []
    if not text.isascii():
        bidi = _bidi_controls(path, text)
        if bidi:
            return loaded, bidi
    try:
        documents = list(load_documents(text))
    except YamlSourceError as exc:
        return loaded, [Finding(Location(path, exc.line, exc.column), "error", Code.YAML_SYNTAX,
                                f"{exc.message}; fix the YAML syntax")]
    if not documents:
        return loaded, [Finding(Location(path, 1, 1), "warning", Code.EMPTY_FILE,
                                "no YAML document in this file; add a Policy or PolicyTest, or remove the file")]
    lines = text.splitlines()
    for doc in documents:
        _DocumentLoader(path, lines, doc, loaded, findings, catalog or operations.builtin(), generate).load()
    return loaded, findings


_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")


@cache
def _invisible_characters() -> re.Pattern[str]:
    """What displays as nothing: format characters (Cf: zero-width space and joiners, soft hyphen, BOM,
    direction marks, tags), Hangul fillers, the grapheme joiner and variation selectors. Built at the first
    non-ASCII condition (scanning Unicode takes 0.15 s, which no ASCII-only set should pay)."""
    format_characters = "".join(c for c in map(chr, range(0x80, 0x110000)) if unicodedata.category(c) == "Cf")
    return re.compile(f"[\u034f\u115f\u1160\u3164\uffa0\ufe00-\ufe0f\U000e0100-\U000e01ef{format_characters}]")


def _bidi_controls(path: str, text: str) -> list[Finding]:
    """A bidirectional embedding, override or isolate anywhere in the file (a condition, a comment, a message)
    makes the text display in an order other than it is parsed ("Trojan Source", CVE-2021-42574): an error,
    as rustc makes it. Written as an escape it is visible, and fine."""
    found = []
    for match in _BIDI_CONTROL.finditer(text):
        at = match.start()
        name = unicodedata.name(match.group(), "bidirectional control")
        found.append(Finding(Location(path, text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)), "error",
                             Code.BIDI_CONTROL,
                             f"U+{ord(match.group()):04X} ({name}) makes the text around it display in an order "
                             "other than it is read; remove it (in a double-quoted string, write it as "
                             f"\\u{ord(match.group()):04x} if it is meant)"))
    return found


class _DocumentLoader:
    def __init__(self, path: str, lines: list[str], doc: Document, out: LoadedFile, findings: list[Finding],
                 catalog: Catalog, generate: bool = True) -> None:
        self.path, self.lines, self.doc, self.out, self.findings = path, lines, doc, out, findings
        self.catalog, self.generate = catalog, generate

    def at(self, json_path: JsonPath) -> Location:
        return Location(self.path, *self.doc.position(json_path))

    def report(self, json_path: JsonPath, code: Code, message: str, severity: Severity = "error") -> None:
        self.findings.append(Finding(self.at(json_path), severity, code, message))

    def load(self) -> None:
        errors_before = len(self.findings)
        for key, line, column in self.doc.duplicates:
            self.findings.append(Finding(Location(self.path, line, column), "error", Code.DUPLICATE_KEY,
                                         f"key '{key}' appears more than once in this mapping; keep one"))
        data: Json = self.doc.data
        kind = data.get("kind") if isinstance(data, dict) else None
        schema = {"Policy": "policy.schema.json", "PolicyTest": "policy-test.schema.json"}.get(str(kind))
        if schema is None:
            if not isinstance(data, dict):
                what = {type(None): "null", list: "list", str: "string", bool: "bool", int: "number",
                        float: "number"}.get(type(data), type(data).__name__)
                self.report((), Code.UNKNOWN_KIND, f"a YAML document must be a mapping with kind: Policy or "
                                                   f"PolicyTest, but this one is a {what}")
                return
            if "kind" not in data:
                spelt = [k for k in data if k.strip().lower() == "kind"] or difflib.get_close_matches(
                    "kind", list(data), n=1)
                if spelt:
                    self.findings.append(Finding(Location(self.path, *self.doc.key_marks.get((spelt[0],), (1, 1))),
                                                 "error", Code.UNKNOWN_KIND,
                                                 f"key {spelt[0]!r} is not 'kind' (keys are case-sensitive); "
                                                 "write kind: Policy or kind: PolicyTest"))
                    return
            close = difflib.get_close_matches(str(kind), ["Policy", "PolicyTest"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.report(("kind",), Code.UNKNOWN_KIND, f"kind must be Policy or PolicyTest, got {kind!r}{hint}")
            return
        errors = [] if conforms(schema)(data) else validator(schema).iter_errors(data)
        for err in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
            where = tuple(err.absolute_path)
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                properties: Json = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
                extra = sorted(set(err.instance) - set(properties))
                if extra:  # point at the offending key itself, not its value
                    key_at = self.doc.key_marks.get(where + (extra[0],))
                    if key_at is not None:
                        self.findings.append(Finding(Location(self.path, *key_at), "error", Code.SCHEMA,
                                                     _schema_message(err)))
                        continue
                    where += (extra[0],)
            self.report(where, Code.SCHEMA, _schema_message(err) + self._quoting_hint(where, err))
        schema_ok = len(self.findings) == errors_before
        if kind == "Policy":
            self._policy(data, schema_ok)
        elif schema_ok:
            self._suite(data)

    def _quoting_hint(self, where: JsonPath, err: jsonschema.ValidationError) -> str:
        """For text YAML read as something else (YAML 1.1: `yes`/`off` are bools, `2001-12-14` a date, `1:20`
        the int 80, `~` or nothing null): say so, and that quotes keep it text. Plain scalars only (style ""
        from the C parser, None from PyYAML's)."""
        node = self.doc.nodes.get(where)
        expected: Json = err.validator_value
        if err.validator != "type" or not isinstance(node, yaml.ScalarNode) or node.style not in (None, "") \
                or isinstance(err.instance, str) or "string" not in ([expected] if isinstance(expected, str)
                                                                     else expected):
            return ""
        kind = {bool: "bool", int: "int", float: "float", type(None): "null", bytes: "binary"}.get(
            type(err.instance), "date")
        if not node.value:
            return "; YAML reads an empty value as null: write the text, in quotes"
        return f"; YAML reads the unquoted {node.value} as a {kind}: quote it ('{node.value}') if you meant the text"

    def _policy(self, data: Json, schema_ok: bool) -> None:
        """Check every rule even when the schema already failed (report all problems at once); build the
        Policy only when nothing at all is wrong."""
        spec = _get(data, "spec", dict)
        name = _get(_get(data, "metadata", dict), "name", str) or "?"
        programs: dict[str, cel_compiler.Program] = {}
        seen: dict[str, int] = {}
        ok = schema_ok
        for i, raw in enumerate(_get(spec, "rules", list)):
            where = ("spec", "rules", i)
            rid = _get(raw, "id", str)
            if rid and rid in seen:
                self.report(where + ("id",), Code.DUPLICATE_RULE_ID,
                            f"rule id '{rid}' is already used by rule #{seen[rid] + 1}; "
                            "rule ids must be unique within a policy")
                ok = False
            elif rid:
                seen[rid] = i
            ok &= self._check_globs(where + ("operations",), _get(raw, "operations", list))
            condition = _get(raw, "condition", str)
            if condition:
                selectors = [s for s in _get(raw, "operations", list) if isinstance(s, str)]
                deny = _get(raw, "effect", str) == "deny"
                context = review.RuleContext(deny, self._matched_operations(selectors, deny),
                                             tuple(e for e in _get(spec, "extensions", list) if isinstance(e, str)))
                program = self._compile(condition, where + ("condition",), self._args_record(selectors), deny,
                                        context)
                ok &= program is not None
                if program is not None and rid:
                    programs[f"{name}/{rid}"] = program
        ok &= self._check_globs(("spec", "extensions"), _get(spec, "extensions", list))
        for i, raw in enumerate(_get(spec, "limits", list)):
            ok &= self._check_globs(("spec", "limits", i, "operations"), _get(raw, "operations", list))
            ok &= self._check_limit(i, raw)
        if not ok:
            return
        rules = tuple(Rule(name, raw["id"], raw["effect"], tuple(raw["operations"]), raw.get("condition"),
                           raw.get("message"), self.at(("spec", "rules", i)),
                           self._item_locations(("spec", "rules", i, "operations"), raw["operations"]))
                      for i, raw in enumerate(spec["rules"]))
        limits = []
        for i, raw in enumerate(spec.get("limits", [])):
            count, per_seconds, burst, cost = _limit_numbers(raw)
            limits.append(Limit(tuple(raw["operations"]), count, per_seconds, burst, cost,
                                self.at(("spec", "limits", i)),
                                self._item_locations(("spec", "limits", i, "operations"), raw["operations"])))
        self.out.policies.append(Policy(name, data["metadata"].get("description", ""), tuple(spec["extensions"]),
                                        rules, tuple(limits), self.at(("metadata", "name")),
                                        self._item_locations(("spec", "extensions"), spec["extensions"])))
        self.out.programs.update(programs)

    def _check_limit(self, i: int, raw: Json) -> bool:
        """A limit the rate limiter can honour: every number at most MAX_LIMIT_NUMBER, and a call's cost at
        most the burst (the explicit one, else the rate's count): otherwise no call could ever pass. Run on
        documents that failed the schema too, on the numbers that are numbers."""
        numbers = _limit_numbers(raw, lenient=True)
        ok = True
        for key, value in zip(("rate", "burst", "cost"), (numbers[0], *numbers[2:])):
            if value is not None and value > MAX_LIMIT_NUMBER and (key == "rate" or key in raw):
                shown = str(value) if value < 10**30 else f"of {len(str(value))} digits"
                self.report(("spec", "limits", i, key), Code.BAD_LIMIT,
                            f"{'the rate count' if key == 'rate' else key} {shown} is too large: at most "
                            f"{MAX_LIMIT_NUMBER} (2**53, what the limiter's token counts hold exactly); a limit "
                            "that large limits nothing, so remove it")
                ok = False
        _, _, burst, cost = numbers
        if ok and burst is not None and cost is not None and cost > burst:
            self.report(("spec", "limits", i, "cost"), Code.BAD_LIMIT,
                        f"cost {cost} is more than burst {burst}: no call could ever pass; raise burst"
                        + ("" if isinstance(raw, dict) and "burst" in raw else
                           " (without `burst:` it is the rate's count)"))
            ok = False
        return ok

    def _item_locations(self, json_path: JsonPath, items: list[Json]) -> tuple[Location, ...]:
        return tuple(self.at(json_path + (i,)) for i in range(len(items)))

    def _check_globs(self, json_path: JsonPath, patterns: list[Json]) -> bool:
        ok = True
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str):
                continue  # the schema reports it
            if operations.is_class_selector(pattern):
                name = pattern[len(operations.CLASS_PREFIX):]
                known = sorted(self.catalog.classes)
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f"did you mean 'class:{close[0]}'? " if close else ""
                    self.report(json_path + (i,), Code.UNKNOWN_CLASS,
                                f"no operation declares class '{name}'; {hint}known classes: "
                                + ", ".join(f"class:{k}" for k in known))
                    ok = False
                continue
            if globs.is_literal(pattern):
                continue  # names itself: nothing to compile (10,000 distinct extension ids would churn the cache)
            try:
                globs.compile_glob(pattern, ".")
            except globs.GlobError as exc:
                self.report(json_path + (i,), Code.BAD_GLOB, str(exc))
                ok = False
        return ok

    def _matched_operations(self, selectors: list[str], deny: bool) -> tuple[str, ...]:
        """The catalogue's operations these selectors match; once per (selectors, effect, catalog), as
        _args_record: matching every operation against every selector of every rule was 3% of a large check."""
        return _MATCHED_OPERATIONS.get((tuple(selectors), deny), (self.catalog,), partial(
            _matched_operations, self.catalog, selectors, deny))

    def _args_record(self, selectors: list[str]) -> Type | None:
        """`args` typed from the schemas of the operations these selectors match (None: nothing known); once
        per (selectors, catalog): thousands of rules repeat the same few operation lists."""
        return _ARGS_RECORDS.get(tuple(selectors), (self.catalog,), partial(_args_record, self.catalog, selectors))

    def _compile(self, source: str, json_path: JsonPath, record: Type | None = None,
                 deny: bool = False, context: review.RuleContext | None = None) -> cel_compiler.Program | None:
        compiled = _COMPILED.get((source, deny, self.generate), (record,),
                                 partial(_compile, source, record, deny, self.generate))
        node = self.doc.nodes.get(json_path)
        for err in compiled.errors:
            pos = err.pos if not isinstance(err, cel_ast.CelSyntaxError) else cel_ast.Pos(err.line, err.column)
            line, column = self._expression_position(node, pos)
            code = _ERROR_CODES.get(type(err), Code.CEL_INVALID)
            self.findings.append(Finding(Location(self.path, line, column), "error", code,
                                         f"{err.message} in condition {source.strip()!r}"))
        if not source.isascii():
            self._invisible(source, node)
        program = compiled.program
        if program is not None and program.type not in (Type("bool"), DYN):
            self.report(json_path, Code.CEL_TYPE, f"condition must be bool, but it is {program.type}")
            return None
        for code, message, pos in compiled.warnings:
            line, column = self._expression_position(node, pos)
            self.findings.append(Finding(Location(self.path, line, column), "warning", code, message))
        if program is not None and program.node is not None and context is not None:
            for code, message, pos in review.condition_findings(program.node, context):  # per rule: its context
                line, column = self._expression_position(node, pos)
                self.findings.append(Finding(Location(self.path, line, column), "warning", code, message))
        return program

    def _invisible(self, source: str, node: yaml.Node | None) -> None:
        """Characters that display as nothing, written raw in a condition: `path.under("/sec\u200brets")`
        with a real zero-width space reads as the real directory and never matches it. An escape is visible."""
        for match in _invisible_characters().finditer(source):
            at = match.start()
            pos = cel_ast.Pos(source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at))
            line, column = self._expression_position(node, pos)
            char = match.group()
            self.findings.append(Finding(
                Location(self.path, line, column), "warning", Code.INVISIBLE_CHARACTER,
                f"invisible character U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')}) in the condition: a "
                f"literal holding it looks like one without it and never equals that; remove it, or write "
                f"\\u{ord(char):04x} (visible) if it is meant"))

    def _expression_position(self, node: yaml.Node | None, pos: cel_ast.Pos) -> tuple[int, int]:
        if not isinstance(node, yaml.ScalarNode):
            return (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 1)
        return expression_position(node, self.lines, pos.line, pos.column)

    def _suite(self, data: Json) -> None:
        cases = []
        names: set[str] = set()
        for i, raw in enumerate(data["cases"]):
            if raw["name"] in names:
                self.report(("cases", i, "name"), Code.DUPLICATE_CASE, f"test case name '{raw['name']}' repeats")
                continue
            names.add(raw["name"])
            cases.append(TestCase(raw["name"], raw["request"], raw["expect"], raw.get("rule"), self.at(("cases", i))))
        self.out.suites.append(TestSuite(data["metadata"]["name"], tuple(cases), self.at(())))


_PATTERN_WORDS = {  # what a schema pattern means, for messages (the regex itself helps nobody)
    "rate": "a rate: a positive count, '/', and second, minute or hour (e.g. 10/second, 100/minute, 5/hour)",
    "operations": "an operation glob (letters, digits, '_', '-', '.', '*', '?') or class:<reveals|affects>-<what>",
    "extensions": "an extension id glob (letters, digits, '_', '-', '.', '*', '?')",
    "name": "an identifier (letters, digits, '_', '.', '-'; starting with a letter or digit; at most 128)",
    "id": "an identifier (letters, digits, '_', '.', '-'; starting with a letter or digit; at most 128)",
}

_ERROR_CODES: dict[type, Code] = {cel_ast.CelSyntaxError: Code.CEL_SYNTAX, cel_checker.CheckError: Code.CEL_TYPE,
                                  cel_compiler.CostLimitError: Code.CEL_COST}


def _get(container: Json, key: str, kind: type) -> Json:
    """Lenient access for documents that may have failed the schema: a wrong type reads as empty."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, kind) else kind()


def _schema_message(err: jsonschema.ValidationError) -> str:
    where = "/".join(map(str, err.absolute_path)) or "document"
    schema: Json = err.schema
    if err.validator == "additionalProperties":
        instance: Json = err.instance
        extra = sorted(set(instance) - set(schema.get("properties", {})))
        allowed = ", ".join(sorted(schema.get("properties", {})))
        hint = did_you_mean(extra[0], schema.get("properties", {})) if len(extra) == 1 else ""
        return f"unknown key(s) {', '.join(map(repr, extra))} in {where}{hint}; allowed: {allowed}"
    if err.validator == "required":
        return f"{err.message} in {where}"
    if err.validator == "enum":
        choices: Json = err.validator_value
        hint = ""
        if isinstance(err.instance, str) and all(isinstance(c, str) for c in choices):
            folded = [c for c in choices if c.lower() == err.instance.lower()]
            close = folded or difflib.get_close_matches(err.instance.lower(), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: {err.instance!r} is not one of {', '.join(map(repr, choices))}{hint}"
    if err.validator == "pattern":
        field = str(err.absolute_path[-1]) if err.absolute_path else ""
        if isinstance(err.absolute_path[-1] if err.absolute_path else None, int) and len(err.absolute_path) > 1:
            field = str(err.absolute_path[-2])
        expected = _PATTERN_WORDS.get(field)
        if expected:
            return f"{where}: {err.instance!r} is not {expected}"
        return f"{where}: {err.instance!r} does not match the required pattern {err.validator_value}"
    return f"{where}: {err.message}"


MAX_LIMIT_NUMBER = 2**53


def _limit_numbers(raw: Json, lenient: bool = False) -> tuple[Any, ...]:
    """(count, seconds per period, burst, cost) of a limit, as ints: JSON Schema's "integer" admits 5.0, which
    loads as a float. `lenient`: for a document the schema may have refused, None for what is not a number."""
    def number(value: Json) -> int | None:
        if type(value) is int or (type(value) is float and value.is_integer()):
            return int(value)
        if not lenient:
            raise ValueError(f"not an integer: {value!r}")  # the schema let only integers through
        return None

    rate = raw.get("rate") if isinstance(raw, dict) else None
    digits, unit = rate.split("/", 1) if isinstance(rate, str) and "/" in rate else ("", None)
    count = int(digits) if digits.isascii() and digits.isdigit() else None
    if not lenient and (count is None or unit not in _RATE_UNITS):
        raise ValueError(f"not a rate: {rate!r}")
    burst = number(raw.get("burst", count)) if isinstance(raw, dict) and (count is not None or "burst" in raw) \
        else None
    cost = number(raw.get("cost", 1)) if isinstance(raw, dict) else None
    return count, _RATE_UNITS.get(str(unit)), burst, cost


_ARGS_RECORDS: IdentityMemo[Type | None] = IdentityMemo(4096)
_MATCHED_OPERATIONS: IdentityMemo[tuple[str, ...]] = IdentityMemo(4096)


def _matched_operations(catalog: Catalog, selectors: list[str], deny: bool) -> tuple[str, ...]:
    return tuple(op for op in catalog.names()
                 if any(operations.selector_matches(s, op, deny, catalog) for s in selectors))


@attrs.frozen
class _Compiled:
    """One condition text compiled for one `args` type and effect, with its file-independent warnings
    (positions inside the condition; each file maps them onto its own lines)."""

    program: cel_compiler.Program | None
    errors: tuple[Any, ...]
    warnings: tuple[tuple[Code, str, cel_ast.Pos], ...]


_COMPILED: IdentityMemo[_Compiled] = IdentityMemo(16384)
"""By (text, effect) and the very `args` type object (_args_record hands out one per operation list; Type's
equality ignores a record's fields, so equal-looking records must not share): many files repeat the same
conditions, and a reload recompiles none of them."""


def _compile(source: str, record: Type | None, deny: bool, generate: bool) -> _Compiled:
    decls = POLICY_DECLS if record is None else {**POLICY_DECLS, "args": record}
    program, errors = cel_compiler.compile_expression(source, decls, POLICY_ENVIRONMENT, total=True,
                                                      costs=POLICY_COSTS, generate=generate)
    warnings: list[tuple[Code, str, cel_ast.Pos]] = []
    if program is not None and program.type in (Type("bool"), DYN):
        tree = program.node if program.node is not None else cel_ast.parse(source, POLICY_ENVIRONMENT.namespaced)
        warnings.extend((Code.PATH_PREFIX, message, pos) for message, pos in arg_types.prefix_tests(tree))
        if deny and record is not None:
            warnings.extend((Code.UNGUARDED_OPTIONAL,
                             f"deny reads optional args.{field} without has(): a call without it makes the condition "
                             f"error, which a deny counts as a match (it denies every such call); write "
                             f"'args.?{field}.orValue(<default>) ...' or 'has(args.{field}) && ...'", pos)
                            for field, pos in arg_types.unguarded_optional_reads(tree, record))
    return _Compiled(program, tuple(errors), tuple(warnings))


@attrs.define(eq=False)
class _CompileOnCall:
    """The closures of a program loaded in a child process (loader_parallel), compiled from its tree at the
    first evaluation: closures do not pickle, and `check` evaluates only the conditions its test cases and
    overlap examples reach. The same text, tree, types and compiler as in the child: the same closures."""

    source: str
    node: cel_ast.Node
    record: Type | None
    fn: cel_compiler.Fn | None = None

    def __call__(self, activation: Activation) -> Value:
        if self.fn is None:
            decls = POLICY_DECLS if self.record is None else {**POLICY_DECLS, "args": self.record}
            program, errors = cel_compiler.compile_tree(self.source, self.node, decls, POLICY_ENVIRONMENT,
                                                        total=True, costs=POLICY_COSTS, generate=False)
            if program is None:  # cannot be: the child compiled this very tree without an error
                raise RuntimeError(f"condition {self.source!r} no longer compiles: {errors}")
            self.fn = program.fn
        return self.fn(activation)


def _portable(loaded: LoadedFile, catalog: Catalog) -> LoadedFile:
    """`loaded` with programs that pickle: each with a _CompileOnCall in place of its closures."""
    if not loaded.programs:
        return loaded
    rules = {r.qualified_id: r for p in loaded.policies for r in p.rules}
    programs = {}
    for rid, program in loaded.programs.items():
        selectors = list(rules[rid].operations)  # _DocumentLoader._policy's: a loaded rule's are all strings
        record = _ARGS_RECORDS.get(tuple(selectors), (catalog,), partial(_args_record, catalog, selectors))
        node = program.node if program.node is not None else cel_ast.parse(program.source,
                                                                           POLICY_ENVIRONMENT.namespaced)
        programs[rid] = attrs.evolve(program, fn=_CompileOnCall(program.source, node, record))
    return attrs.evolve(loaded, programs=programs)


_REDUCERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    **{cls: loader_parallel.attrs_reducer(cls) for cls in (
        *cel_ast.NODE_TYPES, cel_ast.Pos, cel_compiler.Program, _CompileOnCall, Type, Field, LoadedFile, Policy,
        Rule, Limit, Location, Finding, TestSuite, TestCase)},
    MappingProxyType: loader_parallel.read_only_reducer,
}
"""How a child of loader_parallel pickles what it loaded: attrs instances as their init arguments."""


def _args_record(catalog: Catalog, selectors: list[str]) -> Type | None:
    matched = [info for op in catalog.names()
               if any(operations.selector_matches(s, op, False, catalog) for s in selectors)
               and (info := catalog.get(op)) is not None]
    return arg_types.args_type(matched)


def _cross_file_checks(result: LoadResult) -> list[Finding]:
    findings = []
    names: dict[str, Location] = {}
    for policy in result.policies:
        if policy.name in names:
            findings.append(Finding(policy.location, "error", Code.DUPLICATE_POLICY,
                                    f"policy name '{policy.name}' is already defined at {names[policy.name]}; "
                                    "policy names must be unique across the set"))
        else:
            names[policy.name] = policy.location
    return findings
