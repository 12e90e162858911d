"""Classification and screening metrics in numpy only (no scikit-learn, no TensorFlow).

Used by the training report, the converters' parity checks and the edge's eval/calibrate, so
every tool computes a number the same way. Conventions:
- abnormality = 1 - P(normal); the screening decision is "refer" when abnormality >= threshold;
- "positive" means abnormal (refer); sensitivity = recall of abnormal images;
- an undefined value (no positives, no negatives, 0/0) is None in dicts and NaN from roc_auc.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None or precision + recall == 0:
        return None if precision is None or recall is None else 0.0
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """95% Wilson score interval of a proportion; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _binary(y, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({score.shape[0]}) differ in length")
    return y, score


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j < len(x) and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[order[i:j]] = 0.5 * (i + j - 1) + 1  # ties share their mean rank
        i = j
    return ranks


def roc_auc(y, score) -> float:
    """Area under the ROC curve (ties count half); NaN when only one class is present."""
    return _auc_delong(*_binary(y, score))[0]


def _auc_delong(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(AUC, its variance) by DeLong's method with the fast midrank algorithm (Sun & Xu 2014)."""
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    tx, ty, tz = _midranks(pos), _midranks(neg), _midranks(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[m:] - ty) / m  # ... of the negatives
    var = (np.var(v01, ddof=1) / m if m > 1 else 0.0) + (np.var(v10, ddof=1) / n if n > 1 else 0.0)
    return float(auc), float(var)


def auc_interval(y, score) -> list[float] | None:
    """95% CI of the AUC (DeLong, normal approximation, clipped to [0, 1])."""
    auc, var = _auc_delong(*_binary(y, score))
    if math.isnan(auc):
        return None
    half = Z95 * math.sqrt(max(var, 0.0))
    return [max(0.0, auc - half), min(1.0, auc + half)]


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; the first is +inf (nothing referred)."""
    y, score = _binary(y, score)
    order = np.argsort(-score, kind="mergesort")
    y, score = y[order], score[order]
    last_of_tie = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1] if len(score) else np.array([], int)
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 0), int((~y).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.full(len(tps), np.nan)]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.full(len(fps), np.nan)]
    return fpr, tpr, np.r_[np.inf, score[last_of_tie]]


def confusion_counts(y, score, threshold: float) -> dict:
    y, score = _binary(y, score)
    pred = score >= threshold
    return {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()),
            "tn": int((~pred & ~y).sum()), "fn": int((~pred & y).sum())}


def _rates(c: dict) -> dict:
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"sensitivity": recall, "specificity": _ratio(tn, tn + fp), "precision": precision,
            "f1": _f1(precision, recall), "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
            "refer_rate": _ratio(tp + fp, tp + fp + tn + fn)}


def threshold_for_sensitivity(y, score, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity (abnormal images with score >= threshold) >= target."""
    y, score = _binary(y, score)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity {target} is outside (0, 1]")
    pos = np.sort(score[y])[::-1]
    if len(pos) == 0:
        raise ValueError("no abnormal images: a sensitivity target cannot be met")
    needed = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[needed - 1])


MIN_SOURCE_ABNORMAL = 30  # fewer abnormal images in a source: its sensitivity is too noisy to set a threshold


def threshold_for_sensitivity_in_groups(y, score, groups, target: float = 0.95,
                                        min_abnormal: int = MIN_SOURCE_ABNORMAL) -> tuple[float, list[str]]:
    """The highest threshold whose sensitivity >= target pooled and inside each group (e.g. source) holding at
    least min_abnormal abnormal images; also the groups that counted. A pooled sensitivity can hide a group
    whose abnormal images all score low, since the largest group sets a pooled threshold."""
    y, score = _binary(y, score)
    groups = np.asarray([str(g) for g in groups])
    threshold = threshold_for_sensitivity(y, score, target)
    counted = sorted(g for g in set(groups.tolist()) if y[groups == g].sum() >= min_abnormal)
    for g in counted:
        threshold = min(threshold, threshold_for_sensitivity(y[groups == g], score[groups == g], target))
    return threshold, counted


def per_source_wording(counted: list[str], min_abnormal: int = MIN_SOURCE_ABNORMAL) -> str:
    """How a threshold rule names the per-source target (threshold_for_sensitivity_in_groups), for its text."""
    if counted:
        return f" overall and in each source with at least {min_abnormal} abnormal images ({', '.join(counted)})"
    return f" (no source had the {min_abnormal} abnormal images a per-source target needs)"


def threshold_table(y, score, thresholds=None) -> list[dict]:
    """Counts and rates at each threshold (default 0.05, 0.10, ... 0.95)."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.05, 0.951, 0.05), 2)
    rows = []
    for t in thresholds:
        counts = confusion_counts(y, score, float(t))
        rows.append({"threshold": float(t), **counts, **_rates(counts)})
    return rows


def screening_metrics(is_abnormal, abnormality, threshold: float) -> dict:
    """Normal vs abnormal at one threshold, with 95% CIs (Wilson for proportions, DeLong for AUC)."""
    y, score = _binary(is_abnormal, abnormality)
    counts = confusion_counts(y, score, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    auc = roc_auc(y, score)
    out = {"threshold": float(threshold), "n": int(len(y)), "n_abnormal": int(y.sum()),
           "n_normal": int((~y).sum()), **counts, **_rates(counts),
           "auc": None if math.isnan(auc) else auc}
    out["ci95"] = {
        "sensitivity": wilson_interval(tp, tp + fn),
        "specificity": wilson_interval(tn, tn + fp),
        "precision": wilson_interval(tp, tp + fp),
        "accuracy": wilson_interval(tp + tn, len(y)),
        "auc": auc_interval(y, score),
        "method": "Wilson score interval for proportions; DeLong for AUC",
    }
    return out


def _class_indices(y_true, classes) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    if y.dtype.kind in "US" or y.dtype == object:
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            return np.array([lookup[str(v)] for v in y], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"label {exc} is not one of {list(classes)}") from None
    return y.astype(np.int64)


def classification_report(y_true, probs, classes) -> dict:
    """Multi-class report; y_true as class indices or names, probs (n, len(classes)).

    confusion[i][j] = images of true class i predicted as class j (argmax).
    """
    classes = list(classes)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    y = _class_indices(y_true, classes)
    if len(y) != len(probs):
        raise ValueError(f"labels ({len(y)}) and predictions ({len(probs)}) differ in length")
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        fn = int(confusion[i].sum() - tp)
        fp = int(confusion[:, i].sum() - tp)
        tn = int(confusion.sum() - tp - fn - fp)
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        auc = roc_auc(y == i, probs[:, i]) if len(y) else float("nan")
        per_class[name] = {"precision": precision, "recall": recall, "specificity": _ratio(tn, tn + fp),
                           "f1": _f1(precision, recall), "auc": None if math.isnan(auc) else auc,
                           "support": tp + fn, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    f1s = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    return {
        "classes": classes,
        "n": int(len(y)),
        "accuracy": _ratio(int(np.trace(confusion)), len(y)),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }
