"""Score a labelled folder with a .tflite model: `cxr-edge eval` and `cxr-edge calibrate`.

Images go through exactly the screening path (decode -> preprocess -> interpreter); labels come
from edge.datasets, so folder names and aliases mean the same as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .datasets import Sample
from .decision import abnormality_scores
from .decode import load_image
from .errors import CxrError, ExitCode
from .gate import gate_for
from .groups import AGE_RULE, CHILD_MAX_AGE, age_group, breakdown
from .metadata import NORMAL_CLASS
from .metrics import classification_report, screening_metrics, threshold_for_sensitivity, wilson_interval
from .preprocess import preprocess
from .review.log import NOTICE
from .runtime import TFLiteModel

MIN_PER_GROUP = 60  # below this many normal or abnormal images a site threshold is a guess
MIN_EVAL_PER_GROUP = 30  # below this many, eval's metrics say little (intervals wide or degenerate)


@dataclass
class ScoredSet:
    labels: list[str] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # the scored ones, for the per-source breakdown
    failed: list[dict] = field(default_factory=list)  # images that could not be read: never scored
    gate: dict = field(default_factory=dict)  # the input gate's identity and counts (refused, corrected, reasons)

    @property
    def is_abnormal(self) -> np.ndarray:
        return np.array([label != NORMAL_CLASS for label in self.labels], dtype=bool)

    def abnormality(self, model: TFLiteModel) -> np.ndarray:
        return abnormality_scores(np.stack(self.probabilities), model.metadata.normal_index)


def score_samples(model: TFLiteModel, samples: list[Sample], on_step=None, allow_any_view: bool = False) -> ScoredSet:
    scored = ScoredSet()
    spec = model.metadata.preprocessing
    gate = gate_for(model)
    if gate is not None:
        scored.gate = {**gate.identity, "checked": 0, "refused": 0, "corrected": 0, "reasons": {}}
    for sample in samples:
        try:
            image = load_image(sample.path, allow_any_view=True)
        except CxrError as exc:
            scored.failed.append({"file": str(sample.path), "reason_code": exc.reason, "reason": str(exc)})
        else:
            pixels = _gated(gate, image.pixels, str(sample.path), scored, allow_any_view)
            if pixels is None:
                if on_step:
                    on_step()
                continue
            scored.probabilities.append(model.predict(preprocess(pixels, spec)).probabilities)
            scored.labels.append(sample.label)
            scored.files.append(str(sample.path))
            scored.samples.append(sample)
        if on_step:
            on_step()
    if not scored.labels:
        raise CxrError("no readable labelled image was found to score", code=ExitCode.DATA, reason="empty_dataset")
    return scored


def _gated(gate, pixels: np.ndarray, name: str, scored: ScoredSet, allow_any_view: bool) -> np.ndarray | None:
    """The pixels to score (corrected by the gate when it is sure), or None when the gate refuses the image."""
    if gate is None:
        return pixels
    checked = gate.check(pixels, name, allow_any_view=allow_any_view)
    counts = scored.gate
    counts["checked"] += 1
    counts["corrected"] += checked.verdict == "corrected"
    if checked.refused:
        counts["refused"] += 1
        counts["reasons"][checked.reason_code] = counts["reasons"].get(checked.reason_code, 0) + 1
        scored.failed.append({"file": name, "reason_code": checked.reason_code, "reason": checked.reason,
                              "gate": checked.to_json()})
        return None
    return checked.pixels


def evaluation_report(model: TFLiteModel, scored: ScoredSet, threshold: float, threshold_source: str) -> dict:
    classes = model.metadata.classes
    report = classification_report(scored.labels, np.stack(scored.probabilities), classes)
    screening = screening_metrics(scored.is_abnormal, scored.abnormality(model), threshold)
    screening["threshold_source"] = threshold_source
    y = np.array([classes.index(label) for label in scored.labels])
    groups = breakdown(scored.samples, y, np.stack(scored.probabilities), classes, threshold)
    n_abnormal, n_normal = int(scored.is_abnormal.sum()), int((~scored.is_abnormal).sum())
    warnings = []
    if min(n_abnormal, n_normal) < MIN_EVAL_PER_GROUP:
        warnings.append(f"only {n_abnormal} abnormal and {n_normal} normal images (want at least "
                        f"{MIN_EVAL_PER_GROUP} of each): these metrics and their intervals are too uncertain "
                        "to judge or compare models")
    return {**report, "screening": screening, "failed": scored.failed, "warnings": warnings,
            "model": model.identity, **groups, "gate": scored.gate or None, "notice": NOTICE}


def calibrate(model: TFLiteModel, scored: ScoredSet, target: float) -> dict:
    """Threshold reaching `target` sensitivity on this site's images, with what it costs."""
    return calibrate_scores(model, scored.is_abnormal, scored.abnormality(model), target)


def calibrate_scores(model: TFLiteModel, y: np.ndarray, score: np.ndarray, target: float,
                     warnings: list[str] | None = None) -> dict:
    """Threshold reaching `target` sensitivity on these labels (True = abnormal) and this model's scores;
    `warnings` the caller already has (each makes the threshold too uncertain to store without --force)."""
    n_abnormal, n_normal = int(y.sum()), int((~y).sum())
    if n_abnormal == 0 or n_normal == 0:
        missing = "abnormal" if n_abnormal == 0 else "normal"
        raise CxrError(f"calibration needs both normal and abnormal images; found no {missing} ones",
                       code=ExitCode.DATA, reason="one_class_only")
    threshold = threshold_for_sensitivity(y, score, target)
    metrics = screening_metrics(y, score, threshold)
    warnings = list(warnings or [])
    if n_abnormal < MIN_PER_GROUP or n_normal < MIN_PER_GROUP:
        warnings.append(f"only {n_abnormal} abnormal and {n_normal} normal images (want at least {MIN_PER_GROUP} "
                        "of each): this threshold is too uncertain to trust; add images and calibrate again")
    low = wilson_interval(metrics["tp"], metrics["tp"] + metrics["fn"])
    if not warnings and low is not None and low[0] < target - 0.05:  # one warning, not two, for one problem
        warnings.append(f"the 95% interval of the sensitivity reached goes down to {low[0]:.3f}, well below "
                        f"the {target:.2f} asked for")
    return {
        "threshold": threshold, "target_sensitivity": target,
        "sensitivity": metrics["sensitivity"], "specificity": metrics["specificity"],
        "ci95": metrics["ci95"], "n_abnormal": n_abnormal, "n_normal": n_normal, "auc": metrics["auc"],
        "warnings": warnings, "model": model.identity,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "notice": NOTICE,
    }


def by_age_report(routes, samples: list[Sample], on_step=None, allow_any_view: bool = False) -> dict:
    """`eval --by-age`: each labelled image scored by the model a --by-age station would give it (edge.routing),
    at that model's threshold; screening metrics per model and for all decisions together. An image's age is
    its dataset's age column, else the data README's age group (edge.groups.age_group: a child goes to the model
    for age 0, an adult to the one for age 15)."""
    parts: dict[int, list[Sample]] = {}
    for sample in samples:
        age = sample.age if sample.age is not None else (0.0 if age_group(sample) == "child" else CHILD_MAX_AGE)
        parts.setdefault(routes.routes.index(routes.for_age(age)), []).append(sample)
    out, is_abnormal, margins, failed = [], [], [], []
    for index, part in sorted(parts.items()):
        route = routes.routes[index]
        scored = score_samples(route.model, part, on_step=on_step, allow_any_view=allow_any_view)
        score = scored.abnormality(route.model)
        screening = screening_metrics(scored.is_abnormal, score, route.threshold)
        by_source = {name: screening_metrics(scored.is_abnormal[mask], score[mask], route.threshold)
                     for name in sorted({s.dataset for s in scored.samples})
                     for mask in [np.array([s.dataset == name for s in scored.samples])]}
        out.append({"model": route.model.identity, "ages": route.model.metadata.ages,
                    "threshold_source": route.threshold_source, "screening": screening, "by_source": by_source,
                    "gate": scored.gate or None})
        is_abnormal.extend(scored.is_abnormal.tolist())
        margins.extend((score - route.threshold).tolist())
        failed.extend(scored.failed)
    together = screening_metrics(np.array(is_abnormal), np.array(margins), 0.0)
    together.update(threshold=None, auc=None)  # each part at its own model's threshold; scores do not pool
    together["ci95"]["auc"] = None
    return {"by_age_routing": out, "screening": together, "n": len(is_abnormal), "failed": failed,
            "age_rule": AGE_RULE + "; each image goes to the model whose stated ages cover it",
            "notice": NOTICE}
