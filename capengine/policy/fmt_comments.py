"""Where each comment of a policy file belongs, so `capengine fmt` can move it with the element it annotates.

ruamel.yaml keeps comments, but attaches a comment line to whatever precedes it (a note above `operations:`
becomes a trailer of `effect:`), so reordering keys would carry it to the wrong place. Comments are found here
from the token stream instead (a `#` outside every scalar) and attached by position to the *entries* of block
collections (a key with its value, or a list item):

- a comment after text on its line (end of line) annotates the innermost entry on that line;
- a comment on a line of its own annotates the next entry (a head comment), or, when it is indented deeper than
  that entry, the deeper entry it follows (a foot comment: a note or commented-out key at the end of a block);
- comments before a document's first entry head the document when a blank line separates them from it (and
  the `# yaml-language-server:` modeline always does); those after its last entry at the left margin end it.

Inside a flow collection (`[a, b]`, `{k: v}`) the comments belong to the entry holding the collection.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

import attrs
import yaml

from capengine.policy.yaml_source import Document

try:
    from yaml import CSafeLoader as FastLoader
except ImportError:  # pragma: no cover - pure-Python fallback when libyaml is missing
    from yaml import SafeLoader as FastLoader  # type: ignore[assignment]

Path = tuple  # (document index, *JSON path)
MODELINE = "# yaml-language-server:"


@attrs.define
class Notes:
    """The comments of one entry, each as written (starting with `#`)."""

    head: list[str] = attrs.field(factory=list)
    eol: list[str] = attrs.field(factory=list)
    foot: list[str] = attrs.field(factory=list)


@attrs.frozen
class Comment:
    line: int  # 0-based
    column: int  # 0-based
    text: str
    alone: bool  # nothing but blanks before it on its line


@attrs.frozen
class _Entry:
    path: Path
    line: int  # 0-based start (the key, or the item's dash)
    column: int
    end: int  # 0-based last line of its value
    leaf: bool  # its value is a scalar or a flow collection (comments inside it cannot be placed inside)


@attrs.define
class Attached:
    notes: dict[Path, Notes] = attrs.field(factory=dict)
    doc_head: dict[int, list[str]] = attrs.field(factory=dict)
    doc_foot: dict[int, list[str]] = attrs.field(factory=dict)  # after a document's last top-level entry
    _inner: set[Path] | None = None  # every path holding an annotated entry, once all are attached

    def at(self, path: Path) -> Notes:
        return self.notes.setdefault(path, Notes())

    def under(self, path: Path) -> bool:
        """Whether any comment is attached to an entry inside `path`."""
        if self._inner is None:
            self._inner = {p[:n] for p in self.notes for n in range(1, len(p))}
        return path in self._inner


def comments(text: str) -> list[Comment]:
    """Every comment: a `#` at a line start or after a blank, outside every scalar (a block scalar's header
    line, `|  # note`, is outside it). The text must already load as YAML."""
    spans = []
    for token in yaml.scan(text, Loader=FastLoader):
        if isinstance(token, yaml.ScalarToken):
            start, end = token.start_mark.index, token.end_mark.index
            if token.style in ("|", ">"):
                newline = text.find("\n", start, end)
                start = newline if newline >= 0 else end
            spans.append((start, end))
    spans.sort()
    starts = [s for s, _ in spans]
    found = []
    line, counted = 0, 0
    for match in re.finditer(r"(?:^|(?<=[ \t]))#[^\r\n]*", text, re.MULTILINE):
        i = match.start()
        k = bisect.bisect_right(starts, i) - 1
        if k >= 0 and spans[k][0] <= i < spans[k][1]:
            continue
        line, counted = line + text.count("\n", counted, i), i
        line_start = text.rfind("\n", 0, i) + 1
        found.append(Comment(line, i - line_start, match.group(0).rstrip(), not text[line_start:i].strip()))
    return found


def _last_line(node: yaml.Node) -> int:
    if isinstance(node, yaml.ScalarNode):
        end = node.end_mark
        if node.style in ("|", ">") and end.column == 0 and end.line > node.start_mark.line:
            return end.line - 1  # a block scalar ends at the start of the next line
        return end.line
    if _flow(node) or not node.value:
        return node.end_mark.line
    last = node.value[-1]
    return _last_line(last[1] if isinstance(node, yaml.MappingNode) else last)


def _entries(node: yaml.Node, path: Path, dashes: list[tuple[int, int, int]]) -> Iterator[_Entry]:
    """The entries of the block collections in `node`, outermost first on each line. `dashes`: (index, line,
    column) of every block list item's `-`, which may sit on a line of its own above the item's value."""
    if isinstance(node, yaml.ScalarNode) or _flow(node):
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            child = path + (key_node.value,)
            yield _Entry(child, key_node.start_mark.line, key_node.start_mark.column, _last_line(value),
                         _is_leaf(value))
            yield from _entries(value, child, dashes)
    else:
        for i, value in enumerate(node.value):
            child = path + (i,)
            k = bisect.bisect_right(dashes, (value.start_mark.index, 1 << 30, 0)) - 1
            line, column = (dashes[k][1], dashes[k][2]) if k >= 0 else (value.start_mark.line,
                                                                        max(value.start_mark.column - 2, 0))
            yield _Entry(child, line, column, _last_line(value), _is_leaf(value))
            yield from _entries(value, child, dashes)


def _is_leaf(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) or _flow(node) or not node.value


def _flow(node: yaml.Node) -> bool:
    return bool(getattr(node, "flow_style", False))


def attach(text: str, docs: list[Document]) -> Attached:
    """Each comment of `text` attached to the entry it annotates (see the module docstring). Linear in the size
    of the file (times the nesting depth): entries come in document order, outermost first on each line."""
    dashes = [(t.start_mark.index, t.start_mark.line, t.start_mark.column)
              for t in yaml.scan(text, Loader=FastLoader) if isinstance(t, yaml.BlockEntryToken)]
    entries: list[_Entry] = []
    firsts: set[Path] = set()
    for i, doc in enumerate(docs):
        found = list(_entries(doc.nodes[()], (i,), dashes))
        if found:
            firsts.add(found[0].path)
        entries += found
    index = _Index(entries, text.count("\n") + 1)
    lines = [line.strip() for line in text.split("\n")]
    out = Attached()
    for comment in comments(text):
        holder = index.cover[comment.line] if not comment.alone else None
        if holder is None:
            _attach_line(comment, index, firsts, out, lines)
        elif holder.leaf and comment.line < holder.end:
            out.at(holder.path).head.append(comment.text)  # inside a multi-line flow collection
        else:
            out.at(holder.path).eol.append(comment.text)
    return out


class _Index:
    """The entries by line: the innermost one holding each line, the first starting after a line, the chain of
    entries ending on each line."""

    def __init__(self, entries: list[_Entry], line_count: int) -> None:
        self.entries, self.starts = entries, [e.line for e in entries]
        self.cover: list[_Entry | None] = [None] * (line_count + 1)
        self.ending: dict[int, list[_Entry]] = {}
        for e in entries:  # outer entries first, so inner ones overwrite them
            self.cover[e.line:e.end + 1] = [e] * (e.end + 1 - e.line)
            self.ending.setdefault(e.end, []).append(e)
        self.ends = sorted(self.ending)

    def next_after(self, line: int) -> _Entry | None:
        k = bisect.bisect_right(self.starts, line)
        return self.entries[k] if k < len(self.entries) else None

    def ended_before(self, line: int, column: int) -> _Entry | None:
        """The innermost entry, at most `column` deep, among those ending last before `line`."""
        k = bisect.bisect_left(self.ends, line) - 1
        if k < 0:
            return None
        chain = [e for e in self.ending[self.ends[k]] if e.column <= column]
        return max(chain, key=lambda e: len(e.path)) if chain else None


def _attach_line(comment: Comment, index: _Index, firsts: set[Path], out: Attached, lines: list[str]) -> None:
    nxt = index.next_after(comment.line)
    prev = index.ended_before(comment.line, comment.column)
    if prev is not None and nxt is not None and prev.path[0] != nxt.path[0]:
        prev = None  # a comment between two documents belongs to the next one
    if nxt is None:
        if prev is None:
            out.doc_head.setdefault(0, []).append(comment.text)  # a file of comments and a flow document
        elif len(prev.path) == 2:
            out.doc_foot.setdefault(prev.path[0], []).append(comment.text)
        else:
            out.at(prev.path).foot.append(comment.text)
    elif prev is not None and comment.column > nxt.column and prev.column > nxt.column:
        out.at(prev.path).foot.append(comment.text)
    elif nxt.path in firsts and (comment.text.startswith(MODELINE) or not all(lines[comment.line + 1:nxt.line])):
        out.doc_head.setdefault(nxt.path[0], []).append(comment.text)
    else:
        out.at(nxt.path).head.append(comment.text)
