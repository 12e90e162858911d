"""The input gate: is this decoded image a usable, upright frontal chest radiograph?

Step three of the image flow (file -> decode -> gate -> preprocess -> interpreter -> decision -> log).
Two parts, both TF-free:
- cheap numeric checks on the pixels (blank, saturated, no usable dynamic range) -> `low_quality`;
- a small int8 CNN (models/cxr-gate.tflite, built by `cxr-train gate`, see docs/gate.md) with classes
  CLASSES. A film it is sure is only turned by 90/180/270 degrees or inverted (negative) is corrected and
  looked at again; anything else that is not a confident frontal chest film is refused with a reason code:
  `not_chest_xray`, `rotated`, `inverted` (or `lateral_view` from the DICOM tags, see edge/decode.py).

The gate is its own .tflite file with its own name, version and sha256 (recorded in every output). It is
found beside the classifier as `cxr-gate.tflite`, or named by $CXR_EDGE_GATE; a classifier whose metadata
pins a gate (`gate: {"file", "sha256"}`) refuses to run with any other gate file. `--any-view` overrides it:
the gate still scores the image, but neither refuses nor corrects.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import CxrError, ExitCode
from .metadata import file_sha256
from .preprocess import preprocess
from .runtime import TFLiteModel

GATE_FILE = "cxr-gate.tflite"
GATE_ENV = "CXR_EDGE_GATE"
FRONTAL = "frontal"
# rotated_K: the film shows the upright chest turned K degrees counter-clockwise; np.rot90(pixels, -K/90) fixes it.
CLASSES = ("frontal", "rotated_90", "rotated_180", "rotated_270", "inverted", "not_cxr")
REASONS = {"rotated_90": "rotated", "rotated_180": "rotated", "rotated_270": "rotated", "inverted": "inverted",
           "not_cxr": "not_chest_xray", "frontal": "not_chest_xray"}
MAX_CORRECTIONS = 2  # e.g. inverted, then rotated
DEFAULT_CORRECT_MIN = 0.9

# Numeric quality limits, on a <=256 px copy of the decoded image (values in [0, 1]).
MIN_STD = 0.03  # below: blank (one flat grey)
MIN_RANGE = 0.10  # 1st to 99th percentile below this: no usable dynamic range
MAX_WHITE = 0.60  # share of pixels >= 0.99 above this: saturated (overexposed, burnt out)
MAX_BLACK = 0.85  # share of pixels <= 0.01 above this: almost nothing but black


@dataclass
class GateResult:
    verdict: str  # pass | corrected | refused | overridden
    identity: dict  # the gate file's name, version, sha256
    score: float | None = None  # P(frontal) of the image that goes on to the classifier (after corrections)
    scores: dict = field(default_factory=dict)  # every class, first look at the image as it came
    corrected: list = field(default_factory=list)  # e.g. ["inverted", "rotated_90"]
    reason_code: str | None = None
    reason: str | None = None
    quality: dict = field(default_factory=dict)
    latency_ms: float = 0.0
    pixels: np.ndarray | None = None  # what to screen (corrected when verdict == "corrected")

    @property
    def refused(self) -> bool:
        return self.verdict == "refused"

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "score": _round(self.score),
                "scores": {k: _round(v) for k, v in self.scores.items()}, "corrected": self.corrected,
                "reason_code": self.reason_code, "quality": self.quality, "latency_ms": round(self.latency_ms, 3),
                **{f"model_{k}": v for k, v in self.identity.items()}}


def _round(value):
    return None if value is None else round(float(value), 4)


def quality_problem(pixels: np.ndarray) -> tuple[str | None, dict]:
    """(what is wrong in words or None, the measurements) for a decoded grey image in [0, 1]."""
    h, w = pixels.shape[:2]
    scale = 256.0 / max(h, w)
    small = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else np.asarray(pixels, np.float32)
    p1, p99 = np.percentile(small, [1, 99])
    q = {"std": round(float(small.std()), 4), "range": round(float(p99 - p1), 4),
         "white": round(float((small >= 0.99).mean()), 4), "black": round(float((small <= 0.01).mean()), 4)}
    if q["std"] < MIN_STD:
        return f"blank image (pixel spread {q['std']:.3f} < {MIN_STD})", q
    if q["white"] > MAX_WHITE:
        return f"saturated: {q['white']:.0%} of the image is pure white", q
    if q["black"] > MAX_BLACK:
        return f"{q['black']:.0%} of the image is pure black", q
    if q["range"] < MIN_RANGE:
        return f"no usable dynamic range (1st-99th percentile spread {q['range']:.3f} < {MIN_RANGE})", q
    return None, q


def correct(pixels: np.ndarray, kind: str) -> np.ndarray:
    if kind == "inverted":
        return 1.0 - pixels
    quarter_turns = int(kind.split("_")[1]) // 90
    return np.ascontiguousarray(np.rot90(pixels, -quarter_turns))


class Gate:
    """One loaded gate model and its decision rule (thresholds stored in its metadata)."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        self.model = TFLiteModel(path, threads=threads)
        meta = self.model.metadata
        if meta.task != "gate" or tuple(meta.classes) != CLASSES:
            raise CxrError(f"{path}: not a cxr-edge input gate (task {meta.task!r}, classes {meta.classes})",
                           code=ExitCode.MODEL, reason="bad_gate")
        self.accept = float(meta.threshold)
        self.correct_min = float(meta.gate.get("correct", DEFAULT_CORRECT_MIN))

    @property
    def identity(self) -> dict:
        return self.model.identity

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.predict(preprocess(pixels, self.model.metadata.preprocessing)).probabilities

    def check(self, pixels: np.ndarray, name: str = "image", *, allow_any_view: bool = False) -> GateResult:
        start = time.perf_counter()
        result = self._check(np.asarray(pixels, np.float32), name)
        result.latency_ms = (time.perf_counter() - start) * 1000.0
        if allow_any_view and result.verdict != "pass":
            result.verdict, result.corrected, result.pixels = "overridden", [], np.asarray(pixels, np.float32)
        return result

    def _check(self, pixels: np.ndarray, name: str) -> GateResult:
        problem, quality = quality_problem(pixels)
        if problem:
            return GateResult("refused", self.identity, quality=quality, reason_code="low_quality", pixels=pixels,
                              reason=f"{name}: image not usable ({problem}); use --any-view to override")
        probs = self.scores(pixels)
        first = dict(zip(CLASSES, map(float, probs)))
        corrected: list[str] = []
        current = pixels
        for _ in range(MAX_CORRECTIONS + 1):
            top = CLASSES[int(np.argmax(probs))]
            if top == FRONTAL and probs[0] >= self.accept:
                return GateResult("corrected" if corrected else "pass", self.identity, score=float(probs[0]),
                                  scores=first, corrected=corrected, quality=quality, pixels=current)
            if top == "not_cxr" or top == FRONTAL or probs.max() < self.correct_min or top in corrected \
                    or len(corrected) == MAX_CORRECTIONS:
                break
            corrected.append(top)
            current = correct(current, top)
            probs = self.scores(current)
        return self._refusal(name, first, quality, pixels)

    def _refusal(self, name: str, first: dict, quality: dict, pixels: np.ndarray) -> GateResult:
        top = max(first, key=first.get)
        code = REASONS[top]
        what = {"rotated": f"the film is turned ({top.replace('_', ' ')} degrees)",
                "inverted": "the film is inverted (a negative: bone dark, air bright)",
                "not_chest_xray": "not a frontal chest radiograph"}[code]
        return GateResult("refused", self.identity, score=first[FRONTAL], scores=first, quality=quality,
                          reason_code=code, pixels=pixels,
                          reason=f"{name}: {what} (gate: {top} {first[top]:.2f}, frontal {first[FRONTAL]:.2f}); "
                                 "use --any-view to override")


_GATES: dict[tuple, Gate | None] = {}


def gate_for(model) -> Gate | None:
    """The gate that goes with this classifier (see the module doc), loaded once; None when there is none."""
    path, pinned = _gate_path(model)
    key = (str(path), getattr(model, "sha256", ""))
    if key not in _GATES:
        gate = Gate(path) if path is not None else None
        if gate is not None and pinned and gate.model.sha256 != pinned:
            raise CxrError(f"{path}: gate sha256 {gate.model.sha256[:12]} is not the one the model "
                           f"{model.metadata.name} pins ({pinned[:12]}); reinstall the pair", code=ExitCode.MODEL,
                           reason="gate_mismatch")
        _GATES[key] = gate
    return _GATES[key]


def _gate_path(model) -> tuple[Path | None, str]:
    pinned = model.metadata.gate or {}
    explicit = os.environ.get(GATE_ENV)
    if explicit:
        return Path(explicit), pinned.get("sha256", "")
    folder = Path(model.path).parent
    if pinned.get("file"):
        path = folder / pinned["file"]
        if not path.is_file():
            raise CxrError(f"{path}: the input gate that model {model.metadata.name} pins is missing",
                           code=ExitCode.MODEL, reason="gate_missing")
        return path, pinned.get("sha256", "")
    path = folder / GATE_FILE
    return (path, "") if path.is_file() else (None, "")


def gate_identity(path: str | Path) -> dict:
    """{"file", "sha256"}: what a classifier's metadata stores to pin its gate."""
    return {"file": Path(path).name, "sha256": file_sha256(path)}
