"""Choose a .tflite file's decision threshold on validation images with that file itself, and store it.

Pruning and int8 conversion shift the score distribution, so the threshold training chose for the
Keras model does not carry over: a threshold must be chosen with the exact file that ships.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import CxrError, ExitCode
from edge.evaluation import score_samples
from edge.metadata import read_model_file
from edge.metrics import (MIN_SOURCE_ABNORMAL, per_source_wording, screening_metrics, threshold_for_sensitivity,
                          threshold_for_sensitivity_in_groups)
from edge.review.log import NOTICE
from edge.runtime import TFLiteModel

from .data import find_samples
from .tflite_metadata import embed_metadata


def choose_threshold(tflite: Path, data: list[Path], *, split: str, sensitivity: float, out: Path,
                     aliases: list[str] | None = None, splits_csv: Path | None = None, per_source: bool = False,
                     min_abnormal: int = MIN_SOURCE_ABNORMAL) -> dict:
    """The highest threshold reaching `sensitivity` on `split`; with per_source, in every source that has at
    least `min_abnormal` abnormal images there too (a pooled sensitivity can hide a source whose films all
    score low: the largest source sets a pooled threshold)."""
    model = TFLiteModel(tflite)
    samples = [s for s in find_samples(data, model.metadata.classes, aliases, splits_csv) if s.split == split]
    if not samples:
        raise CxrError(f"no image of split {split!r} in {', '.join(map(str, data))} (pass the run's splits.csv "
                       "with --splits)", code=ExitCode.DATA, reason="empty_split")
    scored = score_samples(model, samples)
    y, score = scored.is_abnormal, scored.abnormality(model)
    sources = np.array([str(s.dataset) for s in scored.samples])
    if per_source:
        threshold, counted = threshold_for_sensitivity_in_groups(y, score, sources, sensitivity, min_abnormal)
    else:
        threshold, counted = threshold_for_sensitivity(y, score, sensitivity), []
    metrics = screening_metrics(y, score, threshold)
    by_source = {src: screening_metrics(y[sources == src], score[sources == src], threshold)
                 for src in sorted(set(sources))}
    data_bytes, metadata = read_model_file(tflite)
    metadata.threshold = threshold
    where = per_source_wording(counted, min_abnormal) if per_source else ""
    metadata.threshold_rule = (f"highest threshold on abnormality = 1 - P(normal) whose sensitivity on the {split} "
                               f"split ({metrics['n_abnormal']} abnormal, {metrics['n_normal']} normal images) is >= "
                               f"{sensitivity:g}{where}, chosen with this .tflite file itself")
    metadata.metrics = {**metadata.metrics, f"{split}_tflite_screening": metrics}
    out.write_bytes(embed_metadata(data_bytes, metadata))
    return {"file": str(out), "source": str(tflite), "threshold": threshold, "rule": metadata.threshold_rule,
            "screening": metrics, "by_source": by_source, "failed": scored.failed, "model": TFLiteModel(out).identity,
            "notice": NOTICE}
