"""`capengine fmt`: one canonical YAML layout for policy and policy-test files (like `opa fmt`), comments kept.

The layout is a function of the loaded data and the comments alone: keys in a fixed order (known keys in schema
order, others sorted), a fixed flow/block choice per position (short lists and maps of scalars in flow style when
they fit on the line and hold no comment; rules, cases, spec in block style), one quoting style per kind of
scalar (CEL conditions single-quoted, as CEL strings use double quotes), so formatting is idempotent and two files
meaning the same thing are written the same. Comments are attached to the entry they annotate
(`fmt_comments`) and written with it by ruamel.yaml's round-trip emitter.

Three checks guard every result before it is returned, so a formatter bug refuses the file instead of harming it:
the result loads to the same data (what the policies mean), holds the same comments, and formats to itself.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)
from ruamel.yaml.tokens import CommentToken

from capengine.errors import CapengineError
from capengine.policy.fmt_comments import MODELINE, Attached, FastLoader, Notes, attach, comments
from capengine.policy.yaml_source import Document, YamlSourceError, load_documents

WIDTH = 100  # lines are kept within this column where they can be: flow collections, quoted and folded text

_TOP = ("apiVersion", "kind", "metadata", "spec", "cases")
_METADATA = ("name", "description", "labels")
_SPEC = ("extensions", "rules", "limits")
_RULE = ("id", "effect", "operations", "condition", "message")
_LIMIT = ("operations", "rate", "burst", "cost")
_CASE = ("name", "request", "expect", "rule")
_REQUEST = ("extension", "operation", "path", "library", "args")


class FormatError(CapengineError):
    """A file fmt will not rewrite: its YAML does not load, or it holds what fmt cannot keep."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _Yaml11Resolver(VersionedResolver):
    """The policy loader reads YAML 1.1 (PyYAML), where `yes`, `on` and `0777` are not strings; ruamel writes
    YAML 1.2 by default and would leave such strings unquoted, changing what they load as."""

    @property
    def processing_version(self) -> Any:
        return (1, 1)


try:
    from yaml import CSafeDumper as _FlowDumper
except ImportError:  # pragma: no cover - pure-Python fallback when libyaml is missing
    from yaml import SafeDumper as _FlowDumper  # type: ignore[assignment]


def _yaml() -> YAML:
    out = YAML(typ="rt", pure=True)
    out.Resolver = _Yaml11Resolver
    out.indent(mapping=2, sequence=4, offset=2)  # list items indented under their key, as the bundled files are
    out.width = 10**6  # never wrapped by the emitter: fmt folds long text itself, at blanks, within WIDTH
    out.allow_unicode = True
    return out


def _order(keys: list[str], path: tuple) -> list[str]:
    """Known keys in schema order, then the others (args, labels, schema errors) sorted."""
    known = _known(path)
    return [k for k in known if k in keys] + sorted(k for k in keys if k not in known)


def _known(path: tuple) -> tuple[str, ...]:
    shape = tuple("#" if isinstance(p, int) else p for p in path)
    return {(): _TOP, ("metadata",): _METADATA, ("spec",): _SPEC, ("spec", "rules", "#"): _RULE,
            ("spec", "limits", "#"): _LIMIT, ("cases", "#"): _CASE, ("cases", "#", "request"): _REQUEST,
            }.get(shape, ())


def _block_only(path: tuple, value: Any) -> bool:
    """Positions that are always block style: the document, spec, each rule and case and their lists."""
    shape = tuple("#" if isinstance(p, int) else p for p in path)
    if shape == ("metadata",):
        return list(value) != ["name"]
    return shape in {(), ("spec",), ("spec", "rules"), ("spec", "rules", "#"), ("spec", "limits"), ("cases",),
                     ("cases", "#")}


def _simple(value: Any) -> bool:
    """Nothing a flow collection shows badly: text of several lines (escaped as `\\n` there) reads better as a
    block scalar, so a collection holding one is written in block style."""
    if isinstance(value, dict):
        return all(_simple(v) for v in value.values())
    if isinstance(value, list):
        return all(_simple(v) for v in value)
    return not (isinstance(value, str) and "\n" in value)


def _flow_width(value: Any) -> int:
    """How long `value` is on one line in flow style (libyaml's quoting, close to ruamel's and much faster)."""
    return len(yaml.dump(value, Dumper=_FlowDumper, default_flow_style=True, width=1 << 30,
                         allow_unicode=True).rstrip("\n").removesuffix("\n..."))


_EDITOR_UNSEEN_BREAKS = ("\x85", "\u2028", "\u2029")
"""Line breaks to YAML 1.1 (and str.splitlines) that most editors show within a line: written raw, they shift
the line numbers of findings; in a plain or block scalar ruamel cannot write them back at all."""


class _Builder:
    """Builds the ruamel document for one loaded document: canonical order, styles and attached comments."""

    def __init__(self, index: int, attached: Attached) -> None:
        self.index, self.attached = index, attached

    def node(self, value: Any, path: tuple, column: int, prefix: int) -> Any:
        """`value` at `path`; `column` is where its keys or dashes go if it is block style, `prefix` how many
        characters precede it on its line if it is flow style."""
        if isinstance(value, dict | list):
            if not value:
                out: Any = CommentedMap() if isinstance(value, dict) else CommentedSeq()
                out.fa.set_flow_style()
                return out
            if not _block_only(path, value) and _simple(value) and not self.attached.under((self.index, *path)) \
                    and prefix + _flow_width(value) <= WIDTH:
                return self._flow(value, path)
            return self._map(value, path, column) if isinstance(value, dict) else self._seq(value, path, column)
        if isinstance(value, str):
            return self._string(value, path, column, prefix)
        return value

    def _flow(self, value: Any, path: tuple) -> Any:
        out: CommentedMap | CommentedSeq
        if isinstance(value, dict):
            out = CommentedMap((k, self._flow(value[k], path + (k,))) for k in _order(list(value), path))
        elif isinstance(value, list):
            out = CommentedSeq(self._flow(v, path + (i,)) for i, v in enumerate(value))
        else:
            return value
        out.fa.set_flow_style()
        return out

    def _string(self, value: str, path: tuple, column: int, prefix: int) -> Any:
        """Conditions single-quoted (CEL strings use double quotes); text too long for its line folded at
        blanks (`>`), which reads back as written; several lines as a literal block (`|`)."""
        condition = len(path) == 4 and path[:2] == ("spec", "rules") and path[3] == "condition"
        if any(c in value for c in _EDITOR_UNSEEN_BREAKS):
            return DoubleQuotedScalarString(value)  # escaped: \N, \L, \P
        line = value[:-1] if value.endswith("\n") else value
        if "\n" in line:
            return LiteralScalarString(value)
        if line == value and prefix + len(value) + value.count("'") + 2 <= WIDTH:
            return SingleQuotedScalarString(value) if condition else value
        if not _foldable(line):
            return LiteralScalarString(value) if line != value else value
        out = FoldedScalarString(value)
        out.fold_pos = _folds(line, WIDTH - column)
        return out

    def _map(self, value: dict, path: tuple, column: int) -> CommentedMap:
        out = CommentedMap()
        carry: list[str] = []
        for key in _order(list(value), path):
            out[key] = self.node(value[key], path + (key,), column + 2, column + len(key) + 2)
            carry = self._notes(out, key, path + (key,), column, carry)
        if carry:
            self.foot(out, key, [" " * column + text for text in carry])
        return out

    def _seq(self, value: list, path: tuple, column: int) -> CommentedSeq:
        out = CommentedSeq()
        carry: list[str] = []
        for i, child in enumerate(value):
            out.append(self.node(child, path + (i,), column + 2, column + 2))
            carry = self._notes(out, i, path + (i,), column, carry)
        if carry:
            self.foot(out, len(out) - 1, [" " * column + text for text in carry])
        return out

    def _notes(self, container: Any, key: Any, path: tuple, column: int, carry: list[str]) -> list[str]:
        """Write the comments of `container[key]`; returns its foot comments, which the caller writes after the
        last entry (a foot of an entry that canonical order moves up heads the entry that now follows it)."""
        notes = self.attached.notes.get((self.index, *path)) or Notes()
        value = container[key]
        block_scalar = isinstance(value, LiteralScalarString | FoldedScalarString)
        # one end-of-line comment per line: more (from a multi-line flow collection), or one on a block scalar's
        # header (`key: |  # note`, which ruamel cannot write back), go above the entry
        eol, above = (notes.eol[:1], notes.eol[1:]) if not block_scalar else ([], notes.eol)
        if isinstance(container, CommentedSeq) and isinstance(value, CommentedMap) and value \
                and not value.fa.flow_style():  # a list item written `- id: x` over several lines
            first = next(iter(value))
            slot = value.ca.items.setdefault(first, [None, None, None, None])
            if slot[1]:  # a note above `- id: x` is the item's, not its first key's
                above = [t.value.strip() for t in slot[1]] + above
                slot[1] = None
            if eol and slot[2] is None and not isinstance(value[first], CommentedMap | CommentedSeq):
                slot[2] = CommentToken(" " + eol[0] + "\n", CommentMark(0))  # `- {id: x}  # note` -> `- id: x  # note`
            elif eol:
                above.append(eol[0])
            eol = []
        head = carry + notes.head + above
        if head or eol:
            slot = container.ca.items.setdefault(key, [None, None, None, None])
            if head:
                slot[1] = [CommentToken(text + "\n", CommentMark(column)) for text in head]
            if eol:
                slot[0 if isinstance(container, CommentedSeq) else 2] = CommentToken(" " + eol[0] + "\n",
                                                                                    CommentMark(0))
        return notes.foot

    def foot(self, container: Any, key: Any, lines: list[str]) -> None:
        """Foot lines go after the last line written for `container[key]`: the trailer of its last leaf."""
        while True:
            value = container[key]
            if not isinstance(value, CommentedMap | CommentedSeq) or value.fa.flow_style() or not value:
                break
            container, key = value, (list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
        slot = container.ca.items.setdefault(key, [None, None, None, None])
        index = 0 if isinstance(container, CommentedSeq) else 2
        block_scalar = isinstance(container[key], LiteralScalarString | FoldedScalarString)
        current = slot[index].value if slot[index] is not None else ("" if block_scalar else "\n")
        slot[index] = CommentToken(current + "".join(line + "\n" for line in lines), CommentMark(0))


def _folds(text: str, width: int) -> list[int]:
    """Where to break `text` (indices of blanks) so that each line is at most `width` long where it can be."""
    out, start, last = [], 0, -1
    for i, ch in enumerate(text):
        if ch == " ":
            if i - start > width and last > start:
                out.append(last)
                start = last + 1
            last = i
    if len(text) - start > width and last > start:
        out.append(last)
    return out


def _foldable(text: str) -> bool:
    """Text a folded block (`>`) reads back exactly: one line, no tab, single spaces, no blank at either end."""
    return bool(text) and "\t" not in text and "  " not in text and text == text.strip() and text.isprintable()


def _load(text: str) -> list[Document]:
    try:
        docs = list(load_documents(text))
    except YamlSourceError as exc:
        raise FormatError(f"not valid YAML: {exc.message}; fix it first (see capengine check)",
                          exc.line, exc.column) from None
    for doc in docs:
        if doc.duplicates:
            key, line, column = doc.duplicates[0]
            raise FormatError(f"duplicate key '{key}': fmt would have to drop one; fix it first", line, column)
        if not isinstance(doc.data, dict):
            raise FormatError("a policy or policy-test document is a mapping (apiVersion, kind, ...); this one "
                              f"is a {type(doc.data).__name__}", *doc.position(()))
    for token in yaml.scan(text, Loader=FastLoader):
        if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
            raise FormatError(f"anchors and aliases (&{token.value}, *{token.value}) are not kept by fmt; write "
                              "the value out where it is used", token.start_mark.line + 1,
                              token.start_mark.column + 1)
    return docs


def _dump(docs: list[Document], text: str) -> str:
    attached = attach(text, docs)
    built = []
    for i, doc in enumerate(docs):
        builder = _Builder(i, attached)
        root = builder.node(doc.data, (), 0, 0)
        head, foot = attached.doc_head.get(i), attached.doc_foot.get(i)
        if head:  # a blank line keeps a file header apart from the first entry's own note
            blank = [] if all(line.startswith(MODELINE) for line in head) else [CommentToken("\n", CommentMark(0))]
            root.ca.comment = [None, [CommentToken(line + "\n", CommentMark(0)) for line in head] + blank]
        if foot and isinstance(root, CommentedMap) and root and not root.fa.flow_style():
            builder.foot(root, list(root)[-1], foot)
        built.append(root)
    out = io.StringIO()
    emitter = _yaml()
    emitter.explicit_start = len(built) > 1
    emitter.dump_all(built, out)
    return out.getvalue()


def format_text(text: str) -> str:
    """The canonical form of one policy or policy-test file; FormatError when it cannot be formatted safely."""
    result = _format(text)
    if _format(result) != result:
        raise FormatError("internal error: fmt would format its own output differently; file left as it is")
    return result


def _format(text: str) -> str:
    docs = _load(text)
    if not docs:
        raise FormatError("the file holds no YAML document")
    result = _dump(docs, text)
    if [d.data for d in _load(result)] != [d.data for d in docs]:  # a formatter bug never changes what it means
        raise FormatError("internal error: the formatted text would not load to the same data; file left as it is")
    if Counter(c.text for c in comments(result)) != Counter(c.text for c in comments(text)):
        raise FormatError("internal error: the formatted text would lose or repeat a comment; file left as it is")
    return result

