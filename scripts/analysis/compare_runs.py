"""Compare cxr-train runs on what they never saw: internal test AUC, NIH's AUC (and sensitivity/specificity
at the run's threshold), covid19-3class, its children alone (Normal against Viral Pneumonia: later patients of
the training hospital), Shenzhen in the internal test, and normals' mean abnormality on NIH and on those
children. Reads each run's metrics.json and predictions.csv.

An argument RUN+RUN[+...] is the score-level ensemble of those runs: the mean of their abnormality on the
films that all of them scored (same external films; the internal test only where the runs share a split).
It has no threshold of its own, so its sensitivity/specificity are left blank.

usage: python scripts/analysis/compare_runs.py RUN|RUN+RUN... [...]   (prints a Markdown table)
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


def _key(path: str, sources: set) -> str:
    """The film's path from its dataset folder on (runs trained from other folders write other prefixes)."""
    parts = Path(path).parts
    first = next((i for i, part in enumerate(parts) if part in sources), 0)
    return "/".join(parts[first:])


def _scores(run: Path, m: dict) -> dict:
    """split -> {film key: (true class, abnormality)}; m is the run's metrics.json."""
    sources = {name for split in ("test", "external") for name in m["sources"][split]["by_source"]}
    out: dict = {}
    with open(run / "predictions.csv") as handle:
        for r in csv.DictReader(handle):
            out.setdefault(r["split"], {})[_key(r["path"], sources)] = (r["true"], float(r["abnormality"]))
    return out


def _auc(items) -> float | None:
    y = np.array([t != "normal" for t, _ in items])
    return roc_auc(y, np.array([s for _, s in items])) if len(set(y)) == 2 else None


def _mean_normal(items):
    normals = [s for t, s in items if t == "normal"]
    return np.mean(normals) if normals else None


def row(arg: str) -> str:
    runs = [Path(p) for p in arg.split("+")]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    scored = [_scores(r, m) for r, m in zip(runs, metrics)]
    merged = {}
    for split in ("test", "external"):
        keys = set.intersection(*(set(s.get(split, {})) for s in scored))
        merged[split] = {k: (scored[0][split][k][0], float(np.mean([s[split][k][1] for s in scored])))
                         for k in sorted(keys)}
    ext, test = merged["external"], merged["test"]
    nih = [v for k, v in ext.items() if k.startswith("adult-nih/")]
    kids = [v for k, v in ext.items() if k.startswith("covid19-3class/") and v[0] in ("normal", "pneumonia")]
    shz = [v for k, v in test.items() if k.startswith("tb-shenzhen/")]
    at_threshold = "-/-"
    if len(runs) == 1:
        known = metrics[0]["sources"]["external"]["by_source"].get("adult-nih", {})
        at_threshold = f"{_f(known.get('sensitivity'))}/{_f(known.get('specificity'))}"
    name = " + ".join(r.name for r in runs)
    return (f"| {name} | {_f(_auc(test.values()))} | {_f(_auc(nih))} ({at_threshold}) "
            f"| {_f(_auc([v for k, v in ext.items() if k.startswith('covid19-3class/')]))} | {_f(_auc(kids))} "
            f"| {_f(_auc(shz))} | {_f(_mean_normal(nih))} | {_f(_mean_normal(kids))} |")


if __name__ == "__main__":
    print("| run | internal test | NIH AUC (sens/spec) | covid19-3class | its children | Shenzhen (test) "
          "| NIH normals' mean abnormality | children normals' mean abnormality |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arg in sys.argv[1:]:
        print(row(arg))
