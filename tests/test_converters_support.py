"""Shared set-up for the converter and parity tests (no tests here): a small real dataset and a
model trained by train/ on it, built once per test session and reused by both test files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from conftest import require_shared_data

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

INPUT_SIZE = 64
PER_CLASS = 50  # real pediatric chest X-rays per class (kermany-pneumonia); 100 images: parity allows 1 flip
CLASSES = ("normal", "pneumonia")
WORK = Path(tempfile.mkdtemp(prefix="cxr-converters-tests-"))


@lru_cache(maxsize=None)
def dataset() -> Path:
    """kermany-pneumonia NORMAL/ and PNEUMONIA/ folders with PER_CLASS real images each (symlinks)."""
    source = require_shared_data() / "kermany-pneumonia" / "train"
    root = WORK / "data"
    for folder in ("NORMAL", "PNEUMONIA"):
        files = sorted((source / folder).iterdir())
        step = max(1, len(files) // PER_CLASS)
        (root / folder).mkdir(parents=True)
        for path in files[::step][:PER_CLASS]:
            (root / folder / path.name).symlink_to(path)
    return root


@lru_cache(maxsize=None)
def trained_run() -> Path:
    """RUN folder (model.keras, model.meta.json, splits.csv) written by train/'s Python API."""
    from train.fit import FitConfig, run

    out = WORK / "run"
    run(FitConfig(data=[dataset()], out=out, preset="small-cnn", input_size=INPUT_SIZE, epochs=30, batch_size=16,
                  learning_rate=2e-3, schedule="constant", patience=30, classes=CLASSES, val_fraction=0.3,
                  test_fraction=0.0, augment=False, gradcam_per_kind=0, cache_path=WORK / "hash-cache.json",
                  verbose=0, name="test-screen", version="0.0.1"))
    return out


@lru_cache(maxsize=None)
def converted(mode: str, *, cam: bool = False, source: str = "model") -> Path:
    """`converters quantize` output for the trained (or pruned) model, through the Python API."""
    from converters.quantize import QuantizeOptions, quantize

    model = pruned_model() if source == "pruned" else trained_run() / "model.keras"
    out = WORK / "tflite" / f"{source}-{mode}{'-cam' if cam else ''}.tflite"
    options = QuantizeOptions(mode=mode, data=[dataset()], cam=cam, layer_report=(mode == "int8" and not cam),
                              latency_runs=5)
    report = quantize(model, out, options)
    out.with_suffix(".report.json").write_text(json.dumps(report, default=str))
    return out


def quantize_report(path: Path) -> dict:
    return json.loads(path.with_suffix(".report.json").read_text())


@lru_cache(maxsize=None)
def pruned_model() -> Path:
    from converters.prune import PruneOptions, prune_model

    out = WORK / "pruned" / "model.keras"
    report = prune_model(trained_run() / "model.keras", out,
                         PruneOptions(sparsity=0.5, epochs=3, batch_size=16, learning_rate=1e-4, data=[dataset()]))
    out.with_suffix(".report.json").write_text(json.dumps(report, default=str))
    return out


def cli(*args: str, tool: str = "converters") -> subprocess.CompletedProcess:
    """Run a console script as a real process (python -c entry point, so no PATH assumptions)."""
    module = {"converters": "converters.cli", "cxr-edge": "edge.cli"}[tool]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", f"from {module} import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=600)
