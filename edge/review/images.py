"""The review image of each screened exam: the film as read and, when the model has a `cam` output, its heatmap.

Film: the decoded grey image (DICOM after its modality LUT, VOI LUT/window and MONOCHROME1
inversion; PNG/JPEG as stored), not the model's small input. Long side scaled down to 1024 px
(never up), grey JPEG quality 80. Only pixels are drawn: no DICOM tag (name, id, date) is ever
burnt in; text already burnt into the pixels by the modality stays, as on the film itself.

Heatmap: the evidence for the abnormal classes (see `abnormal_map`), mapped back onto the film
(through the model's resize: stretched, or letterboxed, in which case the padding is cut off),
as a small RGBA WebP (long side 160 px, lossy quality 80: about 5 kB, a PNG was 20 kB) whose alpha is the evidence: the page lays it over the
film and lets the browser scale it, so it costs a few kB and hides nothing where there is no
evidence. It shows where the model looked, not where disease is.

`review_images` is the one function `screen` and `watch` both call (through screen_file's
`on_screened` hook); it never raises for a picture problem: the result matters more than its picture.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

FILM_LONG_SIDE = 1024
FILM_QUALITY = 80
HEATMAP_LONG_SIDE = 160
HEATMAP_QUALITY = 80
HEATMAP_MAX_ALPHA = 0.7


class ReviewImages(NamedTuple):
    film: bytes  # grey JPEG
    heatmap: bytes | None  # RGBA WebP, same aspect as the film, to lay over it
    heatmap_note: str


def _scaled(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) with the long side at most `long_side`, aspect kept."""
    h, w = shape
    scale = min(1.0, long_side / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def film_jpeg(pixels: np.ndarray) -> bytes:
    """Grey float image in [0, 1] (any size) -> grey JPEG, long side <= FILM_LONG_SIDE."""
    grey = np.asarray(pixels, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey[:, :, 0]
    size = _scaled(grey.shape, FILM_LONG_SIDE)
    if size != (grey.shape[1], grey.shape[0]):
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, FILM_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def abnormal_map(cam: np.ndarray, probabilities, normal_index: int) -> np.ndarray | None:
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


def onto_film(heat: np.ndarray, spec, film_shape: tuple[int, int]) -> np.ndarray:
    """A map over the model's input (any resolution) -> the same map over the film's frame.

    `stretch` covers the whole film; `letterbox` padded the film, so the padding is cut off first."""
    if spec.resize == "letterbox":
        heat = cv2.resize(heat, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        h, w = film_shape
        scale = min(spec.height / h, spec.width / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (spec.height - new_h) // 2, (spec.width - new_w) // 2
        heat = heat[top:top + new_h, left:left + new_w]
    return cv2.resize(heat, _scaled(film_shape, HEATMAP_LONG_SIDE), interpolation=cv2.INTER_LINEAR)


def heatmap_webp(heat: np.ndarray) -> bytes:
    """A map in [0, 1] -> RGBA WebP: JET colours, alpha = evidence (transparent where there is none)."""
    level = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)
    alpha = np.clip(heat * HEATMAP_MAX_ALPHA * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".webp", np.dstack([colour, alpha]), [cv2.IMWRITE_WEBP_QUALITY, HEATMAP_QUALITY])
    if not ok:
        raise ValueError("WebP encoding failed")
    return data.tobytes()


def heatmap_for(prediction, decision, metadata, film_shape: tuple[int, int]) -> tuple[bytes | None, str]:
    """(WebP or None, a note saying what it shows or why there is none)."""
    cam = prediction.outputs.get("cam")
    if cam is None:
        return None, "this model has no 'cam' output"
    probabilities = [decision.probabilities[c] for c in metadata.classes]
    heat = abnormal_map(cam, probabilities, metadata.normal_index)
    if heat is None:
        return None, "the class activation maps show no evidence for an abnormal class in this exam"
    return (heatmap_webp(onto_film(heat, metadata.preprocessing, film_shape)),
            "evidence for the abnormal classes (class activation map): where the model looked, not a finding")


def review_images(image, tensor, prediction, decision, metadata) -> ReviewImages | None:
    """screen_file's `on_screened` hook: the film and heatmap of one screened exam, or None if the film
    cannot be drawn. `image` is the DecodedImage, `tensor` the model input (unused: the film is drawn
    from the decoded image, not from the model's small input)."""
    try:
        film = film_jpeg(image.pixels)
    except (ValueError, cv2.error):
        return None
    try:
        heatmap, note = heatmap_for(prediction, decision, metadata, image.pixels.shape[:2])
    except (ValueError, cv2.error) as exc:
        heatmap, note = None, f"the heatmap could not be drawn ({exc})"
    return ReviewImages(film, heatmap, note)
