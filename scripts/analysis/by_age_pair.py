"""What a --by-age station would decide on covid19-3class: its children (later Kermany patients, Normal and
Viral Pneumonia) screened by cxr-pediatric, its adults (the COVID-19 films) by cxr-default, each at its own
shipped threshold, against cxr-default alone on everything.

The films are PNGs without ages, so they are split by the data README's age rule (covid19-3class's Normal and
Viral Pneumonia are children, its COVID-19 films adults), each part scored by `cxr-edge eval --json` with the
bundled file, and the decisions counted together. The COVID-19 part has no normal films: the adults'
specificity is not measured here. Edge-only (no TensorFlow).

usage: python scripts/analysis/by_age_pair.py [DATA/covid19-3class]   prints one JSON object
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from edge.metrics import wilson_interval  # noqa: E402

DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def evaluate(folder: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "eval", str(folder), "--json", *args],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


def counts(report: dict) -> dict:
    s = report["screening"]
    return {k: s[k] for k in ("tp", "fn", "fp", "tn")} | {"n": report["n"], "model": report["model"],
                                                           "threshold": s["threshold"]}


def summary(c: dict) -> dict:
    tp, fn, fp, tn = c["tp"], c["fn"], c["fp"], c["tn"]
    n = tp + fn + fp + tn
    return {"n": n, "tp": tp, "fn": fn, "fp": fp, "tn": tn,
            "accuracy": (tp + tn) / n, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
            "ci95": {"accuracy": wilson_interval(tp + tn, n), "sensitivity": wilson_interval(tp, tp + fn),
                     "specificity": wilson_interval(tn, tn + fp), "method": "Wilson score interval"}}


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA / "covid19-3class"
    children = counts(evaluate(folder, "-m", "cxr-pediatric", "--alias", "Covid=skip"))
    adults = counts(evaluate(folder, "--alias", "Normal=skip", "--alias", "Viral Pneumonia=skip"))
    alone = evaluate(folder)
    pair = {k: children[k] + adults[k] for k in ("tp", "fn", "fp", "tn")}
    print(json.dumps({
        "data": str(folder), "by_age": {"children (Normal, Viral Pneumonia)": children,
                                        "adults (COVID-19)": adults, "together": summary(pair)},
        "cxr_default_alone": summary(counts(alone)) | {"model": alone["model"]},
        "note": "ages by the data README's rule (no ages in these PNGs); adults here are all abnormal, so the "
                "adults' specificity is not measured; cxr-pediatric's 64 px input was chosen looking at these "
                "children (optimistic)"}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
