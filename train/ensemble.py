"""`cxr-train ensemble RUN RUN ... --out RUN`: several fit runs on one split (other seeds, or other training
options such as --mixstyle) as one model whose answer is the mean of their logits
(models.architectures.build_ensemble), evaluated, thresholded and reported exactly as `fit` does, into a run
folder the converters take like any other.

Why: the same recipe run with another seed moves the never-seen NIH AUC by more than its sampling interval
(models/MODEL_CARD.md); an average of several runs depends less on one run's luck, and deep ensembles are
among the most robust models under dataset shift (Lakshminarayanan et al. 2017; Ovadia et al. 2019).

The members must share the data, the held-out sources, the preprocessing, the classes and the split (fit
--split-seed): otherwise one member's test images were another's training images, and the ensemble's
internal test numbers would be seen data.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edge.errors import CxrError, ExitCode  # noqa: E402
from edge.metadata import ModelMetadata  # noqa: E402

from .fit_config import FitConfig, FitResult, say  # noqa: E402

# a member's options that must agree; training options (seed, epochs, --mixstyle, --balance, ...) may differ
MUST_AGREE = ("data", "preset", "input_size", "resize", "crop", "margin", "normalize", "hold_out", "classes",
              "aliases", "dedup", "max_distance", "val_fraction", "test_fraction", "use_dataset_splits",
              "resplit_val", "seen_images")


def _member(run: Path) -> tuple[dict, ModelMetadata]:
    """(the run's training record from metrics.json, its model metadata)."""
    run = Path(run)
    for name in ("model.keras", "model.meta.json", "metrics.json", "splits.csv"):
        if not (run / name).is_file():
            raise CxrError(f"{run}: not a finished cxr-train fit run ({name} missing)", code=ExitCode.USAGE,
                           reason="bad_option")
    training = json.loads((run / "metrics.json").read_text())["training"]
    if training["config"].get("members"):
        raise CxrError(f"{run} is an ensemble itself; give its member runs", code=ExitCode.USAGE,
                       reason="bad_option")
    return training, ModelMetadata.from_dict(json.loads((run / "model.meta.json").read_text()))


def check_members(runs: list[Path]) -> list[dict]:
    """Every member's training record (fit options under "config"), after checking that each agrees with the
    first on what must agree."""
    if len(runs) < 2:
        raise CxrError("an ensemble needs at least two runs", code=ExitCode.USAGE, reason="bad_option")
    records, metas = zip(*(_member(run) for run in runs))
    first = records[0]["config"]
    splits = (Path(runs[0]) / "splits.csv").read_bytes()
    for run, record, meta in zip(runs[1:], records[1:], metas[1:]):
        differ = [k for k in MUST_AGREE if record["config"].get(k) != first.get(k)]
        if meta.preprocessing.to_dict() != metas[0].preprocessing.to_dict():
            differ.append("preprocessing")
        if differ:
            raise CxrError(f"{run} differs from {runs[0]} in {', '.join(differ)}: an ensemble's runs must share "
                           "the data, held-out sources, preprocessing, classes and split", code=ExitCode.USAGE,
                           reason="bad_option")
        if (Path(run) / "splits.csv").read_bytes() != splits:
            raise CxrError(f"{run} was split differently from {runs[0]} (train them with the same --split-seed): "
                           "one member's test images would be another's training images", code=ExitCode.USAGE,
                           reason="bad_option")
    return list(records)


def run_ensemble(runs: list[Path], out: Path, *, name: str = "cxr-screen", version: str = "0.1.0",
                 per_source_threshold: bool = False, verbose: int = 1) -> FitResult:
    start = time.perf_counter()
    runs = [Path(r) for r in runs]
    records = check_members(runs)
    options = records[0]["config"]
    seeds = [r["config"]["seed"] for r in records]
    member_seconds = [r["train_seconds"] for r in records]
    config = FitConfig(**{**options, "out": Path(out), "name": name, "version": version, "verbose": verbose,
                          "lungs": Path(runs[0]) / "lungs.tflite" if options["crop"] == "lungs" else None,
                          "data": [Path(d) for d in options["data"]], "classes": tuple(options["classes"]),
                          "hold_out": tuple(options["hold_out"]), "aug": tuple(options["aug"]),
                          "cache_path": Path(options["cache_path"]) if options.get("cache_path") else None,
                          "members": tuple(str(r) for r in runs), "resume": False,
                          "per_source_threshold": per_source_threshold or options.get("per_source_threshold", False),
                          "recalibrate_bn": False})  # each member keeps its own re-estimated statistics
    config.out.mkdir(parents=True, exist_ok=True)

    import tf_keras as keras

    import models.architectures  # noqa: F401  (registers custom layers)
    from models.architectures import build_ensemble

    from .fit import _lung_segmenter, _setup_tf, audited_splits, image_lists, prepare_data
    from .fit_report import finish

    samples, audit, indices, dropped, splits, leaked, counts, external = prepare_data(config)
    audit_report, by_split = audited_splits(config, samples, audit, indices, dropped, splits)
    shutil.copy(runs[0] / "splits.csv", config.out / "splits.csv")
    paths, labels = image_lists(samples, by_split, external, config.classes)
    check = {(p, s) for s, ps in paths.items() if s != "external" for p in ps}
    with open(runs[0] / "splits.csv") as handle:
        written = {(r["path"], r["split"]) for r in csv.DictReader(handle)}
    if check != written:  # the data changed since the members were trained
        raise CxrError(f"the data no longer splits as {runs[0]}/splits.csv says ({len(check ^ written)} images "
                       "differ): retrain the members", code=ExitCode.DATA, reason="data_changed")
    _, env = _setup_tf(config)
    meta = ModelMetadata.from_dict(json.loads((runs[0] / "model.meta.json").read_text()))
    spec = meta.preprocessing
    if config.crop == "lungs" and _lung_segmenter(config) != spec.lungs:  # registers it, copies it into out
        raise CxrError(f"{runs[0]}/lungs.tflite is not the segmenter its model names", code=ExitCode.MODEL,
                       reason="bad_model")
    members = [keras.models.load_model(str(r / "model.keras"), compile=False) for r in runs]
    model = build_ensemble(members, name=f"{config.preset.replace('.', '_')}_x{len(members)}")
    say(config, f"ensemble of {len(members)} runs (seeds {', '.join(map(str, seeds))}): the mean of their logits")
    return finish(config, model, samples, audit_report, by_split, paths, labels, spec, counts, dropped, leaked, env,
                  0, None, None, 0, float(sum(member_seconds)), start)
