"""DICOM -> grey [0, 1]: header checks (view, budget, compression) before the pixels are decoded,
then modality rescale, display window and photometric interpretation, each checked.

Choices (README, "Reasons an image is not screened"):
- Compressed transfer syntaxes (JPEG baseline/extended 12-bit, JPEG Lossless, JPEG-LS, JPEG 2000,
  RLE) are decoded by pydicom with the pylibjpeg plugins the edge install brings; a syntax with no
  installed decoder is refused as `unsupported_compression`.
- RescaleSlope/Intercept that are NaN, infinite, or a slope of 0 make every value meaningless:
  refused as `bad_pixel_values`.
- A display window that cannot be used (width <= 0, NaN, a VOI LUT that is short or of an impossible
  bit depth) is ignored: the image is scaled by percentiles instead, and `image.voi` says why.
- MONOCHROME1/2 with 3 samples per pixel (an inconsistent header) and colour images are turned to
  grey by luminance and scaled by percentiles.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .decode_header import Header, check_budget
from .decode_pixels import min_max_unit, require_finite, robust_unit, to_grey
from .errors import CxrError, InputRefused
from .names import one_line, shown
from .patient_age import dicom_age_years

ACCEPTED_MODALITIES = ("CR", "DX", "DR")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST", "")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def decode_dicom(path: Path, data: bytes, *, allow_any_view: bool) -> tuple[np.ndarray, int, dict]:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise CxrError(f"{shown(path)}: DICOM cannot be parsed ({one_line(exc)})", reason="corrupt") from None
    info = {  # tag text shown safely too: a hostile file could carry escape codes in any of them
        "modality": shown(str(ds.get("Modality", "") or "")),
        "view_position": shown(str(ds.get("ViewPosition", "") or "")),
        "body_part": shown(str(ds.get("BodyPartExamined", "") or "")),
        "photometric": shown(str(ds.get("PhotometricInterpretation", "") or "")),
        "bits_stored": _int_tag(path, ds, "BitsStored", default=0),
        "patient_age": dicom_age_years(ds),
    }
    if not allow_any_view:
        _refuse_non_chest_xray(path, info)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CxrError(f"{shown(path)}: DICOM has no pixel data", reason="no_pixel_data")
    samples = _int_tag(path, ds, "SamplesPerPixel", default=1)
    frames = _int_tag(path, ds, "NumberOfFrames", default=1)
    bits_allocated = _int_tag(path, ds, "BitsAllocated", default=16)
    header = Header(_int_tag(path, ds, "Columns", default=0), _int_tag(path, ds, "Rows", default=0),
                    max(samples, 1), max(1, math.ceil(bits_allocated / 8)), True, max(frames, 1))
    if header.width <= 0 or header.height <= 0:
        raise CxrError(f"{shown(path)}: DICOM has no Rows/Columns", reason="corrupt")
    check_budget(path, header)
    if frames > 1:
        raise InputRefused(f"{shown(path)}: DICOM holds {frames} frames; a chest radiograph has one",
                           reason="multi_frame")
    _require_decoder(path, ds)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        reason = "unsupported_compression" if isinstance(exc, NotImplementedError) else "corrupt"
        raise CxrError(f"{shown(path)}: DICOM pixel data cannot be decoded ({one_line(exc)})",
                       reason=reason) from None
    if info["photometric"] in MONOCHROME and raw.ndim == 2:
        pixels = _monochrome(path, ds, raw, info)
    else:
        if info["photometric"] in MONOCHROME:
            info["voi"] = f"ignored: {info['photometric']} with {samples} samples per pixel, read as colour"
        pixels = robust_unit(path, to_grey(raw, order="rgb"))
    bits = info["bits_stored"] or int(raw.dtype.itemsize * 8)
    return pixels, bits, info


def _require_decoder(path: Path, ds) -> None:
    """unsupported_compression, with the real reason, when no installed decoder reads this syntax."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise CxrError(f"{shown(path)}: DICOM transfer syntax {syntax.name} ({syntax}) has no decoder",
                       reason="unsupported_compression") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none available"
        raise CxrError(f"{shown(path)}: DICOM transfer syntax {syntax.name} ({syntax}) needs a decoder that "
                       f"is not installed ({one_line(missing)}); reinstall cxr-edge to get pylibjpeg",
                       reason="unsupported_compression")


def _monochrome(path: Path, ds, raw: np.ndarray, info: dict) -> np.ndarray:
    values = _modality(path, ds, raw)
    require_finite(path, values)
    windowed = _window(path, ds, values, info)
    pixels = min_max_unit(path, windowed) if windowed is not None else robust_unit(path, values)
    if info["photometric"] == "MONOCHROME1":  # 0 means white: invert so bone is bright like PNGs
        np.subtract(np.float32(1.0), pixels, out=pixels)
    return pixels


def _modality(path: Path, ds, raw: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (float32), rescale checked."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut
        try:
            return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        except Exception as exc:
            raise CxrError(f"{shown(path)}: DICOM modality LUT cannot be applied ({one_line(exc)})",
                           reason="corrupt") from None
    slope = _float_tag(path, ds, "RescaleSlope", 1.0)
    intercept = _float_tag(path, ds, "RescaleIntercept", 0.0)
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise InputRefused(f"{shown(path)}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g} make every "
                           "pixel value meaningless", reason="bad_pixel_values")
    values = raw.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _window(path: Path, ds, values: np.ndarray, info: dict) -> np.ndarray | None:
    """The display window applied (values bounded by it), or None when there is none or it is unusable."""
    if "VOILUTSequence" in ds:
        return _voi_lut(ds, values, info)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
    except (TypeError, ValueError):
        info["voi"] = "ignored: window center/width are not numbers"
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        info["voi"] = f"ignored: window center {center:g} width {width:g}"
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function != "LINEAR":
        return _voi_lut(ds, values, info)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), mapped straight to [0, 1], in place and in float32.
    out = values.copy()
    out -= np.float32(center - 0.5)
    out *= np.float32(1.0 / max(width - 1.0, 1e-6))
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _voi_lut(ds, values: np.ndarray, info: dict) -> np.ndarray | None:
    from pydicom.pixels import apply_voi_lut
    try:
        out = np.asarray(apply_voi_lut(values, ds))
    except Exception as exc:  # short LUT, 40-bit entries, bad descriptor...
        info["voi"] = f"ignored: VOI LUT unusable ({one_line(exc)})"
        return None
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        info["voi"] = "ignored: VOI LUT gives non-finite values"
        return None
    return out


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and \
        not isinstance(value, str) else value


def _float_tag(path: Path, ds, keyword: str, default: float) -> float:
    value = ds.get(keyword, default)
    try:
        return float(_first(value)) if value not in (None, "") else default
    except (TypeError, ValueError):
        raise CxrError(f"{shown(path)}: DICOM tag {keyword} is not a number ({value!r})", reason="corrupt") from None


def _int_tag(path: Path, ds, keyword: str, *, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        raise CxrError(f"{shown(path)}: DICOM tag {keyword} is not a number ({ds.get(keyword)!r})",
                       reason="corrupt") from None


def _refuse_non_chest_xray(path: Path, info: dict) -> None:
    modality = info["modality"].upper()
    name = shown(path)
    if modality not in ACCEPTED_MODALITIES:
        shown_modality = modality or "missing"
        raise InputRefused(
            f"{name}: DICOM modality is {shown_modality}, not a radiograph (CR/DX/DR); use --any-view to override",
            reason="unsupported_modality",
        )
    if info["view_position"].upper() in LATERAL_VIEWS:
        raise InputRefused(
            f"{name}: lateral view ({info['view_position']}); the model reads frontal PA/AP views only; "
            "use --any-view to override",
            reason="lateral_view",
        )
    if info["body_part"].upper() not in CHEST_BODY_PARTS:
        raise InputRefused(
            f"{name}: body part is {info['body_part']}, not chest; use --any-view to override",
            reason="not_chest",
        )
