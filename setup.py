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
        # Byte for byte: an extension's manifest digest is what `capengine ext install` vouches for, so the
        # bundled photo-ocr must be the checkout's own, not a copy with an edited comment. The editor hints
        # (`$schema=../schemas/...`) resolve because the schemas sit beside the copies as beside the originals.
        shutil.copytree(HERE / "capengine" / "schemas", target / "schemas")
        shutil.copytree(HERE / "policies", target / "policies")
        for manifest in sorted((HERE / "extensions").glob("*/manifest.yaml")):
            relative = _module_of(manifest)
            module = manifest.parent / relative
            if not module.is_file():
                raise SystemExit(f"{module} is missing: build the example extensions first (make -C extensions)")
            out = target / "extensions" / manifest.parent.name
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest, out / "manifest.yaml")
            shutil.copy2(module, out / relative)
        shutil.copytree(HERE / "extensions" / "sample-library", target / "extensions" / "sample-library",
                        ignore=shutil.ignore_patterns("sidecars"))


setup(cmdclass={"build_py": BuildWithExamples})
