#!/usr/bin/env bash
# Reproduce the shipped input gate (models/cxr-gate.tflite) from ../shared/data with the project's own CLI,
# on a CPU, then measure it on held-out hospitals and negatives through the edge path. docs/gate.md records
# what each step gave when it was run.
#   RUN=runs/gate bash scripts/build_gate_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/gate}
DATA=${DATA:-../shared/data}
mkdir -p "$RUN"

# 1. Decode every source once into $RUN/cache64.npz (about 20 s), train 10 x 10000 drawn examples (about 7 min
#    on 2 shared cores), convert to int8 with metadata and evaluate the int8 file on the held-out part.
#    scikit-image (a train/test-only dependency) supplies the photographs; without it they are left out.
cxr-train gate "$DATA" --out "$RUN" --epochs 10 --samples-per-epoch 10000 --model-version 1.0.0 > "$RUN/held-out.json"

# 2. Ship it beside the classifier: the edge finds models/cxr-gate.tflite next to models/cxr-default.tflite.
cp "$RUN/cxr-gate.tflite" models/cxr-gate.tflite

# 3. Real files, full resolution, through decode -> gate -> classifier (turned and inverted copies too), and
#    the per-image latency the gate adds.
python scripts/gate_eval.py --data "$DATA" > "$RUN/gate-eval.json"
