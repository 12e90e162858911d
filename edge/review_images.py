"""Small JPEG pictures stored with each screened exam for remote review: the thumbnail and a heatmap.

Both are made from the model's input (the preprocessed image, exactly what the model saw), so the
heatmap lines up with the thumbnail whatever the resize mode, and no second decode of the
original is needed. They are kept small (a few kB each) for sending over a poor mobile link.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB_MAX_SIDE = 256
JPEG_QUALITY = 80
HEATMAP_ALPHA = 0.45


def _encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _grey_uint8(model_input: np.ndarray) -> np.ndarray:
    grey = np.asarray(model_input, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey[:, :, 0]
    grey = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w = grey.shape
    scale = THUMB_MAX_SIDE / max(h, w)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return grey


def thumbnail_jpeg(model_input: np.ndarray) -> bytes:
    """model_input: the preprocessed (H, W, 1) float image in [0, 1]."""
    return _encode(_grey_uint8(model_input))


def abnormal_map(cam: np.ndarray, probabilities: list[float], normal_index: int) -> np.ndarray | None:
    """Class activation maps (h, w, n_classes, logit units) -> one map in [0, 1] for "not normal", or None.

    The abnormality score is 1 - P(normal), which depends on each abnormal class's logit minus the
    normal one; so the map is sum_c p_c * (cam_c - cam_normal) over the abnormal classes, weighted
    by their probabilities, keeping only the positive evidence.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 3 or cam.shape[-1] != len(probabilities):
        return None
    weights = np.asarray(probabilities, dtype=np.float32).copy()
    weights[normal_index] = 0.0
    if weights.sum() <= 0:
        return None
    evidence = cam - cam[:, :, normal_index:normal_index + 1]
    combined = np.maximum(evidence @ (weights / weights.sum()), 0.0)
    peak = float(combined.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    return combined / peak


def heatmap_jpeg(model_input: np.ndarray, cam: np.ndarray | None, probabilities: list[float],
                 normal_index: int) -> tuple[bytes | None, str]:
    """(JPEG of the abnormality map over the thumbnail, or None; a note saying why when None)."""
    if cam is None:
        return None, "this model has no 'cam' output"
    heat = abnormal_map(cam, probabilities, normal_index)
    if heat is None:
        return None, "the class activation maps show no evidence for an abnormal class in this exam"
    grey = _grey_uint8(model_input)
    heat = cv2.resize(heat, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(base, 1.0 - HEATMAP_ALPHA, colour, HEATMAP_ALPHA, 0.0)
    return _encode(blended), "evidence for the abnormal classes (class activation map)"
