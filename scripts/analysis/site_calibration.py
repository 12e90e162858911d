"""How many of its own labelled films does a site need before `cxr-edge calibrate` can be trusted?

Scores a labelled folder from a hospital the model never saw with a .tflite (as `cxr-edge eval` does), then
plays a site many times over: draw k abnormal and k normal films (whole patients: no patient is in both
the calibration draw and the films scored after it), choose the threshold exactly as `cxr-edge calibrate`
does (edge.evaluation.calibrate), and score it on every other film of that folder, as the films a station
screens after calibrating. Reports, per k, the sensitivity and specificity reached on those later films
(median and the 10th percentile over draws), how often the sensitivity fell more than 0.05 short of the
target, and how often `calibrate` would have refused to store the threshold without --force.

usage: python scripts/analysis/site_calibration.py FOLDER [-m MODEL] [--sensitivity 0.9] [--draws 400]
prints one JSON object.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np  # noqa: E402

from edge.cli import load_model  # noqa: E402
from edge.datasets import discover_many  # noqa: E402
from edge.evaluation import MIN_PER_GROUP, ScoredSet, calibrate, score_samples  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("folder", type=Path)
parser.add_argument("-m", "--model", type=Path, default=None)
parser.add_argument("--sensitivity", type=float, default=0.90)
parser.add_argument("--draws", type=int, default=400)
parser.add_argument("--sizes", default="15,30,60,120,200")
args = parser.parse_args()

model = load_model(args.model)
samples = discover_many([args.folder], classes=tuple(model.metadata.classes))
scored = score_samples(model, samples)
y, score = scored.is_abnormal, scored.abnormality(model)
patients = np.array([s.patient or str(s.path) for s in scored.samples])


rng = np.random.default_rng(0)
out = {"folder": str(args.folder), "model": model.identity, "target_sensitivity": args.sensitivity,
       "n": int(len(y)), "n_abnormal": int(y.sum()), "n_normal": int((~y).sum()), "draws": args.draws,
       "min_per_group": MIN_PER_GROUP, "by_size": {}}
for k in map(int, args.sizes.split(",")):
    sens, spec, refused = [], [], []
    for _ in range(args.draws):
        chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (True, False)])
        held = ~np.isin(patients, patients[chosen])  # later films: other patients only
        record = calibrate(model, ScoredSet(labels=[scored.labels[i] for i in chosen],
                                            probabilities=[scored.probabilities[i] for i in chosen]),
                           args.sensitivity)
        t = record["threshold"]
        later_y, later_s = y[held], score[held]
        sens.append(float((later_s[later_y] >= t).mean()))
        spec.append(float((later_s[~later_y] < t).mean()))
        refused.append(bool(record["warnings"]))
    sens, spec = np.array(sens), np.array(spec)
    out["by_size"][f"{k}+{k}"] = {
        "sensitivity_median": round(float(np.median(sens)), 3),
        "sensitivity_p10": round(float(np.percentile(sens, 10)), 3),
        "specificity_median": round(float(np.median(spec)), 3),
        "specificity_p10": round(float(np.percentile(spec, 10)), 3),
        "share_more_than_0.05_short": round(float((sens < args.sensitivity - 0.05).mean()), 3),
        "share_calibrate_refuses": round(float(np.mean(refused)), 3)}
print(json.dumps(out, indent=1))
