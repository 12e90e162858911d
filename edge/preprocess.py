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


@dataclass(frozen=True)
class PreprocessSpec:
    height: int = 224
    width: int = 224
    channels: int = 1
    resize: str = "stretch"  # "stretch" (whole image to HxW) or "letterbox" (keep aspect, pad black)
    interpolation: str = "area"
    scale: str = "unit"  # pixel values in [0, 1]; model-specific scaling lives inside the model

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
        if problems:
            raise CxrError("model preprocessing spec is not supported: " + ", ".join(problems),
                           code=ExitCode.MODEL, reason="bad_metadata")


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Grey float image in [0, 1] (any size) -> float32 array of shape (height, width, 1)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    interpolation = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "letterbox":
        out = _letterbox(pixels, spec.height, spec.width, interpolation)
    else:
        out = cv2.resize(pixels, (spec.width, spec.height), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0)[:, :, None]


def _letterbox(pixels: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((height, width), np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out
