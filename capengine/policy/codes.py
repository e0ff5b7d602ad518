"""Finding codes: the stable identifiers `capengine check` emits (text, JSON and SARIF `ruleId`), each with
the one-line reason shown as its SARIF rule description. A StrEnum, so a code prints, compares and
serialises as its string and the output formats never change when a member is renamed in Python.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    YAML_SYNTAX = "yaml-syntax"
    DUPLICATE_KEY = "duplicate-key"
    UNKNOWN_KIND = "unknown-kind"
    SCHEMA = "schema"
    DUPLICATE_RULE_ID = "duplicate-rule-id"
    DUPLICATE_POLICY = "duplicate-policy"
    DUPLICATE_CASE = "duplicate-case"
    BAD_LIMIT = "bad-limit"
    BAD_GLOB = "bad-glob"
    CEL_SYNTAX = "cel-syntax"
    CEL_TYPE = "cel-type"
    CEL_INVALID = "cel-invalid"
    CEL_COST = "cel-cost"
    BROAD_ALLOW = "broad-allow"
    NEVER_MATCHES = "never-matches"
    SHADOWED_ALLOW = "shadowed-allow"
    PARTIAL_SHADOW = "partial-shadow"
    UNUSED_EXTENSION_GLOB = "unused-extension-glob"
    CONTENT_REACHABLE = "content-reachable-around-deny"
    NFD_LITERAL = "nfd-literal"
    UNKNOWN_CLASS = "unknown-class"
    UNKNOWN_OPERATION = "unknown-operation"
    UNGUARDED_OPTIONAL = "unguarded-optional"
    PATH_PREFIX = "path-prefix"
    UNKNOWN_LIMIT_OPERATION = "unknown-limit-operation"
    UNANCHORED_REGEX = "unanchored-regex"
    PATH_NOT_EQUAL = "path-not-equal"
    CONSTANT_CONDITION = "constant-condition"
    NON_CANONICAL_PATH = "non-canonical-path"
    MIXED_SCRIPT = "mixed-script"
    INVISIBLE_CHARACTER = "invisible-character"
    BIDI_CONTROL = "bidi-control"
    CASE_MISMATCH = "case-mismatch"
    TEST_UNKNOWN_OPERATION = "test-unknown-operation"
    TEST_UNKNOWN_EXTENSION = "test-unknown-extension"
    TEST_INVALID_ARGS = "test-invalid-args"
    TEST_FAILED = "test-failed"
    UNCOVERED_RULE = "uncovered-rule"
    UNUSED_RULE = "unused-rule"
    COVERAGE = "coverage"
    IO = "io"
    EMPTY_FILE = "empty-file"
    NO_POLICIES = "no-policies"
    # proven by the SMT analysis (capengine analyze lint / capengine diff); never-matches, shadowed-allow and
    # content-reachable-around-deny above are shared with the syntactic lints
    REDUNDANT_ALLOW = "redundant-allow"
    DENY_ONLY_ON_ERROR = "deny-only-on-error"
    POLICY_WIDENED = "policy-widened"
    POLICY_NARROWED = "policy-narrowed"
    ANALYSIS_UNKNOWN = "analysis-unknown"
    NOT_ANALYSABLE = "not-analysable"

    @property
    def help(self) -> str:
        return _HELP[self]


_HELP = {
    Code.YAML_SYNTAX: "The file is not valid YAML.",
    Code.DUPLICATE_KEY: "A mapping repeats a key; YAML loaders would silently keep one of them.",
    Code.UNKNOWN_KIND: "Documents must be kind Policy or PolicyTest.",
    Code.SCHEMA: "The document does not match the JSON Schema in schemas/.",
    Code.DUPLICATE_RULE_ID: "Rule ids must be unique within a policy.",
    Code.DUPLICATE_POLICY: "Policy names must be unique across the policy set.",
    Code.DUPLICATE_CASE: "Test case names must be unique within a suite.",
    Code.BAD_LIMIT: "A rate limit can never be satisfied.",
    Code.BAD_GLOB: "A glob is malformed ('**' must be a whole segment).",
    Code.CEL_SYNTAX: "A condition is not valid CEL.",
    Code.CEL_TYPE: "A condition does not type-check against the policy variables and functions.",
    Code.CEL_INVALID: "A condition has an invalid literal argument (regex, glob or directory).",
    Code.CEL_COST: "A condition's worst-case evaluation cost exceeds the budget.",
    Code.BROAD_ALLOW: "An allow rule grants every operation without a condition.",
    Code.NEVER_MATCHES: "A rule can never match.",
    Code.SHADOWED_ALLOW: "An allow rule is fully overridden by an unconditional deny.",
    Code.PARTIAL_SHADOW: "A deny overrides an allow for some requests (shown with an example) and no policy test "
                         "exercises that overlap.",
    Code.UNUSED_EXTENSION_GLOB: "A policy's extensions pattern matches no known extension.",
    Code.CONTENT_REACHABLE: "A path is denied for one content-revealing operation but allowed for another.",
    Code.NFD_LITERAL: "A path literal is not in Unicode NFC, the form every request path is normalised to.",
    Code.UNKNOWN_CLASS: "An operation class (class:...) that no registered operation declares.",
    Code.UNKNOWN_OPERATION: "A rule's operations match no registered operation.",
    Code.UNGUARDED_OPTIONAL: "A deny reads an optional argument without has() or .?/orValue(): it denies every "
                             "call lacking it.",
    Code.PATH_PREFIX: "A string prefix/suffix/substring test on path is not segment-aware; use under() or glob().",
    Code.UNKNOWN_LIMIT_OPERATION: "A rate limit names operations that match no registered operation.",
    Code.UNANCHORED_REGEX: "An allow's regex over path or extension is not anchored: it matches more than it spells.",
    Code.PATH_NOT_EQUAL: "path != \"x\" is a rule's only path test: it matches every other path (== meant?).",
    Code.CONSTANT_CONDITION: "A condition is always true whatever the request (`|| true`, `size(x) >= 0`).",
    Code.NON_CANONICAL_PATH: "A path literal no canonical request path can equal ('..', '//', trailing '/', relative).",
    Code.MIXED_SCRIPT: "A literal mixes Latin letters with look-alikes from another script (a Cyrillic 'о').",
    Code.INVISIBLE_CHARACTER: "A condition holds a character that displays as nothing (a zero-width space): a "
                              "literal holding it looks like one it never equals.",
    Code.BIDI_CONTROL: "A file holds a bidirectional override or isolate (U+202A-202E, U+2066-2069): text then "
                       "displays in an order other than it is read (Trojan Source).",
    Code.CASE_MISMATCH: "Two rules spell a directory with different letter case; paths are case-sensitive.",
    Code.TEST_UNKNOWN_OPERATION: "A policy test case calls an operation that is not registered: it tests nothing.",
    Code.TEST_UNKNOWN_EXTENSION: "A policy test case names an extension no policy applies to.",
    Code.TEST_INVALID_ARGS: "A policy test case passes an argument the operation's schema does not take (or of "
                            "the wrong type): no real call looks like it.",
    Code.TEST_FAILED: "A policy test case did not get the expected decision.",
    Code.UNCOVERED_RULE: "No policy test case was decided by this rule.",
    Code.UNUSED_RULE: "No case of the policy test suites is decided by this rule: it is untested, or dead.",
    Code.COVERAGE: "Rule coverage of the policy tests is below the required minimum.",
    Code.IO: "A file could not be read.",
    Code.EMPTY_FILE: "A policy file holds no document.",
    Code.NO_POLICIES: "The paths checked hold no policy at all: the set would deny every call.",
    Code.REDUNDANT_ALLOW: "Every request an allow rule allows is also allowed by another allow rule (proved).",
    Code.DENY_ONLY_ON_ERROR: "A deny's condition is never true: it fires only when the condition errors (fail "
                             "closed), typically a missing has() guard (proved).",
    Code.POLICY_WIDENED: "The new policy set allows requests the old one denied (each with a witness request).",
    Code.POLICY_NARROWED: "The new policy set denies requests the old one allowed (each with a witness request).",
    Code.ANALYSIS_UNKNOWN: "The solver could not decide a question within its time limit; nothing is claimed.",
    Code.NOT_ANALYSABLE: "A condition lies outside the analysable CEL fragment; it was approximated conservatively.",
}
