"""ai.ocr: text from an image in a library, by Tesseract (Debian's tesseract-ocr). Never a fake answer.

An image is hostile input: a 948 KB PNG can declare 30000x30000 pixels and cost Tesseract 3.3 GB and most of
a minute. So before Tesseract runs, Pillow reads only the image's header (no pixel is decoded) and an image
over MAX_PIXELS (or with more than one frame) is refused. Tesseract then runs with one thread
(OMP_THREAD_LIMIT=1), under RLIMIT_AS, with a timeout that is the smaller of TIMEOUT_SECONDS and what is
left of the job's deadline; a host shutdown kills it.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import time
import warnings

from PIL import Image, UnidentifiedImageError

from capengine.host.deadline import Deadline
from capengine.host.envelope import ErrorCode
from capengine.host.operations.registry import CallContext, Operation, OperationError, Registry, load_schema
from capengine.host.operations.vdfs import MAX_READ, open_file

TIMEOUT_SECONDS = 60
MAX_PIXELS = 50_000_000  # a 50-megapixel photo (8160x6120); Tesseract needs about 4 bytes per pixel
MEMORY_BYTES = 1024 * 1024 * 1024  # RLIMIT_AS of the Tesseract process
# What Tesseract (glibc, the loader, libstdc++) says when RLIMIT_AS stops an allocation or a mapping.
_OUT_OF_MEMORY = (b"alloc", b"failed to map", b"cannot allocate memory", b"out of memory")
POLL_SECONDS = 0.1  # how often a running Tesseract checks for a host shutdown


def ocr(ctx: CallContext, args: dict) -> dict:
    binary = shutil.which("tesseract")
    if binary is None:
        raise OperationError(ErrorCode.INTERNAL, "OCR engine unavailable: the tesseract program is not installed "
                                                 "(apt-get install tesseract-ocr tesseract-ocr-eng)")
    with open_file(ctx, args["path"]) as fd:
        image = os.read(fd, MAX_READ + 1)
    if len(image) > MAX_READ:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"image is over the {MAX_READ}-byte cap")
    check_dimensions(image, args["path"])
    # The image goes in on stdin: tesseract never sees a path it could be tricked into following.
    out, err, code = run_bounded([binary, "stdin", "stdout", "-l", args.get("language", "eng"), "tsv"], image,
                                 ctx.deadline)
    if code != 0:
        detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        if code < 0 or any(m in err.lower() for m in _OUT_OF_MEMORY):  # a signal, or the memory limit
            raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"OCR ran out of its {MEMORY_BYTES}-byte memory "
                                                               "limit or was killed")
        raise OperationError(ErrorCode.INVALID_ARGUMENT, f"OCR failed: {detail[0][:200]}")
    return _from_tsv(out.decode("utf-8", "replace"))


def check_dimensions(image: bytes, path: str) -> None:
    """Refuse an image whose pixels would not fit the limits, reading only its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image)) as img:
                width, height = img.size
                frames = getattr(img, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"{path}: the image declares more pixels than OCR "
                                                           f"accepts ({MAX_PIXELS})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{path} is not an image OCR can read ({exc})") from None
    if width * height > MAX_PIXELS:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"{path} is {width}x{height} pixels; OCR accepts at "
                                                           f"most {MAX_PIXELS} pixels")
    if frames != 1:
        raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{path} has {frames} frames; OCR reads single images")


def _limit_memory() -> None:  # runs in the child between fork and exec: no locks, no allocation worth naming
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def run_bounded(argv: list[str], data: bytes, deadline: Deadline) -> tuple[bytes, bytes, int]:
    """Run a helper program under the memory limit, one thread, and the call's deadline (killed when it
    passes or the host shuts down)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1", "LC_ALL": "C"}
    if "TESSDATA_PREFIX" in os.environ:
        env["TESSDATA_PREFIX"] = os.environ["TESSDATA_PREFIX"]
    budget = min(TIMEOUT_SECONDS, deadline.remaining())
    if budget <= 0:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, "no time left in the job for OCR")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_limit_memory, close_fds=True)
    stop_at = min(deadline.at, _now() + budget)
    pending: bytes | None = data
    try:
        while True:
            try:
                out, err = proc.communicate(pending, timeout=max(0.0, min(POLL_SECONDS, stop_at - _now())))
                return out, err, proc.returncode
            except subprocess.TimeoutExpired:
                pending = None  # communicate() keeps feeding stdin across retries
                if deadline.cancelled():
                    raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, "OCR stopped: the host is shutting down") \
                        from None
                if _now() >= stop_at:
                    raise OperationError(ErrorCode.RESOURCE_EXHAUSTED,
                                         f"OCR stopped after {budget:.1f} s (the job's time limit or the "
                                         f"{TIMEOUT_SECONDS} s OCR limit)") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _now() -> float:
    return time.monotonic()


def _from_tsv(tsv: str) -> dict:
    """Words with confidence >= 0, grouped back into lines; confidence is the mean word confidence (0..1)."""
    lines: dict[tuple, list[str]] = {}
    confidences: list[float] = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        conf = float(cols[10])
        if conf < 0:
            continue
        confidences.append(conf)
        lines.setdefault((cols[2], cols[3], cols[4]), []).append(cols[11])
    text = "\n".join(" ".join(words) for words in lines.values())
    confidence = round(sum(confidences) / len(confidences) / 100, 3) if confidences else 0.0
    return {"text": text, "confidence": confidence}


def register(registry: Registry) -> None:
    registry.register(Operation("ai.ocr", "query", "Recognise the text in an image (Tesseract).",
                                load_schema("ai.ocr"), ocr))
