"""The one preprocessing implementation, driven by the spec stored inside each model file.

Training, calibration, conversion, parity tests and the edge runtime all call `preprocess`,
so a model and the pixels it is fed cannot drift apart. Output is always grey, one channel,
float32 in [0, 1]; backbones that want three channels or another value range do that inside
the model graph (see models/architectures.py), so the spec stays the same for every model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .errors import CxrError, ExitCode

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
CROPS = ("none", "borders", "lungs")
NORMALIZATIONS = ("none", "equalize", "clahe")
BORDER_MAX_FRACTION = 0.25  # never cut more than this from one side, whatever the border looks like


@dataclass(frozen=True)
class PreprocessSpec:
    height: int = 224
    width: int = 224
    channels: int = 1
    resize: str = "stretch"  # "stretch" (whole image to HxW) or "letterbox" (keep aspect, pad black)
    interpolation: str = "area"
    scale: str = "unit"  # pixel values in [0, 1]; model-specific scaling lives inside the model
    # What a model should not read (issue: the source's look). Applied in this order, before resizing:
    crop: str = "none"  # "none" | "borders": cut uniform borders (collimation, padding, letterbox bars)
    #                     | "lungs": borders, then the lung fields' box found by the segmenter `lungs`
    margin: float = 0.0  # fraction of each side cut after that (burnt-in text and markers near the edges);
    #                      with "lungs", only where no lung box was found
    lungs: str = ""  # sha256 of the lung segmenter that travels inside the model file (edge/lungs.py)
    # ... and after resizing, at the model's resolution:
    normalize: str = "none"  # "none" | "equalize" (histogram) | "clahe" (contrast-limited, 8x8 tiles)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        spec = cls(**known)
        spec.validate()
        return spec

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        problems = []
        if self.height < 8 or self.width < 8:
            problems.append(f"input size {self.height}x{self.width}")
        if self.channels != 1:
            problems.append(f"channels={self.channels} (only 1 is supported)")
        if self.resize not in ("stretch", "letterbox"):
            problems.append(f"resize={self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation!r}")
        if self.scale != "unit":
            problems.append(f"scale={self.scale!r}")
        if self.crop not in CROPS:
            problems.append(f"crop={self.crop!r}")
        if self.crop == "lungs" and not (isinstance(self.lungs, str) and len(self.lungs) == 64):
            problems.append("crop='lungs' without the segmenter's sha256")
        if not (isinstance(self.margin, (int, float)) and 0.0 <= self.margin <= 0.2):
            problems.append(f"margin={self.margin!r} (0 to 0.2)")
        if self.normalize not in NORMALIZATIONS:
            problems.append(f"normalize={self.normalize!r}")
        if problems:
            raise CxrError("model preprocessing spec is not supported: " + ", ".join(problems),
                           code=ExitCode.MODEL, reason="bad_metadata")


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Grey float image in [0, 1] (any size) -> float32 array of shape (height, width, 1)."""
    return preprocess_info(pixels, spec)[0]


def content_box(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[tuple[int, int, int, int], str]:
    """((top, bottom, left, right), crop outcome): the part of the image that becomes the model's input,
    before resizing. The outcome is "none", "borders", "lungs" or "lungs_not_found" (then the borders box
    and the margin are used). The review heatmap is placed back onto the film with the same box."""
    h, w = pixels.shape[:2]
    top, bottom, left, right = 0, h, 0, w
    outcome = spec.crop
    if spec.crop in ("borders", "lungs"):
        top, bottom, left, right = border_box(pixels)
    lung_box = None
    if spec.crop == "lungs":
        from . import lungs

        lung_box = lungs.get(spec.lungs).box(pixels[top:bottom, left:right])
        if lung_box is None:
            outcome = "lungs_not_found"
        else:
            t, b, l, r = lung_box
            top, bottom, left, right = top + t, top + b, left + l, left + r
    if spec.margin > 0 and lung_box is None:
        dy, dx = int(round((bottom - top) * spec.margin)), int(round((right - left) * spec.margin))
        top, bottom, left, right = top + dy, bottom - dy, left + dx, right - dx
    return (top, bottom, left, right), outcome


def preprocess_info(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, dict]:
    """`preprocess`, and what the crop did: {"crop": outcome, "box": [top, bottom, left, right]}."""
    pixels = np.asarray(pixels, dtype=np.float32)
    (top, bottom, left, right), outcome = content_box(pixels, spec)
    info = {"crop": outcome, "box": [int(top), int(bottom), int(left), int(right)]}
    pixels = pixels[top:bottom, left:right]
    interpolation = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "letterbox":
        out = _letterbox(pixels, spec.height, spec.width, interpolation)
    else:
        out = cv2.resize(pixels, (spec.width, spec.height), interpolation=interpolation)
    out = np.clip(out, 0.0, 1.0)
    if spec.normalize != "none":
        out = _normalize(out, spec.normalize)
    return out[:, :, None], info


def border_box(pixels: np.ndarray, *, flat: float = 0.03) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image inside its uniform borders.

    A border row or column is one whose values barely vary (standard deviation < `flat`, on [0, 1]):
    black or white collimation, padding, letterbox bars. Scanning stops at the first row/column with
    content, and never cuts more than BORDER_MAX_FRACTION of a side, so a dark but real image survives.
    """
    h, w = pixels.shape[:2]
    scale = max(1, max(h, w) // 256)  # measured on a small copy: fast on a 3000 px film
    small = pixels[::scale, ::scale]
    row_std, col_std = small.std(axis=1), small.std(axis=0)

    def first_content(values) -> int:
        limit = int(len(values) * BORDER_MAX_FRACTION)
        for i, v in enumerate(values[:limit]):
            if v >= flat:
                return i
        return limit

    top, bottom = first_content(row_std), first_content(row_std[::-1])
    inner = small[top:len(row_std) - bottom]  # columns judged without the top/bottom borders (and back)
    left, right = first_content(inner.std(axis=0)), first_content(inner.std(axis=0)[::-1])
    inner = small[:, left:len(col_std) - right]
    top, bottom = first_content(inner.std(axis=1)), first_content(inner.std(axis=1)[::-1])
    return top * scale, h - bottom * scale, left * scale, w - right * scale


def _normalize(image: np.ndarray, how: str) -> np.ndarray:
    grey = np.round(image * 255.0).astype(np.uint8)
    if how == "equalize":
        out = cv2.equalizeHist(grey)
    else:
        out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    return out.astype(np.float32) / 255.0


def _letterbox(pixels: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((height, width), np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out
