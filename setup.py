"""Build hook: ship the bundled examples inside the wheel as `capengine/bundled/`.

`policies/`, the example extensions under `extensions/` (manifest + built module) and the sample library
stay where users read them at the top of the checkout, the one source; the wheel gets a copy so that an
installed capengine runs `capengine check` and `capengine run` on its defaults from any directory.
Build the example modules first (`make -C extensions`, done by .ci/install).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _module_of(manifest: Path) -> str:
    match = re.search(r"^module:\s*['\"]?([^'\"\s#]+)", manifest.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise SystemExit(f"{manifest}: no 'module:' line")
    return match.group(1)


SCHEMA_HINT = re.compile(r"^(#\s*yaml-language-server:\s*\$schema=)(\S+)", re.M)


def _copy_yaml(source: Path, target: Path, package: Path) -> None:
    """Copy a bundled YAML file, re-pointing its editor hint (`$schema=../schemas/...`, relative to the checkout
    copy) at the package's own schemas: the bundled copy sits one directory deeper below `capengine/` than
    the checkout copy below the top, so the hint gains a `../`. A hint that would point nowhere is dropped
    (replaced by an empty comment, so that line numbers in messages stay those of the checkout copy)."""
    def repoint(match: re.Match[str]) -> str:
        hint = "../" + match.group(2)
        if (target.parent / hint).resolve().is_file() and package in (target.parent / hint).resolve().parents:
            return match.group(1) + hint
        return "#"

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(SCHEMA_HINT.sub(repoint, source.read_text(encoding="utf-8")), encoding="utf-8")
    shutil.copystat(source, target)


class BuildWithExamples(build_py):
    def run(self) -> None:
        package = (Path(self.build_lib) / "capengine").resolve()
        if not getattr(self, "editable_mode", False):
            # build/lib outlives the checkout's history: a module deleted or renamed since the last build would
            # otherwise reach the new wheel. build_py copies everything again, so start from nothing.
            shutil.rmtree(package, ignore_errors=True)
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        target = package / "bundled"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(HERE / "policies", target / "policies", ignore=shutil.ignore_patterns("*.yaml", "*.yml"))
        for source in sorted((HERE / "policies").rglob("*.y*ml")):
            _copy_yaml(source, target / "policies" / source.relative_to(HERE / "policies"), package)
        for manifest in sorted((HERE / "extensions").glob("*/manifest.yaml")):
            relative = _module_of(manifest)
            module = manifest.parent / relative
            if not module.is_file():
                raise SystemExit(f"{module} is missing: build the example extensions first (make -C extensions)")
            out = target / "extensions" / manifest.parent.name
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            _copy_yaml(manifest, out / "manifest.yaml", package)
            shutil.copy2(module, out / relative)
        shutil.copytree(HERE / "extensions" / "sample-library", target / "extensions" / "sample-library",
                        ignore=shutil.ignore_patterns("sidecars"))


setup(cmdclass={"build_py": BuildWithExamples})
