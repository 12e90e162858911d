#!/usr/bin/env bash
# Reproduce the shipped default model (models/cxr-default.tflite) from ../shared/data, on a CPU.
# Every step is the project's own CLI; the model card (models/MODEL_CARD.md) records what each gave.
#   RUN=runs/cxr-default PRESET=cnn-4block SIZE=128 bash scripts/build_default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/cxr-default}
PRESET=${PRESET:-cnn-4block}
SIZE=${SIZE:-128}
DATA=${DATA:-../shared/data}

# 1. Audit + grouped train/val/test split + training + report (threshold for sensitivity 0.95 on val).
#    fullres/ (four adult images) is left out on purpose: it is the adult check of the model card.
if [ ! -f "$RUN/model.keras" ]; then
    cxr-train fit "$DATA/kermany-pneumonia" "$DATA/covid19-3class" --out "$RUN" --preset "$PRESET" \
        --input-size "$SIZE" --epochs 10 --patience 4 --name cxr-default --model-version 1.0.0 --quiet
fi

# 2. One CSV per split, so pruning and int8 calibration see training images only.
for split in train val test; do
    awk -F, -v s="$split" 'NR == 1 || $4 == s' "$RUN/splits.csv" > "$RUN/$split.csv"
done

# 3. Prune (50% sparsity, polynomial decay) on the training split, then convert.
converters prune "$RUN/model.keras" --data "$RUN/train.csv" --sparsity 0.5 --epochs 2 --out "$RUN/pruned.keras"
converters quantize "$RUN/model.keras" --mode float32 --out "$RUN/float32.tflite" --json > "$RUN/float32.json"
converters quantize "$RUN/model.keras" --mode int8 --data "$RUN/train.csv" --cam --out "$RUN/int8.tflite" \
    --json > "$RUN/int8.json"
converters quantize "$RUN/pruned.keras" --mode int8 --data "$RUN/train.csv" --cam \
    --out "$RUN/pruned-int8.tflite" --json > "$RUN/pruned-int8.json"

# 4. Parity against the float Keras model on the held-out test split (exit 7 when out of tolerance).
for variant in float32 int8; do
    converters parity "$RUN/model.keras" "$RUN/$variant.tflite" --data "$RUN/test.csv" --json \
        > "$RUN/parity-$variant.json" || echo "parity $variant: out of tolerance (see $RUN/parity-$variant.json)"
done
converters parity "$RUN/pruned.keras" "$RUN/pruned-int8.tflite" --data "$RUN/test.csv" --json \
    > "$RUN/parity-pruned-int8.json" || echo "parity pruned-int8: out of tolerance"

# 5. Held-out metrics of each edge file with the edge runtime itself, and the adult check.
for variant in int8 pruned-int8; do
    cxr-edge eval "$RUN/test.csv" -m "$RUN/$variant.tflite" --json > "$RUN/eval-test-$variant.json"
    cxr-edge eval "$DATA/fullres" -m "$RUN/$variant.tflite" --json > "$RUN/eval-adult-$variant.json" || true
done
echo "built $RUN; copy the chosen .tflite to models/cxr-default.tflite, then run scripts/benchmark.py"
