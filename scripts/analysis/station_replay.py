"""A new site, replayed through the station's own commands: screen, doctors' verdicts, calibrate --from-review.

Plays a hospital the model never saw, with nothing but the `cxr-edge` CLI in a fresh CXR_EDGE_HOME:
1. the station screens K abnormal and K normal films of FOLDER (drawn at random, whole patients) into a
   review log with the model's own threshold;
2. a doctor reviews every exam (`cxr-edge review verdict`: agree or disagree with the decision, taken from
   FOLDER's label);
3. `cxr-edge calibrate --from-review --sensitivity S` stores this site's threshold from those verdicts;
4. `cxr-edge eval` scores every film of the other patients with it, as the films screened afterwards.
Prints one JSON object: the referral rate and decisions before calibration, the calibration record, and the
sensitivity and specificity on the later films. One draw; scripts/analysis/site_calibration.py gives the
spread over many draws of the same threshold rule.

usage: python scripts/analysis/station_replay.py FOLDER [-m MODEL] [--per-class 200] [--sensitivity 0.9]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

from edge.datasets import discover_many  # noqa: E402
from edge.metadata import NORMAL_CLASS  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("folder", type=Path)
parser.add_argument("-m", "--model", type=Path, default=None)
parser.add_argument("--per-class", type=int, default=200)
parser.add_argument("--sensitivity", type=float, default=0.90)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

home = Path(tempfile.mkdtemp(prefix="cxr-replay-"))
env = {**os.environ, "CXR_EDGE_HOME": str(home)}
env.pop("CXR_EDGE_LOG", None)
if args.model:
    env["CXR_EDGE_MODEL"] = str(args.model.resolve())
log = home / "review.sqlite"


def cxr_edge(*argv, check=True) -> str:
    run = subprocess.run([sys.executable, "-m", "edge.cli", *map(str, argv)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if check and run.returncode != 0:
        sys.exit(f"cxr-edge {' '.join(map(str, argv[:3]))} ... exited {run.returncode}: {run.stderr.strip()}")
    return run.stdout


samples = discover_many([args.folder])
abnormal = np.array([s.label != NORMAL_CLASS for s in samples])
patients = np.array([s.patient or str(s.path) for s in samples])
rng = np.random.default_rng(args.seed)
chosen = np.concatenate([rng.choice(np.flatnonzero(abnormal == c), args.per_class, replace=False)
                         for c in (True, False)])
later = np.flatnonzero(~np.isin(patients, patients[chosen]))

# 1. the station screens the first films with the model's own threshold
truth = {str(samples[i].path.resolve()): bool(abnormal[i]) for i in chosen}
screened = [json.loads(line) for line in cxr_edge("screen", *truth, "--log", log, "--json", check=False).splitlines()]
before = {"films": len(screened), "screened": sum("decision" in r for r in screened), "referred": sum(r.get("decision") == "refer" for r in screened),
          "threshold": screened[0]["threshold"], "threshold_source": screened[0]["threshold_source"]}
# 2. a doctor reviews every exam
for exam in map(json.loads, cxr_edge("review", "list", "--json", "--log", log).splitlines()):
    if exam["status"] != "screened":  # refused by the input gate: no decision to judge
        continue
    agree = (exam["decision"] == "refer") == truth[str(Path(exam["file"]).resolve())]
    cxr_edge("review", "verdict", exam["id"], "agree" if agree else "disagree", "--reviewer", "replay",
             "--log", log)
# 3. this site's threshold from the verdicts
record = json.loads(cxr_edge("calibrate", "--from-review", "--log", log, "--sensitivity", args.sensitivity,
                             "--json", check=False))
# 4. the later films, other patients only, with the stored threshold
folder = home / "later"
for i in later:
    target = folder / ("ABNORMAL" if abnormal[i] else "NORMAL") / f"{i}{samples[i].path.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(samples[i].path.resolve())
alias = ["--alias", f"ABNORMAL={samples[chosen[0]].label}"]
after = json.loads(cxr_edge("eval", folder, *alias, "--json"))["screening"]
print(json.dumps({"folder": str(args.folder), "seed": args.seed, "model": record["model"],
                  "before_calibration": before, "calibration": {k: record[k] for k in (
                      "threshold", "sensitivity", "specificity", "n_abnormal", "n_normal", "warnings", "stored_in",
                      "review", "data")},
                  "later_films": {k: after[k] for k in ("n_abnormal", "n_normal", "threshold", "threshold_source",
                                                        "sensitivity", "specificity", "ci95", "auc")}}, indent=1))
