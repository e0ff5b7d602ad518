"""Where the bundled examples are: the policies, the example extensions and the sample library that
`capengine run` and `capengine check` use when given no paths.

In a checkout they are the top-level `policies/` and `extensions/` (one source of truth); an installed wheel
carries a copy of them as `capengine/bundled/`, made by the build (setup.py). The sample library is written
to (sidecars), and an installed package must never be: outside a checkout it is copied to the data
directory on first use.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
_PACKAGED = Path(__file__).resolve().parent / "bundled"


def root() -> Path:
    """The directory holding `policies/` and `extensions/`."""
    if (_CHECKOUT / "extensions" / "photo-ocr" / "manifest.yaml").is_file() and (_CHECKOUT / "policies").is_dir():
        return _CHECKOUT
    return _PACKAGED


def policies() -> Path:
    return root() / "policies"


def extension(name: str = "photo-ocr") -> Path:
    return root() / "extensions" / name


def sample_library(data_dir: Path) -> Path:
    """The sample library to run on: the checkout's own, or a copy in `data_dir` made on first use."""
    source = root() / "extensions" / "sample-library"
    if root() == _CHECKOUT:
        return source
    copy = Path(data_dir) / "sample-library"
    if not copy.exists():
        # A temp directory of this process's own, renamed into place: a copy interrupted half-way is never
        # mistaken for the library, and of several first runs racing one rename wins and the others use it.
        partial = Path(tempfile.mkdtemp(dir=data_dir, prefix=".sample-library.", suffix=".partial"))
        try:
            shutil.copytree(source, partial, ignore=shutil.ignore_patterns("sidecars"), dirs_exist_ok=True)
            partial.rename(copy)
        except OSError:
            if not copy.is_dir():  # not another process winning the rename: a real failure
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return copy
