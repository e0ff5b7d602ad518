"""ai.ocr: text from an image in a library, by Tesseract (Debian's tesseract-ocr). Never a fake answer."""

from __future__ import annotations

import os
import shutil
import subprocess

from capengine.host import safe_fs
from capengine.host.envelope import ErrorCode
from capengine.host.operations.registry import CallContext, Operation, OperationError, Registry, load_schema
from capengine.host.operations.vdfs import MAX_READ, fs_errors, library_root

TIMEOUT_SECONDS = 60


def ocr(ctx: CallContext, args: dict) -> dict:
    binary = shutil.which("tesseract")
    if binary is None:
        raise OperationError(ErrorCode.INTERNAL, "OCR engine unavailable: the tesseract program is not installed "
                                         "(apt-get install tesseract-ocr tesseract-ocr-eng)")
    with fs_errors(), safe_fs.open_beneath(library_root(ctx), args["path"]) as fd:
        image = os.read(fd, MAX_READ + 1)
    if len(image) > MAX_READ:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"image is over the {MAX_READ}-byte cap")
    try:  # the image goes in on stdin: tesseract never sees a path it could be tricked into following
        proc = subprocess.run([binary, "stdin", "stdout", "-l", args.get("language", "eng"), "tsv"], input=image,
                              capture_output=True, timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise OperationError(ErrorCode.RESOURCE_EXHAUSTED, f"OCR took longer than {TIMEOUT_SECONDS} s") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise OperationError(ErrorCode.INVALID_ARGUMENT, f"OCR failed: {detail[0]}")
    return _from_tsv(proc.stdout.decode("utf-8", "replace"))


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
