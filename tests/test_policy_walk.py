"""loader.walk replaced `sorted(Path.rglob("*"))` + `is_file()` for speed; the order fixes which rule a decision
names, so it must give the same files in the same order on a hostile tree: symlinked directories (not
followed) and files (followed), a FIFO (never opened), hidden files and a file named just `.yaml`, broken
links, names whose string order differs from their path-component order (`a-b` vs `a/b`)."""

from __future__ import annotations

import os
from pathlib import Path

from capengine.policy.loader import discover, walk


def _old(root: Path) -> list[str]:
    return [str(q.relative_to(root)) for q in sorted(root.rglob("*")) if q.suffix in (".yaml", ".yml") and q.is_file()]


def test_walk_matches_sorted_rglob_on_a_hostile_tree(tmp_path):
    root = tmp_path / "policies"
    for rel in ("a.yaml", "a-b.yaml", "a/b.yaml", "a/b/c.yml", "a-b/x.yaml", "a.b/y.yaml", ".hidden.yaml", ".yaml",
                ".dir/z.yaml", "x.yaml.bak", "x.YAML", "n.", "deep/er/still/q.yaml", "Z.yaml", "é.yaml",
                "e\u0301.yaml"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kind: Policy\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.yaml").write_text("kind: Policy\n")
    (root / "linked-dir").symlink_to(outside)  # rglob does not descend into it
    (root / "linked.yaml").symlink_to(outside / "o.yaml")  # a symlinked file is read
    (root / "broken.yaml").symlink_to(tmp_path / "nowhere.yaml")
    os.mkfifo(root / "fifo.yaml")  # would block a reader
    (root / "dir.yaml").mkdir()
    (root / "dir.yaml" / "in.yaml").write_text("kind: Policy\n")
    # rglob's order, plus the dangling link: reading it reports it (skipping it would drop a policy quietly)
    expected = sorted([*_old(root), "broken.yaml"], key=lambda name: name.split(os.sep))
    special: list[str] = []
    assert walk(root, special) == expected and special == ["fifo.yaml"]  # never opened; without a list, an error
    assert "linked.yaml" in expected and ".yaml" not in expected
    files, findings = discover([root])
    assert [str(p.relative_to(root)) for p in files] == expected
    assert [(Path(f.location.file).name, f.code) for f in findings] == [("fifo.yaml", "io")]  # named, not read
