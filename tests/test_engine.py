"""Decision semantics: default deny, deny overrides, fail closed, globs, canonical paths, threads."""

from __future__ import annotations

import threading

import pytest
from helpers import LIB, load_set, policy_yaml, request, write

from capengine.policy.loader import load_paths


@pytest.fixture
def photos(tmp_path):
    write(tmp_path, "allow.yaml", policy_yaml("p", """
        - id: read-photos
          effect: allow
          operations: ["vdfs.read_file"]
          condition: 'path.under("/photos")'
        - id: ai
          effect: allow
          operations: ["ai.*"]
    """))
    return tmp_path


def test_default_deny(photos):
    d = load_set(photos).decide_raw(request("vdfs.write_sidecar"))
    assert not d.allowed and d.rules == () and "no policy allows" in d.message


def test_allow_reports_rule(photos):
    d = load_set(photos).decide_raw(request())
    assert d.allowed and d.rules == ("p/read-photos",)


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_overrides_allow_in_either_order(tmp_path, deny_first):
    allow = """
        - id: allow-all-reads
          effect: allow
          operations: ["vdfs.read_file"]
    """
    deny = """
        - id: no-secrets
          effect: deny
          operations: ["vdfs.*"]
          condition: 'path.under("/secrets")'
          message: nope
    """
    write(tmp_path, "a.yaml", policy_yaml("a", deny + allow if deny_first else allow + deny))
    write(tmp_path, "b.yaml", policy_yaml("b", allow.replace("allow-all-reads", "again")))
    ps = load_set(tmp_path)
    d = ps.decide_raw(request(path="/secrets/k"))
    assert not d.allowed and d.rules == ("a/no-secrets",) and d.message == "nope"
    assert ps.decide_raw(request(path="/docs/k")).allowed


def test_erroring_condition_fails_closed_for_allow_and_deny(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - id: allow-if-flag
          effect: allow
          operations: ["app.ping"]
          condition: 'args.flag == true'
        - id: deny-if-big
          effect: deny
          operations: ["app.read"]
          condition: 'args.size > 10'
        - id: allow-read
          effect: allow
          operations: ["app.read"]
    """))
    ps = load_set(tmp_path)
    d = ps.decide_raw(request("app.ping"))  # args.flag missing -> error -> allow not matched
    assert not d.allowed and d.errors and d.errors[0].rule == "p/allow-if-flag"
    d = ps.decide_raw(request("app.read"))  # args.size missing -> error -> deny matched
    assert not d.allowed and d.rules == ("p/deny-if-big",) and "treated as matched" in d.errors[0].message
    d = ps.decide_raw(request("app.read", size="12"))  # string > int: no overload -> error -> deny
    assert not d.allowed
    assert ps.decide_raw(request("app.read", size=3)).allowed


def test_non_bool_condition_from_dyn_fails_closed(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - id: allow-by-arg
          effect: allow
          operations: ["app.ping"]
          condition: 'args.flag'
    """))
    ps = load_set(tmp_path)
    d = ps.decide_raw(request("app.ping", flag="yes"))
    assert not d.allowed and "not bool" in d.errors[0].message
    assert ps.decide_raw(request("app.ping", flag=True)).allowed


@pytest.mark.parametrize("operation,allowed", [
    ("ai.ocr", True), ("ai.embed", True), ("ai", False), ("aix.ocr", False), ("ai.ocr.v2", False),
    ("vdfs.read_file", True),
])
def test_operation_glob_segment_edges(photos, operation, allowed):
    assert load_set(photos).decide_raw(request(operation, path="/photos/x")).allowed is allowed


@pytest.mark.parametrize("path,allowed", [
    ("/photos/a.jpg", True), ("/photos", True), ("photos/a.jpg", True), ("/photos//a.jpg", True),
    ("/photos/./a.jpg", True), ("/photos2/a.jpg", False), ("/photo", False), ("/", False),
    ("/photos/../secrets/a", False), ("/photos/../../etc/passwd", False), ("/photos/%2e%2e/x", True),
    ("/photos\x00/a", False), ("/photos/a\nb", False), ("/photos\\..\\secrets", False),
    ("/Photos/a.jpg", False), ("/photos/cafe\u0301.jpg", True),
])
def test_path_canonicalisation_attacks(photos, path, allowed):
    d = load_set(photos).decide_raw(request(path=path))
    assert d.allowed is allowed, d


def test_percent_encoding_is_literal_not_decoded(photos):
    """'%2e%2e' is a file named '%2e%2e' inside /photos: it is allowed as such and never climbs."""
    from capengine.policy.model import Request

    assert Request.parse("com.example.app", "vdfs.read_file", "/photos/%2e%2e").path == "/photos/%2e%2e"


def test_nfc_normalisation():
    from capengine.policy.model import Request

    assert Request.parse("a.b", "c.d", "/cafe\u0301").path == "/caf\u00e9"


def test_invalid_request_fields_are_denied(photos):
    ps = load_set(photos)
    for bad in (request(library="not-a-uuid"), request(extension=""), {"operation": "x"},
                {**request(), "extra": 1}, request(operation="vdfs.read_file\x00")):
        d = ps.decide_raw(bad)
        assert not d.allowed and d.message.startswith("invalid request"), bad


def test_library_is_lowercased(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", f"""
        - id: lib
          effect: allow
          operations: ["vdfs.stat"]
          condition: 'library == "{LIB}"'
    """))
    assert load_set(tmp_path).decide_raw(request("vdfs.stat", library=LIB.upper())).allowed


def test_extension_scoping(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - id: r
          effect: allow
          operations: ["test.ping"]
    """, extensions='["com.example.photo-*"]'))
    ps = load_set(tmp_path)
    assert ps.decide_raw(request("test.ping", extension="com.example.photo-ocr")).allowed
    assert not ps.decide_raw(request("test.ping", extension="com.example.photo")).allowed
    assert not ps.decide_raw(request("test.ping", extension="com.example.photo-ocr.evil")).allowed


def test_under_and_glob_functions(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - id: jpgs
          effect: allow
          operations: ["vdfs.read_file"]
          condition: 'path.glob("/photos/**/*.jpg") && !path.under("/photos/tmp")'
    """))
    ps = load_set(tmp_path)
    assert ps.decide_raw(request(path="/photos/2024/x/a.jpg")).allowed
    assert ps.decide_raw(request(path="/photos/a.jpg")).allowed
    assert not ps.decide_raw(request(path="/photos/a.png")).allowed
    assert not ps.decide_raw(request(path="/photos/tmp/a.jpg")).allowed
    assert not ps.decide_raw(request(path="/photosx/a.jpg")).allowed


def test_candidates_exclude_unrelated_rules(tmp_path):
    rules = "".join(f"""
        - id: r{i}
          effect: allow
          operations: ["op{i}.run"]
    """ for i in range(200))
    write(tmp_path, "p.yaml", policy_yaml("p", rules))
    ps = load_set(tmp_path)
    denies, allows = ps.candidates("com.example.app", "op7.run")
    assert [r.qualified_id for r in allows] == ["p/r7"] and denies == ()


def test_explain_lists_every_rule(photos):
    ex = load_set(photos).explain(request(path="/other/a"))
    assert not ex.decision.allowed
    assert [(t.rule, t.result) for t in ex.trace] == [("p/read-photos", "not matched")]
    assert "default deny" in ex.reason


def test_decide_is_thread_safe(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - id: mine
          effect: allow
          operations: ["app.read"]
          condition: 'path.under("/home/" + extension) && args.n % 2 == 0 && [1,2,3].exists(x, x == args.n % 4)'
    """, extensions='["**"]'))
    ps = load_set(tmp_path)
    failures = []

    def worker(k: int) -> None:
        ext = f"ext.n{k}"
        for n in range(400):
            own = ps.decide_raw(request("app.read", path=f"/home/{ext}/f", extension=ext, n=n)).allowed
            other = ps.decide_raw(request("app.read", path=f"/home/ext.n{k + 1}/f", extension=ext, n=n)).allowed
            if own != (n % 4 == 2) or other:
                failures.append((k, n, own, other))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_guest_sized_lists_cannot_make_a_policy_burn_cpu(tmp_path):
    """A quadratic condition over a list the guest controls is refused at load time (its worst case is
    estimated from the request cap); see test_cel_cost.py for the run-time budget."""
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: uniq, effect: allow, operations: [a.b],
           condition: "args.tags.all(x, args.tags.exists_one(y, y == x))"}
    """))
    result = load_paths([tmp_path])
    (finding,) = result.findings
    assert finding.code == "cel-cost" and finding.location.line == 8 and "exceeds the budget" in finding.message


def test_explain_says_why_rules_did_not_apply_and_when_a_deny_failed_closed(tmp_path):
    write(tmp_path, "p.yaml", policy_yaml("p", """
        - {id: read, effect: allow, operations: [vdfs.read_file], condition: 'path.under("/photos")'}
        - {id: big, effect: deny, operations: [vdfs.read_file], condition: 'args.length > 10'}
        - {id: ocr, effect: allow, operations: [ai.ocr]}
    """))
    write(tmp_path, "q.yaml", policy_yaml("q", "- {id: other, effect: allow, operations: [vdfs.stat]}\n",
                                          extensions='["org.other.*"]'))
    ps = load_set(tmp_path)
    ex = ps.explain(request(path="/photos/a.jpg"))  # no args.length: the deny errors, which matches
    assert not ex.decision.allowed and ex.decision.rules == ("p/big",)
    assert "errored" in ex.reason and "fail closed" in ex.reason
    assert [(t.rule, t.result, t.condition) for t in ex.trace] == [
        ("p/big", "error", "args.length > 10"), ("p/read", "matched", 'path.under("/photos")')]
    assert dict(ex.skipped) == {"p/ocr": "operation vdfs.read_file is not in ai.ocr",
                                "q/other": "extension com.example.app is not in org.other.*"}
    typo = ps.explain(request("vdfs.readfile"))
    assert "unknown operation 'vdfs.readfile'; did you mean 'vdfs.read_file'?" in typo.reason
