"""Metrics broken down by source, age group and view: a model is judged per hospital and per population,
not only on a pooled split. Used by `cxr-edge eval` and by every `cxr-train fit` report."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .metadata import NORMAL_CLASS
from .metrics import screening_metrics

# Age group of the sources whose images carry no age, from ../shared/data/README.md.
SOURCE_AGE_GROUP = {"kermany-pneumonia": "child"}
CHILD_LABELS_OF = {"covid19-3class": {"normal", "pneumonia"}}  # its Normal / Viral Pneumonia: Kermany's children
CHILD_MAX_AGE = 15.0
AGE_RULE = (f"age < {CHILD_MAX_AGE:g} years is child; where a source gives no ages, Kermany and covid19-3class "
            "Normal/Viral Pneumonia count as children and every other source as adults (data README)")


def age_group(sample) -> str:
    if sample.age is not None:
        return "child" if sample.age < CHILD_MAX_AGE else "adult"
    if sample.dataset in SOURCE_AGE_GROUP:
        return SOURCE_AGE_GROUP[sample.dataset]
    if sample.label in CHILD_LABELS_OF.get(sample.dataset, ()):
        return "child"
    return "adult"  # every other source in shared/data is adults (README); say so where it is used


def group_metrics(y, probs, classes, threshold: float, keys) -> dict:
    """{group: screening metrics at `threshold` (+ 3-class accuracy)} for each distinct key."""
    y, probs = np.asarray(y), np.asarray(probs)
    normal = list(classes).index(NORMAL_CLASS)
    score = 1.0 - probs[:, normal]
    out = {}
    keys = np.asarray(keys, dtype=object)
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        is_abnormal = y[mask] != normal
        m = screening_metrics(is_abnormal, score[mask], threshold)
        out[key] = {"n": int(mask.sum()), "n_normal": int((~is_abnormal).sum()), "n_abnormal": int(is_abnormal.sum()),
                    "auc": m["auc"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                    "refer_rate": float((score[mask] >= threshold).mean()),
                    "accuracy_3class": float((probs[mask].argmax(1) == y[mask]).mean()),
                    "classes": dict(Counter(classes[i] for i in y[mask])), "ci95": m["ci95"]}
    return out


def breakdown(samples, y, probs, classes, threshold: float) -> dict:
    """{"by_source", "by_age", "by_view"} for labelled samples (edge.datasets.Sample) and their scores."""
    return {"by_source": group_metrics(y, probs, classes, threshold, [s.dataset for s in samples]),
            "by_age": group_metrics(y, probs, classes, threshold, [age_group(s) for s in samples]),
            "by_view": group_metrics(y, probs, classes, threshold, [s.view or "unknown" for s in samples]),
            "age_rule": AGE_RULE}
