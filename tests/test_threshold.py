"""`converters threshold`: the shipped threshold is chosen on validation images with the final file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.metadata import read_model_file

MINI = Path(__file__).resolve().parent / "data" / "cxr-mini"
ROOT = Path(__file__).resolve().parent.parent


def split_csv(tmp_path: Path) -> Path:
    rows = ["path,dataset,label,split"]
    files = sorted(p for p in MINI.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for i, path in enumerate(files):
        rows.append(f"{path},mini,{path.parent.name},{'val' if i % 2 else 'train'}")
    csv_file = tmp_path / "splits.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    return csv_file


def converters(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_threshold_is_chosen_on_val_and_written_into_the_file(tiny_int8_model, tmp_path):
    csv_file = split_csv(tmp_path)
    out = tmp_path / "final.tflite"
    run = converters("threshold", tiny_int8_model, "--data", csv_file, "--splits", csv_file, "--split", "val",
                     "--sensitivity", "0.9", "--out", out, "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    _, meta = read_model_file(out)
    assert meta.threshold == report["threshold"]
    assert "val split" in meta.threshold_rule and "this .tflite file itself" in meta.threshold_rule
    screening = meta.metrics["val_tflite_screening"]
    assert screening["sensitivity"] >= 0.9 and screening["n"] == 12
    assert read_model_file(tiny_int8_model)[1].threshold == 0.5  # the source file is left as it was
    run = converters("threshold", tiny_int8_model, "--data", csv_file, "--splits", csv_file, "--per-source",
                     "--out", tmp_path / "each.tflite", "--json")
    assert run.returncode == 0, run.stderr
    assert ("(no source had the 30 abnormal images a per-source target needs)"
            in read_model_file(tmp_path / "each.tflite")[1].threshold_rule)


def test_threshold_refuses_the_test_split(tiny_int8_model, tmp_path):
    csv_file = split_csv(tmp_path)
    run = converters("threshold", tiny_int8_model, "--data", csv_file, "--split", "test", "--out", tmp_path / "x.tflite")
    assert run.returncode == 2 and "test split" in run.stderr and "Traceback" not in run.stderr


def test_per_source_threshold_reaches_the_target_in_every_source():
    """A pooled sensitivity can hide a source whose abnormal films all score low; the per-source rule cannot."""
    import numpy as np

    from edge.metrics import threshold_for_sensitivity, threshold_for_sensitivity_in_groups

    # site-a: 40 abnormal films scoring 0.60-0.99, site-b: 10 abnormal films scoring 0.20-0.29; 20 normals
    y = np.r_[np.ones(50, bool), np.zeros(20, bool)]
    score = np.r_[np.linspace(0.60, 0.99, 40), np.linspace(0.20, 0.29, 10), np.linspace(0.0, 0.5, 20)]
    sites = ["site-a"] * 40 + ["site-b"] * 10 + ["site-a", "site-b"] * 10
    pooled = threshold_for_sensitivity(y, score, 0.9)
    assert (score[40:50] >= pooled).mean() < 0.9  # pooled 0.9 leaves most of site-b's abnormal films out
    threshold, counted = threshold_for_sensitivity_in_groups(y, score, sites, 0.9, min_abnormal=5)
    assert counted == ["site-a", "site-b"] and threshold <= pooled
    for site in counted:
        rows = np.array([s == site for s in sites]) & y
        assert (score[rows] >= threshold).mean() >= 0.9
    assert threshold == threshold_for_sensitivity(y[40:50], score[40:50], 0.9)  # the highest such threshold
    # a group with too few abnormal films does not set the threshold
    assert threshold_for_sensitivity_in_groups(y, score, sites, 0.9, min_abnormal=11) == (pooled, ["site-a"])
