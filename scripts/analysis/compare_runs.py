"""Compare cxr-train runs on what they never saw: internal test AUC, each held-out source's AUC (and
sensitivity/specificity at the run's threshold), covid19-3class's children alone (Normal against Viral
Pneumonia: later patients of the training hospital), Shenzhen in the internal test, and normals' mean
abnormality on NIH and on those children. Reads each run's metrics.json and predictions.csv.

usage: python scripts/analysis/compare_runs.py RUN [RUN ...]   (prints a Markdown table)
"""
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np  # noqa: E402

from edge.metrics import roc_auc  # noqa: E402


def _f(x):
    return "-" if x is None or x != x else f"{x:.3f}"


print("| run | internal test | NIH AUC (sens/spec) | covid19-3class | its children | Shenzhen (test) "
      "| NIH normals' mean abnormality | children normals' mean abnormality |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for run in map(Path, sys.argv[1:]):
    m = json.loads((run / "metrics.json").read_text())
    external, test = m["sources"]["external"]["by_source"], m["sources"]["test"]["by_source"]
    with open(run / "predictions.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "external"]
    kids = [r for r in rows if "covid19-3class" in r["path"] and r["true"] in ("normal", "pneumonia")]
    y = np.array([r["true"] != "normal" for r in kids])
    score = np.array([float(r["abnormality"]) for r in kids])
    nih_normals = [float(r["abnormality"]) for r in rows if "adult-nih" in r["path"] and r["true"] == "normal"]
    nih = external.get("adult-nih", {})
    print(f"| {run.name} | {_f(m['test']['screening']['auc'])} | {_f(nih.get('auc'))} "
          f"({_f(nih.get('sensitivity'))}/{_f(nih.get('specificity'))}) "
          f"| {_f(external.get('covid19-3class', {}).get('auc'))} "
          f"| {_f(roc_auc(y, score) if len(set(y)) == 2 else None)} | {_f(test.get('tb-shenzhen', {}).get('auc'))} "
          f"| {_f(np.mean(nih_normals) if nih_normals else None)} | {_f(score[~y].mean() if (~y).any() else None)} |")
