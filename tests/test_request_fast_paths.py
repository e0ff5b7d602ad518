"""The fast paths of request canonicalisation (an already-canonical ASCII path, a canonical library UUID, plain
JSON scalars in args) give exactly what the full checks give: the same value, or the same error, on generated
input. The references below are the full checks as they were before the fast paths: the specification."""

from __future__ import annotations

import math
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capengine.policy import paths
from capengine.policy.model import INT_MIN, MAX_ARGS_DEPTH, UINT_MAX, Request, RequestError, canonical_library


def reference_path(raw: object) -> str:
    if raw == "":
        return ""
    if not isinstance(raw, str):
        raise paths.PathError("path must be a string")
    for ch in raw:
        if ch == "\\":
            raise paths.PathError("path contains a backslash; use '/' as the separator")
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            raise paths.PathError(f"path contains a control character U+{ord(ch):04X}")
    parts: list[str] = []
    for seg in unicodedata.normalize("NFC", raw).split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise paths.PathError("path climbs above the library root ('..')")
            parts.pop()
            continue
        if len(seg.encode("utf-8")) > paths.MAX_NAME_BYTES:
            raise paths.PathError(f"path component longer than {paths.MAX_NAME_BYTES} bytes")
        parts.append(seg)
    result = "/" + "/".join(parts)
    if len(result.encode("utf-8")) > paths.MAX_PATH_BYTES:
        raise paths.PathError(f"path longer than {paths.MAX_PATH_BYTES} bytes")
    return result


def reference_library(library: object) -> str:
    if library in ("", None):
        return ""
    if not isinstance(library, str):
        raise RequestError("library must be a UUID string")
    try:
        return str(uuid.UUID(library))
    except ValueError:
        raise RequestError(f"library must be a UUID, got {library!r}") from None


def reference_value(value: object, where: str, depth: int) -> Any:
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(f"{where} holds a lone surrogate, which is not text") from None
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= UINT_MAX:
            raise RequestError(f"{where} = {value} is outside the int64/uint64 range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"{where} is {value}, which is not a JSON number")
        return value
    if depth >= MAX_ARGS_DEPTH:
        raise RequestError(f"{where} is nested more than {MAX_ARGS_DEPTH} levels deep")
    if isinstance(value, list):
        return [reference_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return reference_object(value, where, depth + 1)
    raise RequestError(f"{where} is a {type(value).__name__}; request args hold only JSON values (null, bool, "
                       "number, string, array, object)")


def reference_object(value: Mapping[Any, Any], where: str, depth: int) -> dict[str, Any]:
    copy = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise RequestError(f"{where} has a key {key!r} that is not a string")
        copy[reference_value(key, f"{where} key", depth)] = reference_value(item, f"{where}.{key}", depth)
    return copy


def outcome(function, *args) -> tuple[str, object]:
    try:
        value = function(*args)
    except (paths.PathError, RequestError) as exc:
        return type(exc).__name__, str(exc)
    return "value", (type(value), value)


SEGMENT_TEXT = st.sampled_from(["a", "B", ".", "..", "...", " ", "~", "%2e", "-", "é", "e\u0301", "\\", "\x00",
                                "\x7f", "\x85", "\u2028", "\ud800", "A" * 255, "A" * 256, "é" * 128])
PATHS = st.one_of(
    st.lists(st.tuples(st.sampled_from(["/", "//", "", "/./"]), st.lists(SEGMENT_TEXT, max_size=3)), max_size=6)
    .map(lambda parts: "".join(sep + "".join(seg) for sep, seg in parts)),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x3000), max_size=40).map(lambda t: "/" + t),
    st.text(max_size=40),
    st.builds(lambda n, seg: "/" + "/".join([seg] * n), st.integers(1, 40), st.sampled_from(["a" * 200, "b" * 255])),
)


@settings(max_examples=3000, deadline=None)
@given(PATHS)
def test_canonical_path_matches_the_full_check(raw):
    assert outcome(paths.canonical_path, raw) == outcome(reference_path, raw)


def test_canonical_path_edges():
    for raw in ["/", "/a", "/a/", "/a/.", "/a/..", "/..", "/.a", "/a..", "/a/...", "/" + "x" * 4095, "/" + "x" * 4096,
                "/" + "/".join(["y" * 255] * 16), "/" + "/".join(["y" * 255] * 17), "/a\\b", "/a\x1fb", "/a b",
                "/" + "x" * 256, "/a/" + "x" * 256 + "/b", "/" + "é" * 127 + "e", "/" + "é" * 128]:
        assert outcome(paths.canonical_path, raw) == outcome(reference_path, raw), raw


def test_every_character_that_could_be_refused_is_refused_as_before():
    """Control characters (Cc) and lone surrogates (Cs) exist only in these ranges; the rest is a sample."""
    for code in [*range(0, 0x3000), *range(0xD7F0, 0xE010), 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF]:
        raw = "/a" + chr(code) + "b"
        assert outcome(paths.canonical_path, raw) == outcome(reference_path, raw), raw


class Text(str):
    """A str subclass: the fast paths must not hand it back as it came."""


def test_subclasses_and_non_strings_take_the_full_path():
    assert type(paths.canonical_path(Text("/a/b"))) is str
    library = str(uuid.uuid4())
    assert type(canonical_library(Text(library))) is str
    for raw in [None, 3, b"/a", ["/a"]]:
        assert outcome(paths.canonical_path, raw) == outcome(reference_path, raw)
        assert outcome(canonical_library, raw) == outcome(reference_library, raw)


LIBRARIES = st.one_of(
    st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"), st.uuids().map(lambda u: "urn:uuid:" + str(u)),
    st.uuids().map(lambda u: str(u)[:-1] + "g"), st.uuids().map(lambda u: " " + str(u)), st.text(max_size=40),
    st.uuids().map(lambda u: str(u).replace("-", "", 1)), st.none(), st.just(""),
    st.tuples(st.uuids(), st.lists(st.booleans(), min_size=36, max_size=36))
    .map(lambda t: "".join(c.upper() if up else c for c, up in zip(str(t[0]), t[1], strict=True))),
)


@settings(max_examples=2000, deadline=None)
@given(LIBRARIES)
def test_canonical_library_matches_the_full_check(library):
    assert outcome(canonical_library, library) == outcome(reference_library, library)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from(["\ud800", "é", "x\udfff"]),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([INT_MIN, INT_MIN - 1, UINT_MAX, UINT_MAX + 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([b"x", (1,), {1}, 1j]),
)
ARGS = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["\ud800", "ключ", 1, None])), inner, max_size=4),
), max_leaves=20)


def same(a: object, b: object) -> bool:
    """Equal values of the same types all the way down (True vs 1, 1 vs 1.0, NaN: told apart)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))  # type: ignore[arg-type]


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["\ud800", 7])), ARGS, max_size=6))
def test_request_args_match_the_full_check(args):
    expected = outcome(reference_object, args, "args", 0)
    try:
        got = ("value", dict(Request("com.example.app", "vdfs.read_file", args=args).args))
    except RequestError as exc:
        got = ("RequestError", str(exc))
    if expected[0] == "value":
        assert got[0] == "value" and same(got[1], expected[1][1]), (got, expected)
    else:
        assert got == expected


def test_args_are_copied_not_shared():
    inner = {"k": [1, 2]}
    args = {"a": "x", "b": inner}
    request = Request("com.example.app", "vdfs.read_file", args=args)
    inner["k"].append(3)
    args["a"] = "changed"
    assert dict(request.args) == {"a": "x", "b": {"k": [1, 2]}}
