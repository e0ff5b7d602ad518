"""YAML documents with positions: plain data plus the line/column of every node.

PyYAML's constructors drop positions and silently keep the last of duplicate keys; policy authors need both
"file:line:col" in every message and an error for a repeated key. So documents are composed to nodes (C
parser when available) and converted here, recording each value's mark by its JSON path.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import yaml

from capengine.errors import CapengineError

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - pure-Python fallback when libyaml is missing
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

JsonPath = tuple  # of str | int


class YamlSourceError(CapengineError):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


@attrs.define
class Document:
    data: object
    marks: dict[JsonPath, tuple[int, int]]  # JSON path -> (line, column), 1-based
    nodes: dict[JsonPath, yaml.Node]
    duplicates: list[tuple[str, int, int]]  # (key, line, column) of repeated mapping keys
    key_marks: dict[JsonPath, tuple[int, int]] = attrs.field(factory=dict)  # where each mapping key is written

    def position(self, path: JsonPath) -> tuple[int, int]:
        """Position of the node at `path`, or of its nearest ancestor that exists."""
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


def _scalar(node: yaml.ScalarNode) -> object:
    """Construct a scalar from its already-resolved tag (int, bool, null, str, ...)."""
    if node.tag == _STR_TAG:  # most scalars: the constructor would return node.value itself, more slowly
        return node.value
    construct = _CONSTRUCTOR.yaml_constructors.get(node.tag)
    if node.tag == _MERGE_TAG:
        raise YamlSourceError("merge keys (<<) are not supported: write the keys out (a merged mapping hides "
                              "which value a rule really has, and which of two merges wins)",
                              node.start_mark.line + 1, node.start_mark.column + 1)
    if construct is None:
        raise YamlSourceError(f"unsupported YAML tag {node.tag}", node.start_mark.line + 1,
                              node.start_mark.column + 1)
    return construct(_CONSTRUCTOR, node)


def load_documents(text: str) -> Iterator[Document]:
    try:
        for root in yaml.compose_all(text, Loader=_Loader):
            if root is None or _empty(root):
                continue
            doc = Document(None, {}, {}, [])
            doc.data = _convert(root, (), doc, 0)
            yield doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise YamlSourceError(f"{problem}{context}", mark.line + 1 if mark else 1,
                              mark.column + 1 if mark else 1) from None
    except yaml.reader.ReaderError as exc:
        raise _refused_character(text, exc) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(str(exc), 1, 1) from None


def _refused_character(text: str, exc: yaml.reader.ReaderError) -> YamlSourceError:
    """A character YAML does not allow (NUL, another control character, U+FFFE), at its line and column.
    The reader's own error has a position only (in bytes, from the C parser) and is no MarkedYAMLError; the
    first character the reader refuses is the first one its NON_PRINTABLE class finds."""
    found = yaml.reader.Reader.NON_PRINTABLE.search(text)
    at = found.start() if found is not None else 0
    char = found.group() if found is not None else chr(exc.character) if isinstance(exc.character, int) else "?"
    line_start = text.rfind("\n", 0, at) + 1
    escape = f"\\x{ord(char):02X}" if ord(char) < 256 else f"\\u{ord(char):04X}"
    return YamlSourceError(f"character U+{ord(char):04X} is not allowed in YAML ({exc.reason}); remove it, or "
                           f"write it as the escape {escape} inside a double-quoted string",
                           text.count("\n", 0, at) + 1, at - line_start + 1)


def _empty(node: yaml.Node) -> bool:
    """A document with no content at all (after a trailing `---`, or holding only comments): nothing, as
    kubectl reads it, not a null that fails as a policy. An explicit `~` or `null` is content."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG and node.value == "" and not node.style


MAX_DEPTH = 64
MAX_NODES = 100_000  # aliases can make a small file expand exponentially ("billion laughs")


def _convert(node: yaml.Node, path: JsonPath, doc: Document, depth: int) -> object:
    doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    doc.nodes[path] = node
    if len(doc.marks) > MAX_NODES:
        raise YamlSourceError(f"document expands to more than {MAX_NODES} values (aliases repeating aliases?); "
                              "write it out plainly", node.start_mark.line + 1, node.start_mark.column + 1)
    if depth > MAX_DEPTH:
        raise YamlSourceError("document nests too deeply", node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                hint = ""
                if isinstance(key_node, yaml.ScalarNode):  # YAML 1.1: `on`, `no` are bools, `1` an int, `~` null
                    kind = {bool: "bool", int: "int", float: "float", type(None): "null"}.get(type(key), "value")
                    hint = f": YAML reads the key {key_node.value} as a {kind}; quote it ('{key_node.value}')"
                raise YamlSourceError(f"mapping keys must be strings{hint}", key_node.start_mark.line + 1,
                                      key_node.start_mark.column + 1)
            if key in result:
                doc.duplicates.append((key, key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                continue  # the first occurrence stands; the duplicate is reported, never silently used
            child = path + (key,)
            doc.key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _convert(value_node, child, doc, depth + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), doc, depth + 1) for i, item in enumerate(node.value)]
    if not isinstance(node, yaml.ScalarNode):
        raise YamlSourceError(f"unsupported YAML node {type(node).__name__}", node.start_mark.line + 1,
                              node.start_mark.column + 1)
    try:
        return _scalar(node)
    except yaml.constructor.ConstructorError as exc:
        raise YamlSourceError(str(exc.problem), node.start_mark.line + 1, node.start_mark.column + 1) from None


def expression_position(node: yaml.ScalarNode, source_lines: list[str], line: int, column: int) -> tuple[int, int]:
    """Map a 1-based (line, column) inside a scalar's value to the YAML file's (line, column).

    Exact for plain and quoted single-line scalars and for literal blocks (`|`); for folded blocks (`>`)
    the folded line is walked back onto its source lines.
    """
    start_line, start_col = node.start_mark.line, node.start_mark.column  # 0-based
    style = node.style
    if style in ("|", ">"):
        content = []
        end = node.end_mark.line + (0 if node.end_mark.column == 0 else 1)  # a block ends at the next key
        for i in range(start_line + 1, min(end, len(source_lines))):
            text = source_lines[i]
            content.append((i, len(text) - len(text.lstrip(" ")), text.strip(" ")))
        content = [c for c in content if c[2]] or [(start_line + 1, 0, "")]
        if style == "|":
            block_indent = min(indent for _, indent, _ in content)
            src = content[min(line - 1, len(content) - 1)][0]
            return src + 1, block_indent + column
        remaining = column
        for src, indent, text in content:
            if remaining <= len(text) + 1:
                return src + 1, indent + remaining
            remaining -= len(text) + 1
        src, indent, _ = content[-1]
        return src + 1, indent + 1
    offset = 1 if style in ("'", '"') else 0
    if line == 1:
        if style in ("'", '"') and start_line < len(source_lines):
            return start_line + 1, _quoted_column(source_lines[start_line], start_col, style, column)
        return start_line + 1, start_col + offset + column
    return start_line + line, column


_ESCAPE_WIDTH = {"x": 4, "u": 6, "U": 10}


def _quoted_column(text: str, quote_col: int, style: str, column: int) -> int:
    """Source column (1-based) of the `column`-th character of a quoted scalar's value: escapes (`\"`,
    `\u00e9`, `''`) take more source characters than the one value character they stand for."""
    pos, value_index = quote_col + 1, 1
    while value_index < column and pos < len(text):
        if style == '"' and text[pos] == "\\":
            pos += _ESCAPE_WIDTH.get(text[pos + 1] if pos + 1 < len(text) else "", 2)
        elif style == "'" and text.startswith("''", pos):
            pos += 2
        else:
            pos += 1
        value_index += 1
    return pos + 1
