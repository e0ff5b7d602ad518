"""A check after some files changed reuses per-file and per-policy results (loader cache, lint and overlap per
neighbourhood, compiled conditions): its findings must equal a cold check's of the same files, whatever
changed: an unconditional deny added to one policy that shadows another policy's allow on the same
extension, a wildcard policy edited, files removed, added and renamed, a condition text moved between files."""

from __future__ import annotations

import random
import shutil

import pytest
from helpers import policy_yaml

from capengine.policy import lint, loader, memo, overlap
from capengine.policy.check import run_check

SHAPES = [
    "- {id: read, effect: allow, operations: [vdfs.read_file, vdfs.stat], condition: 'path.under(\"/d\")'}\n",
    "- {id: ocr, effect: allow, operations: [ai.ocr]}\n",
    "- {id: no-big, effect: deny, operations: [vdfs.read_file], condition: 'has(args.length) && args.length > 9'}\n",
    "- {id: all-read, effect: deny, operations: [vdfs.read_file]}\n",
    "- {id: secret, effect: deny, operations: [vdfs.read_file], condition: 'path.under(\"/d/secret\")'}\n",
    "- {id: any, effect: allow, operations: ['vdfs.*']}\n",
]


def _write(directory, rng: random.Random, name: str, exts: str) -> None:
    rules = "".join(rng.sample(SHAPES, rng.randint(1, 4)))
    (directory / f"{name}.yaml").write_text(policy_yaml(name, rules, exts))


def _findings(directory):
    return [str(f) + f.code for f in run_check([directory], operations=["vdfs.read_file"]).findings]


def _cold(directory):
    saved = (loader._cache.copy(), lint._PER_POLICY, overlap._PER_POLICY, loader._COMPILED)
    loader._cache.clear()
    lint._PER_POLICY, overlap._PER_POLICY, loader._COMPILED = memo.PerPolicy(), memo.PerPolicy(), memo.IdentityMemo()
    try:
        return _findings(directory)
    finally:
        loader._cache.update(saved[0])
        lint._PER_POLICY, overlap._PER_POLICY, loader._COMPILED = saved[1:]


@pytest.mark.parametrize("seed", range(6))
def test_incremental_findings_equal_cold_findings(tmp_path, seed):
    rng = random.Random(seed)
    directory = tmp_path / "policies"
    directory.mkdir()
    exts = [f'["com.example.e{i}"]' for i in range(6)] + ['["com.example.*"]', '["com.example.e1", "com.example.e2"]']
    for i in range(20):
        _write(directory, rng, f"p{i:02}", rng.choice(exts))
    _findings(directory)  # warm
    for _ in range(12):
        action = rng.choice(["edit", "edit", "remove", "add", "rename", "wildcard"])
        files = sorted(directory.glob("*.yaml"))
        if action == "edit":
            victim = rng.choice(files)
            _write(directory, rng, victim.stem, rng.choice(exts))
        elif action == "remove" and len(files) > 3:
            rng.choice(files).unlink()
        elif action == "add":
            _write(directory, rng, f"n{rng.randrange(10 ** 6)}", rng.choice(exts))
        elif action == "rename":
            victim = rng.choice(files)
            shutil.move(victim, directory / f"r{rng.randrange(10 ** 6)}.yaml")
        else:
            _write(directory, rng, "wild", '["com.example.*"]')
        warm = _findings(directory)
        assert warm == _cold(directory), action
    assert any("shadowed-allow" in f or "partial-shadow" in f for f in warm + _cold(directory))


def test_same_condition_over_different_operations_is_typed_for_each(tmp_path):
    """The compile cache is keyed by the args record object, not by Type equality (which ignores a record's
    fields): `has(args.length)` is fine over vdfs.read_file and a type error over read_file + ai.ocr, in
    whichever order the two are loaded in one process."""
    condition = "condition: 'has(args.length)'"
    for first, second in (("vdfs.read_file", "vdfs.read_file, ai.ocr"), ("vdfs.read_file, ai.ocr", "vdfs.read_file")):
        for i, ops in enumerate((first, second)):
            directory = tmp_path / f"{first}-{i}"
            directory.mkdir()
            (directory / "p.yaml").write_text(policy_yaml("p", f"- {{id: a, effect: allow, operations: [{ops}], "
                                                              f"{condition}}}\n"))
            errors = [f.code for f in run_check([directory]).findings if f.severity == "error"]
            assert errors == ([] if ops == "vdfs.read_file" else ["cel-type"]), (ops, errors)
