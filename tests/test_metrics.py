"""edge.metrics against brute-force definitions on real-sized random data and hand-checked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.metrics import (auc_interval, classification_report, roc_auc, roc_curve, screening_metrics,
                          threshold_for_sensitivity, threshold_table, wilson_interval)


@pytest.fixture
def scored():
    rng = np.random.default_rng(7)
    y = rng.random(300) < 0.4
    score = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounded: many ties
    return y, score


def test_auc_matches_pairwise_definition_and_curve(scored):
    y, score = scored
    pos, neg = score[y], score[~y]
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert roc_auc(y, score) == pytest.approx(brute, abs=1e-12)
    fpr, tpr, thresholds = roc_curve(y, score)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute, abs=1e-12)
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)
    lo, hi = auc_interval(y, score)
    assert lo < brute < hi and hi - lo < 0.2


def test_auc_undefined_with_one_class():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))
    assert screening_metrics([1, 1], [0.2, 0.9], 0.5)["auc"] is None


def test_threshold_for_sensitivity_is_the_highest_that_meets_target(scored):
    y, score = scored
    t = threshold_for_sensitivity(y, score, 0.95)
    assert np.mean(score[y] >= t) >= 0.95
    higher = score[score > t].min()
    assert np.mean(score[y] >= higher) < 0.95
    assert threshold_for_sensitivity([1, 1, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1], 1.0) == 0.6
    assert threshold_for_sensitivity([1, 1, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1], 0.75) == 0.7
    with pytest.raises(ValueError):
        threshold_for_sensitivity([0, 0], [0.1, 0.2])


def test_screening_metrics_counts_and_intervals():
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5]
    m = screening_metrics(y, s, 0.5)  # refer when >= 0.5: 0.9 0.6 | 0.7 0.5 ; miss 0.3
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 2, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(0.5)
    lo, hi = m["ci95"]["sensitivity"]
    assert lo < 2 / 3 < hi
    assert json.loads(json.dumps(m)) == m  # JSON-safe: no NaN, no numpy types


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_threshold_table_is_monotonic(scored):
    y, score = scored
    rows = threshold_table(y, score)
    sens = [r["sensitivity"] for r in rows]
    assert sens == sorted(sens, reverse=True)
    assert all(r["tp"] + r["fp"] + r["tn"] + r["fn"] == len(y) for r in rows)


def test_classification_report_confusion_rows_are_truth():
    classes = ["normal", "pneumonia", "covid-19"]
    probs = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]
    report = classification_report(["normal", "pneumonia", "covid-19", "covid-19"], probs, classes)
    assert report["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert report["accuracy"] == 0.75
    covid = report["per_class"]["covid-19"]
    assert (covid["tp"], covid["fn"], covid["fp"], covid["tn"]) == (1, 1, 0, 2)
    assert covid["recall"] == 0.5 and covid["precision"] == 1.0 and covid["support"] == 2
    assert report["per_class"]["pneumonia"]["precision"] == 0.5
    same = classification_report([0, 1, 2, 2], probs, classes)
    assert same == report
