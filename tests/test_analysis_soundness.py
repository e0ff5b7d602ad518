"""Attack the proofs: random policy sets from the fragment, random requests near their literals. Whatever the
analyser proves ("never", "no difference") must hold for every sampled request the engine decides, and every
witness it gives must be confirmed."""

from __future__ import annotations

import random

import pytest
from helpers import LIB, load_set, policy_yaml, write

from capengine.analysis.can import can
from capengine.analysis.diff import diff
from capengine.policy.model import Request, RequestError

DIRS = ["/a", "/a/b", "/c", "/a/b/c", "/d.x"]
OTHER_LIB = "00000000-0000-0000-0000-000000000001"


def atom(rng: random.Random) -> str:
    d = rng.choice(DIRS)
    return rng.choice([
        f'path.under("{d}")', f'path.glob("{d}/*.jpg")', f'path.glob("{d}/**")', f'path.startsWith("{d}")',
        'path.endsWith(".jpg")', 'path.matches("(?i)\\\\.JPE?G$")', f'path == "{d}"', 'size(path) < 8',
        f'library == "{LIB}"', 'library != ""', 'has(args.length)', f'args.length > {rng.choice([0, 5, 100])}',
        'args.offset + args.length <= 100', 'args.offset % 2 == 0', f'path.contains("{rng.choice("abc")}")',
        'args.offset in [1, 2, 3]',
    ])


def condition(rng: random.Random, depth: int = 2) -> str:
    if depth == 0 or rng.random() < 0.3:
        return atom(rng)
    op = rng.choice([" && ", " || "])
    left, right = condition(rng, depth - 1), condition(rng, depth - 1)
    text = f"({left}{op}{right})"
    return f"!{text}" if rng.random() < 0.2 else text


def rules(rng: random.Random, n: int) -> str:
    out = []
    for i in range(n):
        effect = "deny" if rng.random() < 0.35 else "allow"
        cond = condition(rng).replace("'", "''")
        out.append(f"- {{id: r{i}, effect: {effect}, operations: [vdfs.read_file], condition: '{cond}'}}")
    return "\n".join(out) + "\n"


def samples(rng: random.Random, count: int) -> list[Request]:
    out = []
    for _ in range(count):
        base = rng.choice(DIRS + ["/", "/z"])
        path = base + rng.choice(["", "/x.jpg", "/X.JPEG", "/b", "/b/c/y.jpg", ".jpg", "/a", "/c.jpeg"])
        args: dict = {"path": path}
        if rng.random() < 0.6:
            args["length"] = rng.choice([0, 3, 5, 6, 100, 101, 2**62])
        if rng.random() < 0.6:
            args["offset"] = rng.choice([0, 1, 2, 3, 4, 99, 2**62])
            if rng.random() < 0.2:
                args["offset"] = float(args["offset"])
        try:
            out.append(Request.parse("com.example.app", "vdfs.read_file", path, rng.choice([LIB, OTHER_LIB]), args))
        except RequestError:
            continue
    return out


@pytest.mark.parametrize("seed", range(10))
def test_never_means_never_and_witnesses_hold(tmp_path, seed):
    rng = random.Random(seed)
    write(tmp_path, "p.yaml", policy_yaml("p", rules(rng, rng.randint(1, 5))))
    policy_set = load_set(tmp_path)
    answer = can(policy_set, "com.example.app", "vdfs.read_file")
    if answer.answer == "yes":
        assert policy_set.decide(answer.witness.request()).allowed
    sampled = samples(rng, 300)
    allowed = [r for r in sampled if policy_set.decide(r).allowed]
    if answer.answer == "never":
        assert not allowed, (answer, allowed[:1])
    if allowed:
        assert answer.answer != "never"


@pytest.mark.parametrize("seed", range(8))
def test_no_difference_means_no_difference(tmp_path, seed):
    rng = random.Random(100 + seed)
    text = rules(rng, rng.randint(2, 5))
    lines = text.splitlines()
    if rng.random() < 0.5:  # a random edit: drop one rule or replace its condition
        i = rng.randrange(len(lines))
        lines[i] = lines[i].split("condition:")[0] + f"condition: '{condition(rng).replace(chr(39), chr(39) * 2)}'}}"
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    write(old_dir, "p.yaml", policy_yaml("p", text))
    write(new_dir, "p.yaml", policy_yaml("p", "\n".join(lines) + "\n"))
    old_set, new_set = load_set(old_dir), load_set(new_dir)
    result = diff(old_set, new_set, operations=("vdfs.read_file",))
    for d in result.differences:
        request = d.witness.request()
        assert old_set.decide(request).allowed == (d.direction == "narrowed")
        assert new_set.decide(request).allowed == (d.direction == "widened")
    flips = [r for r in samples(rng, 300) if old_set.decide(r).allowed != new_set.decide(r).allowed]
    widened = {d.rule for d in result.widened}
    narrowed = bool(result.narrowed)
    for r in flips:
        if new_set.decide(r).allowed:
            assert new_set.decide(r).rules[0] in widened or result.unsettled, r
        else:
            assert narrowed or result.unsettled, r
