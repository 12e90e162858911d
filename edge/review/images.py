"""The review image of each screened exam: the film as read and, when the model has a `cam` output, its heatmap.

Film: the decoded grey image (DICOM after its modality LUT, VOI LUT/window and MONOCHROME1
inversion; PNG/JPEG as stored), not the model's small input. Long side scaled down to 1024 px
(never up), grey JPEG quality 80. Only pixels are drawn: no DICOM tag (name, id, date) is ever
burnt in; text already burnt into the pixels by the modality stays, as on the film itself.

Heatmap: the evidence for the abnormal classes (see `abnormal_map`), mapped back onto the film
through the model's preprocessing (border crop and margin when the spec has them, then stretched,
or letterboxed, in which case the padding is cut off),
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


def content_box(pixels: np.ndarray, spec) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of the film the model was given (edge.preprocess decides:
    border crop, lung crop, margin), so the heatmap lands where the model looked."""
    from ..preprocess import content_box as model_box

    return model_box(np.asarray(pixels, np.float32), spec)[0]


def onto_film(heat: np.ndarray, spec, pixels: np.ndarray, box=None) -> np.ndarray:
    """A map over the model's input (any resolution) -> the same map over the whole film, at heatmap size.

    The input was the film's content box (see content_box), stretched or letterboxed to the model's
    size: a letterbox's padding is cut off, and the map is placed over the content box (zero elsewhere).
    `box` is that box when the screening already found it (ScreenResult.crop["box"]): a lung crop's
    segmenter then runs once per exam, not twice."""
    top, bottom, left, right = box if box is not None else content_box(pixels, spec)
    h, w = bottom - top, right - left
    if spec.resize == "letterbox":
        heat = cv2.resize(heat, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        scale = min(spec.height / h, spec.width / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        y0, x0 = (spec.height - new_h) // 2, (spec.width - new_w) // 2
        heat = heat[y0:y0 + new_h, x0:x0 + new_w]
    full_w, full_h = _scaled(pixels.shape[:2], HEATMAP_LONG_SIDE)
    sy, sx = full_h / pixels.shape[0], full_w / pixels.shape[1]
    y0, y1 = round(top * sy), max(round(top * sy) + 1, round(bottom * sy))
    x0, x1 = round(left * sx), max(round(left * sx) + 1, round(right * sx))
    out = np.zeros((full_h, full_w), np.float32)
    out[y0:y1, x0:x1] = cv2.resize(heat, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def heatmap_webp(heat: np.ndarray) -> bytes:
    """A map in [0, 1] -> RGBA WebP: JET colours, alpha = evidence (transparent where there is none)."""
    level = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)
    alpha = np.clip(heat * HEATMAP_MAX_ALPHA * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".webp", np.dstack([colour, alpha]), [cv2.IMWRITE_WEBP_QUALITY, HEATMAP_QUALITY])
    if not ok:
        raise ValueError("WebP encoding failed")
    return data.tobytes()


def heatmap_for(prediction, decision, metadata, pixels: np.ndarray, box=None) -> tuple[bytes | None, str]:
    """(WebP or None, a note saying what it shows or why there is none)."""
    cam = prediction.outputs.get("cam")
    if cam is None:
        return None, "this model has no 'cam' output"
    probabilities = [decision.probabilities[c] for c in metadata.classes]
    heat = abnormal_map(cam, probabilities, metadata.normal_index)
    if heat is None:
        return None, "the class activation maps show no evidence for an abnormal class in this exam"
    return (heatmap_webp(onto_film(heat, metadata.preprocessing, pixels, box)),
            "evidence for the abnormal classes (class activation map): where the model looked, not a finding")


def review_images(image, tensor, prediction, decision, metadata, crop=None) -> ReviewImages | None:
    """screen_file's `on_screened` hook: the film and heatmap of one screened exam, or None if the film
    cannot be drawn. `image` is the DecodedImage, `tensor` the model input (unused: the film is drawn
    from the decoded image, not from the model's small input)."""
    try:
        film = film_jpeg(image.pixels)
    except (ValueError, cv2.error):
        return None
    try:
        heatmap, note = heatmap_for(prediction, decision, metadata, image.pixels, (crop or {}).get("box"))
    except (ValueError, cv2.error) as exc:
        heatmap, note = None, f"the heatmap could not be drawn ({exc})"
    return ReviewImages(film, heatmap, note)
