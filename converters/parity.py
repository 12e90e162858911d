"""`converters parity`: run the Keras model and its .tflite on the same images and compare.

Both see exactly the same tensors (edge.decode + edge.preprocess with the spec in the .tflite's
metadata); the .tflite runs through edge.runtime, the code the station runs, and its abnormality
is computed by edge.decision, so the numbers are the ones a station would produce.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from edge.decision import decide
from edge.errors import CxrError, ExitCode
from edge.metadata import file_sha256
from edge.metrics import classification_report, screening_metrics
from edge.review.log import NOTICE
from edge.runtime import TFLiteModel

from .data import ImageSet, find_samples, load_images, run_splits_file, stratified_sample
from .sources import check_model_matches, load_keras_model

COMPARED = ("accuracy", "sensitivity", "specificity", "auc")
CHECKED = ("accuracy", "auc")
SCREENING = ("sensitivity", "specificity")
BORDERLINE = 0.01  # abnormality this close to the threshold: a decision that any rounding can flip


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What parity fails on. Sensitivity and specificity deltas are always reported; they fail the
    check only with check_screening, because the threshold cxr-train picks is a validation image's own
    score, so that image's decision flips on a 1e-7 difference and one flip is 1/n_abnormal."""

    min_agreement: float  # top-1 class agreement
    max_delta: float  # how far tflite may fall below keras in accuracy and AUC (and sens./spec. if checked);
    # one-sided: a .tflite that scores better than its Keras model is no harm and never fails
    max_prob_diff: float | None = None  # largest probability difference on any image (float modes only)
    check_screening: bool = False

    def describe(self) -> str:
        """One readable line, e.g. 'top-1 agreement >= 0.99; accuracy, auc at most 0.01 below Keras'."""
        metrics = ", ".join(CHECKED + (SCREENING if self.check_screening else ()))
        parts = [f"top-1 agreement >= {self.min_agreement:g}",
                 f"{metrics} at most {self.max_delta:g} below Keras" if self.max_delta else
                 f"{metrics} not below Keras"]
        if self.max_prob_diff is not None:
            parts.append(f"probability difference <= {self.max_prob_diff:g}")
        return "; ".join(parts)


TOLERANCES = {
    "float32": Tolerance(min_agreement=1.0, max_delta=0.0, max_prob_diff=1e-4),
    "float16": Tolerance(min_agreement=0.995, max_delta=0.005, max_prob_diff=0.01),
    "dynamic": Tolerance(min_agreement=0.99, max_delta=0.01),
    "int8": Tolerance(min_agreement=0.99, max_delta=0.01),
}


def tolerance_for(quantization: str, min_agreement: float | None = None, max_delta: float | None = None,
                  max_prob_diff: float | None = None, check_screening: bool = False) -> Tolerance:
    base = TOLERANCES.get(quantization.split("-")[0], TOLERANCES["int8"])
    return Tolerance(base.min_agreement if min_agreement is None else min_agreement,
                     base.max_delta if max_delta is None else max_delta,
                     base.max_prob_diff if max_prob_diff is None else max_prob_diff, check_screening)


def run_parity(keras_path: Path, tflite_path: Path, data: list[Path], *, aliases: list[str] | None = None,
               split: str | None = None, limit: int | None = None, seed: int = 0,
               tolerance: Tolerance | None = None, threads: int | None = None) -> dict:
    tflite = TFLiteModel(tflite_path, threads=threads)
    meta = tflite.metadata
    keras_model = load_keras_model(keras_path)
    check_model_matches(keras_model, meta, Path(keras_path))
    images = parity_images(data, meta, aliases, split, limit, seed, run_splits_file(Path(keras_path)))
    keras_out = keras_model.predict(images.images, batch_size=32, verbose=0)
    keras_probs = np.asarray(keras_out[0] if isinstance(keras_out, list) else keras_out, dtype=np.float64)
    tflite_probs = np.stack([tflite.predict(x).probabilities for x in images.images]).astype(np.float64)
    tolerance = tolerance or tolerance_for(meta.quantization)
    keras_sha = file_sha256(keras_path)
    report = compare(images, keras_probs, tflite_probs, meta, tolerance)
    report.update({
        "keras": {"file": str(keras_path), "sha256": keras_sha},
        "tflite": {"file": str(tflite_path), **tflite.identity, "quantization": meta.quantization,
                   "source_model_sha256": meta.source_model_sha256},
        "source_match": meta.source_model_sha256 == keras_sha,
        "data": [str(d) for d in data],
        "split": split or "all",
        "notice": NOTICE,
    })
    if not report["source_match"]:
        sys.stderr.write(f"converters: warning: {tflite_path} was not converted from {keras_path} "
                         "(source_model_sha256 differs)\n")
    return report


def parity_images(data, meta, aliases, split, limit, seed, splits_csv=None) -> ImageSet:
    samples = find_samples(data, meta.classes, aliases, splits_csv)
    if split:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise CxrError(f"no images in split {split!r} under {', '.join(map(str, data))}", code=ExitCode.DATA,
                           reason="no_labelled_images")
    return load_images(stratified_sample(samples, limit, seed), meta.preprocessing, meta.classes)


def abnormality(probs: np.ndarray, meta) -> np.ndarray:
    """1 - P(normal) exactly as the edge computes it (clipped and renormalised)."""
    return np.array([decide(p, meta, meta.threshold).abnormality for p in probs])


def model_metrics(labels: np.ndarray, probs: np.ndarray, meta) -> dict:
    report = classification_report(labels, probs, meta.classes)
    screening = screening_metrics(labels != meta.normal_index, abnormality(probs, meta), meta.threshold)
    return {"accuracy": report["accuracy"], "sensitivity": screening["sensitivity"],
            "specificity": screening["specificity"], "auc": screening["auc"],
            "refer_rate": screening["refer_rate"], "threshold": meta.threshold}


def compare(images: ImageSet, keras_probs: np.ndarray, tflite_probs: np.ndarray, meta,
            tolerance: Tolerance) -> dict:
    keras = model_metrics(images.labels, keras_probs, meta)
    lite = model_metrics(images.labels, tflite_probs, meta)
    diff = np.abs(keras_probs - tflite_probs)
    agreement = float(np.mean(keras_probs.argmax(1) == tflite_probs.argmax(1)))
    keras_abn, lite_abn = abnormality(keras_probs, meta), abnormality(tflite_probs, meta)
    keras_refer, lite_refer = keras_abn >= meta.threshold, lite_abn >= meta.threshold
    flipped = np.flatnonzero(keras_refer != lite_refer)
    # the conversion's noise, measured on these images: the 95th percentile of each image's largest
    # probability difference. A top-1 flip is borderline when Keras's own margin between its two top
    # classes is within twice that (each of the two probabilities may move by the noise).
    noise = float(np.percentile(diff.max(axis=1), 95))
    ranked = np.sort(keras_probs, axis=1)
    margins = ranked[:, -1] - ranked[:, -2]
    top1_flips = np.flatnonzero(keras_probs.argmax(1) != tflite_probs.argmax(1))
    deltas = {k: _delta(lite[k], keras[k]) for k in COMPARED}
    checked = CHECKED + (SCREENING if tolerance.check_screening else ())
    failures = []
    if agreement < tolerance.min_agreement:
        failures.append(f"top-1 agreement {agreement:.4f} < {tolerance.min_agreement}")
    for name in checked:
        delta = deltas[name]
        if delta is not None and delta < -(tolerance.max_delta + 1e-12):  # only a loss counts
            failures.append(f"{name} {-delta:.4f} below Keras, more than the {tolerance.max_delta:g} allowed")
    if tolerance.max_prob_diff is not None and float(diff.max()) > tolerance.max_prob_diff:
        failures.append(f"max probability difference {float(diff.max()):.6f} > {tolerance.max_prob_diff}")
    return {
        "images": len(images), "per_class": images.summary()["per_class"], "skipped": images.skipped,
        "agreement": round(agreement, 6),
        "decision_agreement": round(float(np.mean(keras_refer == lite_refer)), 6),
        "decision_flips": [{"file": images.paths[i], "keras_abnormality": round(float(keras_abn[i]), 6),
                            "tflite_abnormality": round(float(lite_abn[i]), 6),
                            "borderline": bool(abs(keras_abn[i] - meta.threshold) < BORDERLINE)} for i in flipped],
        "top1_flips": [{"file": images.paths[i], "keras_class": meta.classes[int(keras_probs[i].argmax())],
                        "tflite_class": meta.classes[int(tflite_probs[i].argmax())],
                        "keras_margin": round(float(margins[i]), 6),
                        "borderline": bool(margins[i] <= 2 * noise)} for i in top1_flips],
        "p95_abs_prob_diff": round(noise, 6),
        "checked": list(checked),
        "max_abs_prob_diff": round(float(diff.max()), 6), "mean_abs_prob_diff": round(float(diff.mean()), 6),
        "keras_metrics": keras, "tflite_metrics": lite, "deltas": deltas,
        "tolerance": dataclasses.asdict(tolerance), "tolerance_text": tolerance.describe(),
        "failures": failures, "passed": not failures,
    }


def _delta(a, b) -> float | None:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return None
    return round(float(a) - float(b), 6)
