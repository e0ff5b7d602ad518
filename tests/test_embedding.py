"""docs/embedding.md's example runs as written, and the public API is what the docs list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import capengine

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "embedding.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_embedding_example_runs(tmp_path: Path) -> None:
    blocks = _python_blocks(DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/embedding.md has no python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "denied by photo-ocr/no-raw-originals" in result.stdout
    assert "completed" in result.stdout


def test_every_documented_name_is_public() -> None:
    table = DOC.read_text(encoding="utf-8").split("## Example")[0]
    documented = set(re.findall(r"^\| `([A-Za-z_]+)", table, re.M))
    assert documented <= set(capengine.__all__), documented - set(capengine.__all__)
    for name in capengine.__all__:
        assert getattr(capengine, name) is not None


def test_deciding_does_not_load_the_wasm_runtime() -> None:
    code = ("import sys, capengine; capengine.load_policies('policies'); "
            "print('wasmtime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_every_capengine_error_derives_from_the_base() -> None:
    assert issubclass(capengine.PolicyLoadError, capengine.CapengineError)
    assert issubclass(capengine.RequestError, capengine.CapengineError)
    assert issubclass(capengine.ExtensionError, capengine.CapengineError)
