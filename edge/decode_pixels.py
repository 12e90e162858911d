"""From decoded sample values to grey [0, 1], and the checks that refuse meaningless pixels.

Choices (documented in README, "Reasons an image is not screened"):
- 8-bit images are divided by 255, as the models were trained.
- Images without a display window (16-bit PNG, DICOM without a usable window) are scaled by a robust
  range, not min/max, so one hot or dead pixel cannot change the picture: the 0.5th-99.5th percentile
  range widened by MARGIN of its span on each side, never beyond the actual min/max (a clean image
  keeps practically its min-max scaling; outliers beyond the widened range are clipped).
- NaN or infinite values are refused (`bad_pixel_values`), never scored.
- An image whose 0.5-99.5 percentile spread is under MIN_SPREAD of the grey range (blank,
  saturated, one flat value) is refused as `low_quality`.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from .errors import InputRefused
from .names import shown

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
MIN_SPREAD = 0.05  # of the [0, 1] grey range: about 13 levels of an 8-bit image
MARGIN = 0.1
SAMPLE_PIXELS = 1_000_000  # percentiles are taken on a regular grid of about this many pixels


def to_grey(array: np.ndarray, *, order: str = "bgr") -> np.ndarray:
    """2-D grey from grey, grey+alpha, BGR(A) (OpenCV) or RGB (DICOM) samples of any numeric type."""
    array = np.asarray(array)
    if array.ndim == 2:
        return array
    if array.shape[2] in (2, 4):  # drop alpha
        array = array[:, :, :array.shape[2] - 1]
    if array.shape[2] == 1:
        return array[:, :, 0]
    if array.dtype in (np.uint8, np.uint16) and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2GRAY if order == "bgr" else cv2.COLOR_RGB2GRAY)
    weights = (0.114, 0.587, 0.299) if order == "bgr" else (0.299, 0.587, 0.114)
    grey = np.zeros(array.shape[:2], np.float32)
    for channel, weight in enumerate(weights[:array.shape[2]]):
        grey += array[:, :, channel].astype(np.float32) * np.float32(weight)
    return grey


def _grid(values: np.ndarray) -> np.ndarray:
    step = max(1, math.isqrt(values.size // SAMPLE_PIXELS))
    return values[::step, ::step]


def percentiles(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(_grid(values), [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(lo), float(hi)


def robust_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = percentiles(values)
    span = hi - lo
    return max(float(values.min()), lo - MARGIN * span), min(float(values.max()), hi + MARGIN * span)


def require_finite(path: Path, values: np.ndarray) -> None:
    if values.dtype.kind == "f":
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputRefused(f"{shown(path)}: {bad} pixel values are NaN or infinite; the image cannot be "
                               "scored", reason="bad_pixel_values")


def no_range(path: Path, detail: str) -> InputRefused:
    return InputRefused(f"{shown(path)}: image has no dynamic range ({detail}): blank, saturated or "
                        "not an exposure", reason="low_quality")


def robust_unit(path: Path, values: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] by robust_range (clipped beyond it)."""
    require_finite(path, values)
    lo, hi = robust_range(values)
    if not hi > lo:
        raise no_range(path, f"99% of its pixels have the value {lo:g}")
    out = values.astype(np.float32, copy=False)  # in place on float32 input: callers pass their own arrays
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def min_max_unit(path: Path, values: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] by min/max: for values already bounded by a display window."""
    require_finite(path, values)
    out = values.astype(np.float32, copy=False)  # in place on float32 input, like robust_unit
    lo, hi = float(out.min()), float(out.max())
    if not hi > lo:
        raise no_range(path, f"every pixel is {lo:g} after the display window")
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def check_dynamic_range(path: Path, pixels: np.ndarray) -> None:
    """pixels: grey in [0, 1]. Refuse an image whose central 99% spans less than MIN_SPREAD."""
    lo, hi = percentiles(pixels)
    if hi - lo < MIN_SPREAD:
        raise no_range(path, f"99% of its pixels lie between {lo:.3f} and {hi:.3f} of the grey range")
