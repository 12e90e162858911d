"""Measure the input gate on real files through the edge path (decode -> gate -> preprocess -> classifier).

    python scripts/gate_eval.py [--data ../shared/data] [--model models/cxr-default.tflite] [--limit N]

Held-out sources only (train/gate_data.HELD_OUT_SOURCES, never trained on) and the held-out part of every
negative kind. For each held-out frontal film it also turns the decoded pixels by 90/180/270 degrees and
inverts them: "handled" means refused, or corrected with a classifier abnormality within 0.10 of the upright
film's. Latency: the gate's added time per image (numeric checks + its interpreter, incl. corrections) next to
the classifier's own, both on this machine. Prints one JSON object; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.decision import abnormality_scores  # noqa: E402
from edge.decode import load_image  # noqa: E402
from edge.errors import CxrError  # noqa: E402
from edge.gate import gate_for  # noqa: E402
from edge.preprocess import preprocess  # noqa: E402
from edge.runtime import TFLiteModel  # noqa: E402
from train.gate_data import (HELD_OUT_SOURCES, dicom_files, dicom_group, held_out_name,  # noqa: E402
                             image_files, photos, synthetic)

TURNS = {"rotated_90": lambda x: np.rot90(x, 1), "rotated_180": lambda x: np.rot90(x, 2),
         "rotated_270": lambda x: np.rot90(x, 3), "inverted": lambda x: 1.0 - x}


def abnormality(model: TFLiteModel, pixels: np.ndarray) -> float:
    probs = model.predict(preprocess(pixels, model.metadata.preprocessing)).probabilities
    return float(abnormality_scores(probs[None], model.metadata.normal_index)[0])


def frontal(model, gate, files, turns: dict, timing: dict) -> dict:
    refused, reasons, turned = [], {}, {name: {"refused": 0, "corrected_close": 0, "corrected_far": 0,
                                                "passed_unchanged": 0, "n": 0} for name in TURNS}
    n = 0
    for path in files:
        try:
            pixels = np.ascontiguousarray(load_image(path).pixels)
        except CxrError:
            continue
        n += 1
        start = time.perf_counter()
        result = gate.check(pixels, str(path))
        timing["gate_ms"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        upright = abnormality(model, pixels)
        timing["classifier_ms"].append((time.perf_counter() - start) * 1000)
        if result.refused:
            refused.append(str(path))
            reasons[result.reason_code] = reasons.get(result.reason_code, 0) + 1
            continue
        if not turns:
            continue
        for name, turn in TURNS.items():
            counts = turned[name]
            counts["n"] += 1
            checked = gate.check(np.ascontiguousarray(turn(pixels)), str(path))
            if checked.refused:
                counts["refused"] += 1
            elif checked.verdict == "pass":
                counts["passed_unchanged"] += 1
            elif abs(abnormality(model, checked.pixels) - upright) <= 0.10:
                counts["corrected_close"] += 1
            else:
                counts["corrected_far"] += 1
    out = {"n": n, "refused": len(refused), "reasons": reasons, "refused_files": refused[:20]}
    if turns:
        for counts in turned.values():
            counts["handled"] = round((counts["refused"] + counts["corrected_close"]) / max(counts["n"], 1), 4)
        out["turned"] = turned
    return out


def negatives(gate, data: Path) -> dict:
    def refused(path: Path) -> bool:
        try:
            return gate.check(load_image(path).pixels, str(path)).refused
        except CxrError:
            return True  # the decoder refused it: it is not screened either

    ct = image_files(data / "not-cxr")
    held = [p for p in ct if held_out_name(p.name)]
    out = {"ct_held_out": {"n": len(held), "refused": sum(map(refused, held))},
           "ct_all_746": {"n": len(ct), "refused": sum(map(refused, ct))}}
    dicom_negatives, dicom_chests = dicom_files()
    rng = np.random.default_rng(7)  # another seed than training: other documents and textures
    for kind, items in (("pydicom_other_modalities_and_body_parts", [i for i in dicom_negatives if i.held_out]),
                        ("photo", [i for i in photos(rng) if i.held_out]),
                        ("document+texture", synthetic(rng, documents=150, textures=100))):
        out[kind] = {"n": len(items), "refused": sum(gate.check(i.pixels / 255.0).refused for i in items)}
    by_group: dict[str, list[int]] = {}
    for item in (i for i in dicom_negatives if i.held_out):
        group = dicom_group(item.source.split(":", 1)[1])
        by_group.setdefault(group, []).append(int(gate.check(item.pixels / 255.0).refused))
    out["pydicom_held_out_by_image_group"] = {g: f"{sum(v)}/{len(v)}" for g, v in sorted(by_group.items())}
    out["pydicom_chest_cr_positives"] = {"n": len(dicom_chests),
                                         "refused": sum(gate.check(i.pixels / 255.0).refused for i in dicom_chests)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cxr-default.tflite")
    parser.add_argument("--limit", type=int, default=0, help="at most this many films per held-out source")
    args = parser.parse_args()
    model = TFLiteModel(args.model, threads=1)
    gate = gate_for(model)
    if gate is None:
        sys.exit(f"no input gate beside {args.model}")
    timing = {"gate_ms": [], "classifier_ms": []}
    report = {"gate": gate.identity, "model": model.identity, "sources": {}}
    for source in HELD_OUT_SOURCES:
        files = image_files(args.data / source)[: args.limit or None]
        report["sources"][source] = frontal(model, gate, files, TURNS, timing)
    report["negatives"] = negatives(gate, args.data)
    report["latency_ms_median"] = {k: round(statistics.median(v), 2) for k, v in timing.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
