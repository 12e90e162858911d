"""Decode an image file (PNG 8/16-bit, JPEG, DICOM) into one grey float32 array in [0, 1].

This is the first step of the image flow (file -> decode -> preprocess -> interpreter -> decision
-> log). Training uses it too, so a model never sees pixels decoded differently from the station.
Format is recognised from the file's bytes, never from its extension.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import CxrError, InputRefused

MIN_SIDE = 32  # pydicom ships 32x32 CR files that must decode; anything smaller is not a radiograph
ACCEPTED_MODALITIES = ("CR", "DX", "DR")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST", "")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


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
    raise CxrError(f"{path}: not an image (no PNG, JPEG or DICOM signature)", reason="not_an_image")


def _looks_like_raw_dicom(head: bytes) -> bool:
    # DICOM without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag, little endian.
    return len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00") and head[1] == 0


def load_image(path: str | Path, *, allow_any_view: bool = False) -> DecodedImage:
    """Read one file; raise CxrError (one line, with the file and the reason) when it cannot be used."""
    path = Path(path)
    data = _read_bytes(path)
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
        image = _decode_dicom(path, data, allow_any_view=allow_any_view)
    else:
        image = _decode_raster(path, data, kind)
    if min(image.width, image.height) < MIN_SIDE:
        raise CxrError(
            f"{path}: image is {image.width}x{image.height} px, too small for a radiograph (min {MIN_SIDE} px)",
            reason="too_small",
        )
    return image


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: file not found", reason="not_found") from None
    except IsADirectoryError:
        raise CxrError(f"{path}: is a folder, not an image file", reason="not_a_file") from None
    except OSError as exc:
        raise CxrError(f"{path}: cannot be read ({exc.strerror or exc})", reason="unreadable") from None
    if not data:
        raise CxrError(f"{path}: file is empty (0 bytes)", reason="empty_file")
    return data


def _check_complete(path: Path, data: bytes, kind: str) -> None:
    # OpenCV silently returns a half-grey image for a truncated JPEG; refuse instead of scoring it.
    if kind == "png" and b"IEND" not in data[-64:]:
        raise CxrError(f"{path}: PNG is truncated (no IEND chunk); was it still being copied?", reason="truncated")
    if kind == "jpeg" and b"\xff\xd9" not in data[-1024:]:
        raise CxrError(f"{path}: JPEG is truncated (no end-of-image marker)", reason="truncated")


def _decode_raster(path: Path, data: bytes, kind: str) -> DecodedImage:
    _check_complete(path, data, kind)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise CxrError(f"{path}: {kind.upper()} data is corrupt and cannot be decoded", reason="corrupt")
    bits = 16 if array.dtype == np.uint16 else 8
    grey = _to_grey(array)
    if bits == 8:
        pixels = grey.astype(np.float32) / 255.0
    else:
        pixels = _min_max(grey)
    return DecodedImage(pixels, kind, bits, pixels.shape[1], pixels.shape[0])


def _to_grey(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.shape[2] == 1:
        return array[:, :, 0]
    return cv2.cvtColor(array, cv2.COLOR_BGR2GRAY)


def _min_max(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros_like(array)
    array -= lo
    array /= hi - lo
    return array


def _decode_dicom(path: Path, data: bytes, *, allow_any_view: bool) -> DecodedImage:
    import pydicom  # deferred: only DICOM inputs pay for importing it
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise CxrError(f"{path}: DICOM cannot be parsed ({_short(exc)})", reason="corrupt") from None
    info = {
        "modality": str(ds.get("Modality", "") or ""),
        "view_position": str(ds.get("ViewPosition", "") or ""),
        "body_part": str(ds.get("BodyPartExamined", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "bits_stored": _int_tag(path, ds, "BitsStored", default=0),
    }
    if not allow_any_view:
        _refuse_non_chest_xray(path, info)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CxrError(f"{path}: DICOM has no pixel data", reason="no_pixel_data")
    frames = _int_tag(path, ds, "NumberOfFrames", default=1)
    if frames > 1:
        raise InputRefused(f"{path}: DICOM holds {frames} frames; a chest radiograph has one", reason="multi_frame")
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise CxrError(f"{path}: DICOM pixel data cannot be decoded ({_short(exc)})", reason="corrupt") from None
    if info["photometric"] in ("MONOCHROME1", "MONOCHROME2"):
        values = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float32)
        pixels = _min_max(values)
        if info["photometric"] == "MONOCHROME1":  # 0 means white: invert so bone is bright like PNGs
            pixels = 1.0 - pixels
    else:
        pixels = _min_max(_to_grey(np.asarray(raw)))
    bits = info["bits_stored"] or int(raw.dtype.itemsize * 8)
    return DecodedImage(pixels, "dicom", bits, pixels.shape[1], pixels.shape[0], info=info)


def _int_tag(path: Path, ds, keyword: str, *, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        raise CxrError(f"{path}: DICOM tag {keyword} is not a number ({ds.get(keyword)!r})",
                       reason="corrupt") from None


def _refuse_non_chest_xray(path: Path, info: dict) -> None:
    modality = info["modality"].upper()
    if modality not in ACCEPTED_MODALITIES:
        shown = modality or "missing"
        raise InputRefused(
            f"{path}: DICOM modality is {shown}, not a radiograph (CR/DX/DR); use --any-view to override",
            reason="unsupported_modality",
        )
    if info["view_position"].upper() in LATERAL_VIEWS:
        raise InputRefused(
            f"{path}: lateral view ({info['view_position']}); the model reads frontal PA/AP views only; "
            "use --any-view to override",
            reason="lateral_view",
        )
    if info["body_part"].upper() not in CHEST_BODY_PARTS:
        raise InputRefused(
            f"{path}: body part is {info['body_part']}, not chest; use --any-view to override",
            reason="not_chest",
        )


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
