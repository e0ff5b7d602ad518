"""`capengine fmt`: one canonical YAML layout for policy and policy-test files (like `opa fmt`).

The output is a function of the loaded data alone (keys in a fixed order, a fixed flow/block choice per
position), so formatting is idempotent by construction and two files meaning the same thing are written the
same. PyYAML drops comments, so a file with comments (other than the leading `# yaml-language-server` line,
which is kept) is refused rather than silently stripped. Every result is loaded again and compared with the
input's data before it is returned: a formatter bug refuses the file instead of changing what it means.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

import yaml

from capengine.errors import CapengineError
from capengine.policy.yaml_source import YamlSourceError, load_documents

WIDTH = 100  # PyYAML breaks flow collections and long scalars past this column (where it can)
_SHORT_LIST = 80  # a list of strings at most this long (as written) stays on one line
_LANGUAGE_SERVER = re.compile(r"# yaml-language-server:[^\n]*\n?")

_TOP = ("apiVersion", "kind", "metadata", "spec", "cases")
_METADATA = ("name", "description", "labels")
_SPEC = ("extensions", "rules", "limits")
_RULE = ("id", "effect", "operations", "condition", "message")
_LIMIT = ("operations", "rate", "burst", "cost")
_CASE = ("name", "request", "expect", "rule")
_REQUEST = ("extension", "operation", "path", "library", "args")


class FormatError(CapengineError):
    """A file fmt will not rewrite: its YAML does not load, or it holds comments fmt would lose."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _Flow(list):
    """A list written in flow style: [a, b]."""


class _FlowMap(dict):
    """A mapping written in flow style: {k: v}."""


class _Condition(str):
    """A CEL condition: single-quoted when it fits one line (CEL strings use double quotes)."""

    __slots__ = ()


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        """Block sequences indented under their key (`rules:` then `  - id: x`), as the bundled files and most
        YAML style guides write them; PyYAML writes them flush with the key."""
        super().increase_indent(flow, False)


def _represent_flow(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


def _represent_flow_map(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


def _represent_condition(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else "'"  # PyYAML falls back to double quotes when a style cannot hold it
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=style)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    """Multi-line text (a description, a message) as a literal block, which shows its lines as they are."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


_Dumper.add_representer(_Flow, _represent_flow)
_Dumper.add_representer(_FlowMap, _represent_flow_map)
_Dumper.add_representer(_Condition, _represent_condition)
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(dict, _represent_dict)  # keep the canonical key order (no sort)


def _ordered(data: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """Known keys in `order`, then any others (a schema error elsewhere) in their original order."""
    out = {k: data[k] for k in order if k in data}
    out.update((k, v) for k, v in data.items() if k not in out)
    return out


def _strings(value: Any) -> Any:
    """A list of strings short enough for one line as a flow list; anything else unchanged."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value) \
            and sum(len(v) + 4 for v in value) <= _SHORT_LIST:
        return _Flow(value)
    return value


def _flow_all(value: Any) -> Any:
    if isinstance(value, dict):
        return _FlowMap({k: _flow_all(v) for k, v in value.items()})
    if isinstance(value, list):
        return _Flow(_flow_all(v) for v in value)
    return value


def _rule(rule: Any) -> Any:
    if not isinstance(rule, dict):
        return rule
    out = _ordered(rule, _RULE)
    if "operations" in out:
        out["operations"] = _strings(out["operations"])
    if isinstance(out.get("condition"), str):
        out["condition"] = _Condition(out["condition"])
    return out


def _limit(limit: Any) -> Any:
    return _flow_all(_ordered(limit, _LIMIT)) if isinstance(limit, dict) else limit


def _case(case: Any) -> Any:
    if not isinstance(case, dict):
        return case
    out = _ordered(case, _CASE)
    if isinstance(out.get("request"), dict):
        out["request"] = _flow_all(_ordered(out["request"], _REQUEST))
    return out


def canonical(doc: Any) -> Any:
    """The document with its keys in canonical order and each collection marked flow or block."""
    if not isinstance(doc, dict):
        return doc
    out = _ordered(doc, _TOP)
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        metadata = _ordered(metadata, _METADATA)
        out["metadata"] = _FlowMap(metadata) if list(metadata) == ["name"] else metadata
    spec = out.get("spec")
    if isinstance(spec, dict):
        spec = _ordered(spec, _SPEC)
        if "extensions" in spec:
            spec["extensions"] = _strings(spec["extensions"])
        if isinstance(spec.get("rules"), list):
            spec["rules"] = [_rule(r) for r in spec["rules"]]
        if isinstance(spec.get("limits"), list):
            spec["limits"] = [_limit(lim) for lim in spec["limits"]]
        out["spec"] = spec
    if isinstance(out.get("cases"), list):
        out["cases"] = [_case(c) for c in out["cases"]]
    return out


def _load(text: str) -> list[Any]:
    try:
        docs = list(load_documents(text))
    except YamlSourceError as exc:
        raise FormatError(f"not valid YAML: {exc.message}; fix it first (see capengine check)",
                          exc.line, exc.column) from None
    for doc in docs:
        if doc.duplicates:
            key, line, column = doc.duplicates[0]
            raise FormatError(f"duplicate key '{key}': fmt would have to drop one; fix it first", line, column)
    return [doc.data for doc in docs]


def _comments(text: str) -> Iterable[tuple[int, int]]:
    """(line, column) of every comment: a '#' outside every scalar token, at a line start or after a blank."""
    spans = sorted((t.start_mark.index, t.end_mark.index) for t in yaml.scan(text, Loader=yaml.SafeLoader)
                   if isinstance(t, yaml.ScalarToken))
    starts = [s for s, _ in spans]
    for match in re.finditer(r"(?:^|(?<=[ \t]))#", text, re.MULTILINE):
        i = match.start()
        k = bisect.bisect_right(starts, i) - 1
        if k >= 0 and spans[k][0] <= i < spans[k][1]:
            continue
        line = text.count("\n", 0, i)
        yield line + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def format_text(text: str) -> str:
    """The canonical form of one policy or policy-test file; FormatError when it cannot be formatted safely."""
    data = _load(text)
    header = ""
    match = _LANGUAGE_SERVER.match(text)
    if match:
        header = match.group(0).rstrip("\n") + "\n"
    for line, column in _comments(text):
        if match and line == 1:
            continue
        raise FormatError("the file has comments, which fmt cannot keep (PyYAML drops them); it is left as it is "
                          "— move the note into a description or message field, or do not format this file",
                          line, column)
    if not data:
        raise FormatError("the file holds no YAML document")
    result = header + _dump(data)
    if _load(result) != data:  # a formatter bug must never change what a policy means
        raise FormatError("internal error: the formatted text would not load to the same data; file left as it is")
    return result


def _dump(docs: list[Any]) -> str:
    return yaml.dump_all([canonical(d) for d in docs], Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         width=WIDTH, explicit_start=len(docs) > 1, default_flow_style=False, indent=2)
