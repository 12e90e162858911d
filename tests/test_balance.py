"""Per-image loss weights of `cxr-train fit --balance source` and `--balance age` (train.data)."""

from pathlib import Path

import numpy as np

from edge.datasets import Sample
from train.data import MIN_CELL, age_source_class_weights, nested_weights, source_class_weights
from train.fit import _per_image_weights

CLASSES = ["normal", "pneumonia", "covid-19", "tuberculosis"]


def _share(weights, mask) -> float:
    return float(weights[mask].sum() / weights.sum())


def _collection():
    """A shared/-like mix: children with both classes from one source; adults mostly abnormal, from
    single-class sources (TB only, COVID-19 only) and one source with both."""
    rows = ([("kermany", "child", 0)] * 300 + [("kermany", "child", 1)] * 900
            + [("shenzhen", "adult", 0)] * 200 + [("shenzhen", "adult", 3)] * 200
            + [("tbx11k", "adult", 3)] * 600 + [("hannover", "adult", 2)] * 150)
    sources, ages, labels = (np.array(column) for column in zip(*rows))
    return labels, sources, ages


def test_source_balance_gives_every_class_and_every_source_inside_it_the_same_weight():
    labels, sources, _ = _collection()
    w = source_class_weights(labels, sources)
    assert abs(float(w.mean()) - 1.0) < 1e-5
    for c in range(4):
        assert abs(_share(w, labels == c) - 0.25) < 1e-5
    tb = labels == 3
    assert abs(_share(w, tb & (sources == "shenzhen")) - _share(w, tb & (sources == "tbx11k"))) < 1e-6
    # and the images of one cell weigh the same
    assert np.ptp(w[tb & (sources == "tbx11k")]) == 0


def test_age_balance_makes_abnormal_equally_likely_for_children_and_adults():
    labels, sources, ages = _collection()
    before = source_class_weights(labels, sources)
    adult = ages == "adult"
    # with class balance alone, "adult" still predicts "abnormal"
    assert _share(before, adult & (labels != 0)) / _share(before, adult) > 0.75
    w = age_source_class_weights(labels, sources, ages, normal=0)
    assert abs(float(w.mean()) - 1.0) < 1e-5
    for group in ("child", "adult"):
        in_group = ages == group
        assert abs(_share(w, in_group) - 0.5) < 1e-5
        assert abs(_share(w, in_group & (labels != 0)) - 0.25) < 1e-5
    # inside the adults' abnormal half: covid-19 and tuberculosis alike, and Shenzhen's and TBX11K's TB alike
    assert abs(_share(w, labels == 2) - _share(w, labels == 3)) < 1e-5
    tb = labels == 3
    assert abs(_share(w, tb & (sources == "shenzhen")) - _share(w, tb & (sources == "tbx11k"))) < 1e-5


def test_a_tiny_cell_is_not_blown_up_into_a_whole_share():
    labels = np.array([0] * 200 + [1] * 200 + [1] * 2)
    sources = np.array(["a"] * 400 + ["fullres"] * 2)
    w = nested_weights([labels, sources])
    tiny, big = w[sources == "fullres"], w[(labels == 1) & (sources == "a")]
    # half of class 1's share over 2 images would make each 100x an image of source a; MIN_CELL caps it
    assert np.allclose(tiny[0] / big[0], 200 / MIN_CELL)


def test_fit_reads_age_groups_from_ages_and_from_the_data_readme_rule():
    def sample(dataset, label, age=None):
        return Sample(path=Path(f"{dataset}-{label}.png"), label=label, dataset=dataset, split=None, age=age)

    train = ([sample("kermany-pneumonia", "normal")] * 60 + [sample("kermany-pneumonia", "pneumonia")] * 180
             + [sample("adult-nih", "normal", age=50.0)] * 60 + [sample("adult-nih", "normal", age=9.0)] * 60
             + [sample("tb-tbx11k", "tuberculosis")] * 240)
    labels = np.array([CLASSES.index(s.label) for s in train])
    w = _per_image_weights("age", train, labels, CLASSES)
    child = np.array([s.dataset == "kermany-pneumonia" or (s.age is not None and s.age < 15) for s in train])
    assert abs(_share(w, child) - 0.5) < 1e-5
    assert abs(_share(w, child & (labels == 0)) - 0.25) < 1e-5  # NIH's 9-year-olds join Kermany's normals
    assert abs(_share(w, ~child & (labels == 0)) - 0.25) < 1e-5
    assert _per_image_weights("weights", train, labels, CLASSES) is None
    assert np.allclose(_per_image_weights("source", train, labels, CLASSES),
                       source_class_weights(labels, [s.dataset for s in train]))
