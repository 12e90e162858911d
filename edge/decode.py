"""Decode an image file (PNG 8/16-bit, JPEG, DICOM) into one grey float32 array in [0, 1].

This is the first step of the image flow (file -> decode -> preprocess -> interpreter -> decision
-> log). Training uses it too, so a model never sees pixels decoded differently from the station.
Format is recognised from the file's bytes, never from its extension.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .decode_header import check_budget, jpeg_header, png_header, read_regular_file
from .decode_pixels import check_dynamic_range, robust_unit, to_grey
from .errors import CxrError
from .names import shown

MIN_SIDE = 32  # pydicom ships 32x32 CR files that must decode; anything smaller is not a radiograph

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_STDERR_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    pixels: np.ndarray  # float32, HxW, 0 = black, 1 = white (MONOCHROME2 sense)
    kind: str  # "png", "jpeg" or "dicom"
    bits: int  # bits per sample in the source
    width: int
    height: int
    sha256: str = ""  # of the file's bytes, exactly the bytes that were decoded
    info: dict = field(default_factory=dict)  # DICOM tags worth logging (modality, view...)

    def describe(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "width": self.width, "height": self.height, **self.info}


def sniff_kind(path: Path, head: bytes) -> str:
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom", "") and _looks_like_raw_dicom(head):
        return "dicom"
    raise CxrError(f"{shown(path)}: not an image (no PNG, JPEG or DICOM signature)", reason="not_an_image")


def _looks_like_raw_dicom(head: bytes) -> bool:
    # DICOM without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag, little endian.
    return len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00") and head[1] == 0


def load_image(path: str | Path, *, allow_any_view: bool = False, data: bytes | None = None) -> DecodedImage:
    """Read one file; raise CxrError (one line, with the file and the reason) when it cannot be used.
    `data`: the file's bytes when the caller has read them already (screen hashes them to look up the log)."""
    path = Path(path)
    data = read_regular_file(path) if data is None else data
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = _decode(path, data, allow_any_view)
    except CxrError as exc:
        exc.sha256 = digest  # refusals and corrupt files are logged with the hash of what was read
        raise
    image.sha256 = digest
    return image


def _decode(path: Path, data: bytes, allow_any_view: bool) -> DecodedImage:
    kind = sniff_kind(path, data[:132])
    if kind == "dicom":
        from .decode_dicom import decode_dicom  # deferred: only DICOM inputs pay for importing pydicom

        pixels, bits, info = decode_dicom(path, data, allow_any_view=allow_any_view)
        image = DecodedImage(pixels, "dicom", bits, pixels.shape[1], pixels.shape[0], info=info)
    else:
        image = _decode_raster(path, data, kind)
    if min(image.width, image.height) < MIN_SIDE:
        raise CxrError(
            f"{shown(path)}: image is {image.width}x{image.height} px, too small for a radiograph "
            f"(min {MIN_SIDE} px)", reason="too_small")
    check_dynamic_range(path, image.pixels)
    return image


def _decode_raster(path: Path, data: bytes, kind: str) -> DecodedImage:
    header = png_header(path, data) if kind == "png" else jpeg_header(path, data)
    # OpenCV silently returns a half-grey image for a truncated file; refuse instead of scoring it.
    if not header.complete:
        end = "no IEND chunk" if kind == "png" else "no end-of-image marker after the image data"
        raise CxrError(f"{shown(path)}: {kind.upper()} is truncated ({end}); was it still being copied?",
                       reason="truncated")
    check_budget(path, header)
    array, messages = _imdecode(data) if kind == "jpeg" else (_cv2_decode(data), "")
    if array is None or array.size == 0:
        raise CxrError(f"{shown(path)}: {kind.upper()} data is corrupt and cannot be decoded", reason="corrupt")
    if "premature end" in messages.lower():  # libjpeg: the scan data stops early (cut, EOI appended)
        raise CxrError(f"{shown(path)}: JPEG image data ends before the image is complete (cut or damaged "
                       "file)", reason="truncated")
    bits = 16 if array.dtype == np.uint16 else 8
    grey = to_grey(array)
    if bits == 8:
        pixels = grey.astype(np.float32) / np.float32(255.0)
    else:
        pixels = robust_unit(path, grey)
    return DecodedImage(pixels, kind, bits, pixels.shape[1], pixels.shape[0])


def _cv2_decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _imdecode(data: bytes) -> tuple[np.ndarray | None, str]:
    """cv2.imdecode, plus the warnings its libjpeg prints on the native stderr: it reports a scan
    that ends early ("Premature end of data segment") only there. One decode at a time (the file
    descriptor is process-wide); other output written to stderr meanwhile is passed on."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        with _native_stderr_to(captured):
            array = _cv2_decode(data)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines()
    ours = [line for line in lines if "JPEG" in line]
    others = [line for line in lines if line not in ours]
    if others:
        sys.stderr.write("\n".join(others) + "\n")
    return array, "\n".join(ours)


@contextlib.contextmanager
def _native_stderr_to(handle):
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2: nothing to capture
        yield
        return
    try:
        os.dup2(handle.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
