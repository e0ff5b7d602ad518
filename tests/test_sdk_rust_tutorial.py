"""docs/sdk-rust.md, followed as a newcomer would: every file block (```lang file=PATH) is written as shown into
an empty directory next to the checkout, and every ```sh tutorial block is run there, in order, with `set -e`.
The doc cannot rot without this test failing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sdk-rust.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.M | re.S)


def blocks() -> tuple[dict[str, str], list[str]]:
    files, commands = {}, []
    for lang, info, body in BLOCK.findall(DOC.read_text()):
        match = re.search(r"\bfile=(\S+)", info)
        if match:
            files[match.group(1)] = body
        elif lang == "sh" and "tutorial" in info.split():
            commands.append(body)
    return files, commands


def test_the_tutorial_has_the_promised_steps():
    files, commands = blocks()
    assert set(files) == {"Cargo.toml", ".cargo/config.toml", "src/lib.rs", "policies/word-count.yaml"}
    assert any("cargo build" in c for c in commands) and any("module_manifest write" in c for c in commands)


def test_following_the_tutorial_builds_and_runs_the_extension(tmp_path):
    (tmp_path / "capengine").symlink_to(ROOT)  # "next to your capengine checkout"
    crate = tmp_path / "word-count"
    crate.mkdir()
    files, commands = blocks()
    for name, body in files.items():
        (crate / name).parent.mkdir(parents=True, exist_ok=True)
        (crate / name).write_text(body)
    # Keep the compiled dependencies between test runs (the first build compiles syn); the doc's paths under
    # target/ stay valid through the link.
    cache = ROOT / "extensions" / "target" / "tutorial"
    cache.mkdir(parents=True, exist_ok=True)
    (crate / "target").symlink_to(cache)
    script = "set -euo pipefail\n" + "\n".join(commands)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "-c", script], cwd=crate, capture_output=True, text=True, env=env, check=False,
                          timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (crate / "word_count.wasm").is_file()
    assert "id: com.example.word-count" in out and "- count" in out  # the generated manifest
    assert "0 error(s)" in out  # capengine check
    assert re.search(r"ALLOW vdfs.read_file\s+/docs/hello.txt\s+word-count/read-docs\s+OK", out), out
    assert "log info: /docs/hello.txt: 5 words" in out and "job completed" in out
    # the denial: a default deny reaches the guest as PermissionDenied without a rule
    assert re.search(r"DENY\s+vdfs.list_dir\s+/secrets\s+default deny", out), out
    assert "not allowed to list /secrets" in out and "(rule: none, default deny)" in out
    assert "job failed (expected)" in out
