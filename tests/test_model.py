"""Invariants of the data model hold however an object is built (issue 10 item 6)."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from capengine.cel.standard import STANDARD
from capengine.policy.codes import Code
from capengine.policy.model import Finding, Location, Request, RequestError

LIB = "6C1F0E4A-2B3D-4C5E-8F90-A1B2C3D4E5F6"


def test_request_constructor_canonicalises_like_parse():
    direct = Request("com.example.app", "vdfs.stat", "/photos/./a/../cafe\u0301.jpg", LIB)
    assert direct.path == "/photos/café.jpg" and direct.library == LIB.lower()
    assert direct == Request.parse("com.example.app", "vdfs.stat", "/photos/café.jpg", LIB.lower())


@pytest.mark.parametrize("kwargs, message", [
    ({"extension": "bad name!"}, "extension must be a dotted name"),
    ({"operation": 3}, "operation must be a dotted name"),
    ({"path": "/../etc/passwd"}, "invalid path"),
    ({"path": 5}, "path must be a string"),
    ({"library": "not-a-uuid"}, "library must be a UUID"),
    ({"args": [1, 2]}, "args must be an object"),
])
def test_no_caller_can_build_an_unchecked_request(kwargs, message):
    fields = {"extension": "com.example.app", "operation": "vdfs.stat", **kwargs}
    with pytest.raises(RequestError, match=message):
        Request(**fields)
    with pytest.raises(RequestError, match=message):
        Request.from_mapping(fields)


def test_request_args_are_a_read_only_copy():
    args = {"path": "/a", "length": 3}
    request = Request("com.example.app", "vdfs.read_file", "/a", "", args)
    args["length"] = 10**9
    assert request.args["length"] == 3 and isinstance(request.args, MappingProxyType)
    with pytest.raises(TypeError):
        request.args["length"] = 5  # type: ignore[index]
    assert json.dumps(request.to_json())  # still plain JSON for logs


def test_finding_codes_are_an_enum_that_prints_as_before():
    finding = Finding(Location("p.yaml", 3, 4), "error", "cel-type", "msg")
    assert finding.code is Code.CEL_TYPE and str(finding) == "p.yaml:3:4: error cel-type msg"
    assert json.dumps({"code": finding.code}) == '{"code": "cel-type"}'
    with pytest.raises(ValueError):
        Finding(Location("p.yaml"), "error", "no-such-code", "msg")
    assert all(code.help for code in Code)


def test_frozen_environment_holds_no_mutable_table():
    with pytest.raises(TypeError):
        STANDARD.functions["evil"] = ()  # type: ignore[index]
