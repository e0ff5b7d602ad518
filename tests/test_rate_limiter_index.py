"""Which limits apply to a call is found by extension id plus the patterned limits (not a scan of every
limit): the same limits, in the same order, as testing every limit, on generated sets and calls."""

from __future__ import annotations

import random

from helpers import load_set, policy_yaml

from capengine.host.rate_limiter import RateLimiter

IDS = ["com.example.a", "com.example.b", "com.example.a-b", "org.other.a", "com.example.a.sub"]
EXTENSION_PATTERNS = [*IDS, "com.example.*", "com.*", "*.*.a", "com.example.?", "**"]
OPERATIONS = ["test.ping", "vdfs.read_file", "vdfs.stat", "ai.ocr"]
OPERATION_PATTERNS = [*OPERATIONS, "vdfs.*", "test.*", "*.*"]


def _policy(rng: random.Random, index: int) -> str:
    extensions = rng.sample(EXTENSION_PATTERNS, rng.randint(1, 3))
    if rng.random() < 0.2:
        extensions.append(extensions[0])  # a duplicate id must not charge the limit twice
    limits = ""
    for _ in range(rng.randint(1, 3)):
        operations = ", ".join(repr(o) for o in rng.sample(OPERATION_PATTERNS, rng.randint(1, 2)))
        limits += f"    - {{operations: [{operations}], rate: {rng.randint(1, 9)}/second, burst: 10}}\n"
    extension_list = "[" + ", ".join(f'"{e}"' for e in extensions) + "]"
    return policy_yaml(f"p{index}", "- {id: ping, effect: allow, operations: [test.ping]}\n",
                       extension_list) + "  limits:\n" + limits


def test_applicable_limits_match_a_scan_of_every_limit(tmp_path):
    rng = random.Random(15)
    for round_ in range(40):
        directory = tmp_path / str(round_)
        directory.mkdir()
        texts = {f"p{i}.yaml": _policy(rng, i) for i in range(rng.randint(1, 12))}
        for name, text in texts.items():
            (directory / name).write_text(text)
        limiter = RateLimiter(load_set(directory).policies)
        for extension in [*IDS, "com.example.zzz", "net.x.a"]:
            for operation in OPERATIONS:
                expected = tuple(i for i, s in enumerate(limiter.limits) if s.applies(extension, operation))
                assert limiter._which(extension, operation) == expected, (extension, operation, texts)


def test_one_limit_naming_an_id_twice_is_charged_once(tmp_path):
    text = policy_yaml("p", "- {id: ping, effect: allow, operations: [test.ping]}\n",
                       '["com.example.a", "com.example.a"]') \
        + "  limits:\n    - {operations: [test.ping], rate: 1/second, burst: 2}\n"
    (tmp_path / "p.yaml").write_text(text)
    limiter = RateLimiter(load_set(tmp_path).policies, clock=lambda: 0.0)
    assert [limiter.acquire("com.example.a", "test.ping")[1] for _ in range(3)] == [None, None, "p/limits/0"]
