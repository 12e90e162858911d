"""Find the lung fields, so that a classifier reads the chest and not the border, the text or the framing.

A small U-Net (trained by `cxr-train lungs` on ../shared/data/lung-masks) travels *inside* the classifier's
.tflite file as a named buffer (`cxr_edge_lungs`), and the classifier's preprocessing spec names it by
sha256 (`crop="lungs"`, `lungs=<sha256>`), so a classifier and its crop cannot drift apart. Loading a model
file registers its segmenter here; `edge.preprocess.preprocess` then asks for the box by hash.

The box is the bounding box of the two largest lung components, widened by a margin. When the mask is not
plausible (too small, too large, too narrow), there is no box and the preprocessing falls back to the whole
image inside its uniform borders; `last_outcome` says which happened, for the result and the log.
"""

from __future__ import annotations

import hashlib
import threading

import cv2
import numpy as np

from .errors import CxrError, ExitCode

LUNGS_ENTRY = "cxr_edge_lungs"
SEG_SIZE = 128  # the segmenter's square input and output
BOX_MARGIN = 0.08  # widen the box by this fraction of its size on each side
MIN_AREA, MAX_AREA = 0.04, 0.75  # plausible share of the image covered by lung
MIN_WIDTH, MIN_HEIGHT = 0.30, 0.25  # plausible box size, as a share of the image side

_REGISTRY: dict[str, "LungSegmenter"] = {}
_LOCK = threading.Lock()


def segmenter_input(pixels: np.ndarray) -> np.ndarray:
    """Grey [0, 1] image of any size -> (SEG_SIZE, SEG_SIZE, 1) float32, contrast-limited equalised.
    Training and the edge both call this."""
    small = cv2.resize(np.asarray(pixels, np.float32), (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA)
    grey = np.round(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    return (out.astype(np.float32) / 255.0)[:, :, None]


def box_from_mask(prob: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """(top, bottom, left, right) as fractions of the image, or None when the mask is not plausible."""
    mask = (np.asarray(prob) >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    h, w = mask.shape
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
    keep = [k for k in order if stats[k, cv2.CC_STAT_AREA] >= 0.01 * h * w]
    area = sum(int(stats[k, cv2.CC_STAT_AREA]) for k in keep) / (h * w)
    if not keep or not MIN_AREA <= area <= MAX_AREA:
        return None
    top = min(stats[k, cv2.CC_STAT_TOP] for k in keep)
    left = min(stats[k, cv2.CC_STAT_LEFT] for k in keep)
    bottom = max(stats[k, cv2.CC_STAT_TOP] + stats[k, cv2.CC_STAT_HEIGHT] for k in keep)
    right = max(stats[k, cv2.CC_STAT_LEFT] + stats[k, cv2.CC_STAT_WIDTH] for k in keep)
    if (right - left) / w < MIN_WIDTH or (bottom - top) / h < MIN_HEIGHT:
        return None
    dy, dx = (bottom - top) * BOX_MARGIN, (right - left) * BOX_MARGIN
    return (max(0.0, (top - dy) / h), min(1.0, (bottom + dy) / h),
            max(0.0, (left - dx) / w), min(1.0, (right + dx) / w))


class LungSegmenter:
    """One segmenter model, run with the same TFLite runtime as the classifier (one interpreter, locked)."""

    def __init__(self, data: bytes):
        from .runtime import _interpreter_module, _quiet_native_stderr

        self.sha256 = hashlib.sha256(data).hexdigest()
        module, _ = _interpreter_module()
        try:
            with _quiet_native_stderr():
                self.interpreter = module.Interpreter(model_content=data, num_threads=1)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CxrError(f"the lung segmenter inside the model cannot be loaded ({exc})", code=ExitCode.MODEL,
                           reason="model_unloadable") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        if tuple(self.input["shape"]) != (1, SEG_SIZE, SEG_SIZE, 1):
            raise CxrError(f"the lung segmenter's input shape {tuple(self.input['shape'])} is not "
                           f"(1, {SEG_SIZE}, {SEG_SIZE}, 1)", code=ExitCode.MODEL, reason="bad_metadata")
        self._lock = threading.Lock()

    def mask(self, pixels: np.ndarray) -> np.ndarray:
        """P(lung) per pixel, (SEG_SIZE, SEG_SIZE)."""
        from .runtime import _dequantize, _quantize

        x = segmenter_input(pixels)[None]
        with self._lock:
            self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
            self.interpreter.invoke()
            out = _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)
        return np.asarray(out, np.float32).reshape(SEG_SIZE, SEG_SIZE)

    def box(self, pixels: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) in pixels of `pixels`, or None (no plausible lung fields)."""
        fractions = box_from_mask(self.mask(pixels))
        if fractions is None:
            return None
        h, w = pixels.shape[:2]
        top, bottom, left, right = fractions
        return int(top * h), max(int(top * h) + 1, int(round(bottom * h))), int(left * w), \
            max(int(left * w) + 1, int(round(right * w)))


def register(data: bytes) -> LungSegmenter:
    """Make a segmenter available to the preprocessing under its sha256 (idempotent)."""
    digest = hashlib.sha256(data).hexdigest()
    with _LOCK:
        if digest not in _REGISTRY:
            _REGISTRY[digest] = LungSegmenter(data)
        return _REGISTRY[digest]


def get(digest: str) -> LungSegmenter:
    try:
        return _REGISTRY[digest]
    except KeyError:
        raise CxrError(f"the preprocessing needs lung segmenter {digest[:12]}..., which is not loaded (it travels "
                       "inside the model file: load the model through edge.runtime.TFLiteModel)",
                       code=ExitCode.MODEL, reason="bad_metadata") from None
