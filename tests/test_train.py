"""cxr-train fit on real (downscaled) chest X-rays: tiny models, a few steps, real files written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import CxrError, ExitCode
from edge.metadata import ModelMetadata

MINI = Path(__file__).parent / "data" / "cxr-mini"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from train.fit import FitConfig, run

    out = tmp_path_factory.mktemp("run")
    return run(FitConfig(data=[MINI], out=out, input_size=64, epochs=2, batch_size=8, val_fraction=0.25,
                         test_fraction=0.25, seed=1, verbose=0, cache_path=out / "hashes.json",
                         gradcam_per_kind=2))


@pytest.mark.slow
def test_run_folder_contract(tiny_run):
    out = tiny_run.out
    for name in ("model.keras", "model.meta.json", "metrics.json", "report.md", "audit.json", "splits.csv",
                 "history.csv", "predictions.csv", "plots/training-curves.png", "plots/confusion-val.png",
                 "plots/roc-val.png", "checkpoints/best.weights.h5", "checkpoints/last.keras"):
        assert (out / name).is_file(), name
    assert list((out / "gradcam").glob("gradcam-*.png"))
    meta = ModelMetadata.from_dict(json.loads((out / "model.meta.json").read_text()))
    assert meta.classes == ["normal", "pneumonia", "covid-19"]
    assert meta.preprocessing.height == 64 and meta.quantization == "none"
    assert meta.threshold == pytest.approx(tiny_run.metrics["threshold"])
    assert "validation" in meta.threshold_rule and meta.metrics["validation"]["screening"]["n"] == 6
    assert meta.training_data["splits"]["train"] == {"covid-19": 4, "normal": 4, "pneumonia": 4}
    assert "duplicates" in meta.training_data


@pytest.mark.slow
def test_metrics_are_consistent_with_predictions(tiny_run):
    metrics = json.loads((tiny_run.out / "metrics.json").read_text())
    with open(tiny_run.out / "predictions.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    abnormal = [r for r in rows if r["true"] != "normal"]
    threshold = metrics["threshold"]
    sens = sum(float(r["abnormality"]) >= threshold for r in abnormal) / len(abnormal)
    assert metrics["val"]["screening"]["sensitivity"] == pytest.approx(sens)
    assert sens >= 0.95  # chosen on validation to reach the target
    s = metrics["val"]["screening"]
    assert s["tp"] + s["fp"] + s["tn"] + s["fn"] == len(rows) == 6
    for name in ("normal", "pneumonia", "covid-19"):
        per = metrics["val"]["classes"]["per_class"][name]
        assert {"precision", "recall", "specificity", "f1", "auc", "tp", "fp", "tn", "fn"} <= set(per)
    assert any(row["threshold"] == pytest.approx(threshold, abs=1e-6) for row in metrics["val"]["threshold_table"])
    assert metrics["test"]["screening"]["threshold"] == threshold  # test uses the validation threshold
    assert metrics["notice"] == "screening aid, not a diagnosis" and len(metrics["model"]["sha256"]) == 64
    report = (tiny_run.out / "report.md").read_text()
    assert "Threshold table" in report and "specificity" in report and metrics["model"]["sha256"] in report
    assert "Started from random weights." in report  # the tiny run has no --weights


@pytest.mark.slow
def test_saved_model_loads_and_matches_report(tiny_run):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    import models.architectures  # noqa: F401
    from edge.decode import load_image
    from edge.preprocess import preprocess

    model = keras.models.load_model(tiny_run.model_path)
    meta = ModelMetadata.from_dict(json.loads(tiny_run.meta_path.read_text()))
    with open(tiny_run.out / "predictions.csv") as handle:
        row = next(csv.DictReader(handle))
    x = preprocess(load_image(row["path"]).pixels, meta.preprocessing)[None]
    probs = model.predict(x, verbose=0)[0]
    assert probs == pytest.approx([float(row[f"p_{c}"]) for c in meta.classes], abs=1e-5)


def _leaky_dataset(root: Path) -> Path:
    for split, sl in (("train", slice(0, 6)), ("val", slice(6, 8))):
        for cls in ("NORMAL", "PNEUMONIA", "Covid"):
            dst = root / split / cls
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted((MINI / cls).glob("*.jpg"))[sl]:
                shutil.copy(f, dst / f.name)
    src = sorted((root / "train" / "PNEUMONIA").glob("*.jpg"))[0]
    img = cv2.resize(cv2.imread(str(src), cv2.IMREAD_GRAYSCALE), (200, 200), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(root / "val" / "PNEUMONIA" / "same-child.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return root


def test_fit_refuses_leaky_split(tmp_path):
    data = _leaky_dataset(tmp_path / "leaky")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", str(data), "--out", str(out), "--input-size",
                           "32", "--epochs", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CXR_EDGE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-1500:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("cxr-train: error:")]
    assert len(error) == 1 and "share 1 near-duplicate pair" in error[0] and "same-child.jpg" in error[0]
    leaked = json.loads((out / "leakage.json").read_text())
    assert {leaked[0]["a"]["split"], leaked[0]["b"]["split"]} == {"train", "val"}
    audit = json.loads((out / "audit.json").read_text())
    assert audit["duplicates"]["across_splits"] == 1
    assert not (out / "model.keras").exists()


@pytest.mark.slow
def test_resplit_and_balanced_sampling_train_a_transfer_preset(tmp_path):
    """--resplit regroups a leaky dataset; a MobileNetV2 preset trains frozen, then fine-tunes, and resumes."""
    from train.fit import FitConfig, run

    data = _leaky_dataset(tmp_path / "leaky")
    config = FitConfig(data=[data], out=tmp_path / "run", preset="mobilenetv2-0.35", input_size=32, epochs=1,
                       fine_tune_epochs=1, batch_size=8, use_dataset_splits=False, val_fraction=0.3,
                       test_fraction=0.0, balance="sampling", verbose=0, steps_per_epoch=2, gradcam_per_kind=1,
                       cache_path=tmp_path / "hashes.json")
    result = run(config)
    assert result.metrics["training"]["fine_tuned_layers"] > 0
    assert result.metrics["data"]["leakage_pairs_crossing_split"] == 0
    assert result.metrics["training"]["epochs_run"] == 2
    assert "test" not in result.metrics
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["phase"] == 2


def test_unknown_folder_is_a_one_line_data_error(tmp_path):
    (tmp_path / "ds" / "Lung_Opacity").mkdir(parents=True)
    shutil.copy(next((MINI / "NORMAL").glob("*.jpg")), tmp_path / "ds" / "Lung_Opacity" / "a.jpg")
    proc = subprocess.run([sys.executable, "-m", "train.cli", "audit", str(tmp_path / "ds")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.DATA
    assert proc.stderr.strip().count("\n") == 0 and "Lung_Opacity" in proc.stderr


def test_presets_build_with_grey_input_and_gap_head():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from models.architectures import PRESETS, build_model

    for name in ("small-cnn-l2", "mobilenetv3small", "densenet121"):
        model = build_model(name, input_size=max(64, PRESETS[name].min_size), classes=3)
        assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 3)
        assert model.get_layer("gap") is not None
        probs = model.predict(np.random.default_rng(0).random((2, 64, 64, 1), np.float32), verbose=0)
        assert probs.sum(axis=1) == pytest.approx([1, 1], abs=1e-5)
    with pytest.raises(CxrError) as info:
        build_model("mobilenetv2", weights="/nonexistent.h5")
    assert info.value.code == ExitCode.USAGE


@pytest.mark.slow
def test_same_seed_same_results(tiny_run, tmp_path):
    from train.fit import FitConfig, run

    again = run(FitConfig(data=[MINI], out=tmp_path / "again", input_size=64, epochs=2, batch_size=8,
                          val_fraction=0.25, test_fraction=0.25, seed=1, verbose=0, cache_path=tmp_path / "h.json",
                          gradcam_per_kind=2))
    # Same seed, op determinism on: the same split, images, classes and decisions. The numbers agree to
    # float32 round-off, not bit for bit: oneDNN's CPU kernels may sum in a different order when threads
    # are scheduled differently (a run once gave threshold 0.6675149500 vs 0.6675149202, one float32 ulp
    # of P(normal)). Allowed: 32 float32 epsilons, plus the CSV's 6-decimal rounding.
    noise = 32 * float(np.finfo(np.float32).eps)
    with open(tiny_run.out / "predictions.csv") as a, open(again.out / "predictions.csv") as b:
        first, second = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r.keys() for r in first] == [r.keys() for r in second] and len(first) == len(second) > 0
    threshold = tiny_run.metrics["threshold"]
    assert again.metrics["threshold"] == pytest.approx(threshold, rel=0, abs=noise)
    for one, two in zip(first, second):
        assert (one["split"], one["path"], one["true"]) == (two["split"], two["path"], two["true"])
        for key in (k for k in one if k.startswith("p_") or k == "abnormality"):
            assert float(one[key]) == pytest.approx(float(two[key]), rel=0, abs=noise + 1e-6), (key, one, two)
        if abs(float(one["abnormality"]) - threshold) > noise + 1e-6:  # not within round-off of the threshold
            assert one["decision"] == two["decision"], (one, two)


def _own_splits_with_patient_across(root: Path) -> Path:
    """Own train (4 per class) / val (1) / test (2) folders; Kermany's person1031 is in train and, with another
    radiograph (not a near-duplicate), in test."""
    for split, sl in (("train", slice(0, 4)), ("val", slice(4, 5)), ("test", slice(5, 7))):
        for cls in ("NORMAL", "PNEUMONIA", "Covid"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in sorted((MINI / cls).glob("*.jpg"))[sl]:
                shutil.copy(f, root / split / cls / f.name)
    other = sorted((MINI / "PNEUMONIA").glob("*.jpg"))[7]
    shutil.copy(other, root / "test" / "PNEUMONIA" / "person1031_bacteria_1.jpg")
    return root


def test_same_patient_across_own_splits_is_reported_and_refused(tmp_path):
    from edge.datasets import discover_many
    from train.audit import run_audit
    from train.splits import assign_splits, leaks, select_images

    data = _own_splits_with_patient_across(tmp_path / "ds")
    result = run_audit(discover_many([data]), cache_path=tmp_path / "h.json")
    [row] = result.report["same_patient_across_splits"]
    assert row["patient"] == "ds:person1031" and row["images"] == {"train": 1, "test": 1}
    assert any("1 patient(s) have images on different sides" in w for w in result.report["warnings"])
    indices, _ = select_images(result)
    kept = assign_splits(result, indices, use_dataset_splits=True)
    assert [r["kind"] for r in leaks(result, kept)] == ["same_patient"]
    assert not leaks(result, assign_splits(result, indices, use_dataset_splits=False))  # --resplit regroups

    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", str(data), "--out", str(tmp_path / "run"),
                           "--input-size", "32", "--epochs", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CXR_EDGE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == ExitCode.CHECK_FAILED, proc.stderr[-1500:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("cxr-train: error:")]
    assert len(error) == 1 and "share 1 patient(s)" in error[0] and "person1031" in error[0]


def test_resplit_val_keeps_the_datasets_test_split(tmp_path):
    from edge.datasets import discover_many
    from train.audit import run_audit
    from train.splits import assign_splits, select_images

    data = _own_splits_with_patient_across(tmp_path / "ds")
    result = run_audit(discover_many([data]), cache_path=tmp_path / "h.json")
    indices, _ = select_images(result)
    splits = assign_splits(result, indices, val_fraction=0.4, seed=3, resplit_val=True)
    own = {int(i): result.samples[i].split for i in indices}
    assert all(splits[i] == "test" for i, s in own.items() if s == "test")  # the dataset's test stays
    assert not any(splits[i] == "test" for i, s in own.items() if s != "test")  # and gets nothing more
    val = [i for i in own if splits[i] == "val"]
    assert len(val) == 6 and any(own[i] == "train" for i in val)  # 40% of train + val (15 images), regrouped
    kept = assign_splits(result, indices, val_fraction=0.4, seed=3)
    assert sorted(i for i in own if kept[i] == "val") == sorted(i for i, s in own.items() if s == "val")


@pytest.mark.slow
def test_grad_cam_uses_logits_where_softmax_saturates():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from models.architectures import build_model
    from train.report import grad_cam

    model = build_model("small-cnn", input_size=32, classes=3, dropout=0.0)
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 1e4, bias])  # P(class) rounds to exactly 1 in float32
    x = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    probs = model.predict(x, verbose=0)
    top = probs.argmax(axis=1).astype(np.int32)
    assert (probs.max(axis=1) == 1.0).all()
    import tensorflow as tf
    import tf_keras as keras

    on_softmax = keras.Model(model.inputs, [model.get_layer("gap").input, model.output])
    with tf.GradientTape() as tape:
        maps, p = on_softmax(x, training=False)
        chosen = tf.gather(p, top, axis=1, batch_dims=1)
    assert not np.any(tape.gradient(chosen, maps).numpy())  # Grad-CAM on softmax would be blank here
    cams = grad_cam(model, x, top)
    assert cams.shape == (2, 32, 32) and (cams.max(axis=(1, 2)) > 0.5).all()


def test_weight_average_is_the_running_mean_and_survives_a_resume(tmp_path):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    from train.averaging import WeightAverage

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    average = WeightAverage(model, tmp_path / "average.npz")
    for value in (1.0, 3.0, 8.0):
        model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
        average.add()
    average.save()
    resumed = WeightAverage(model, tmp_path / "average.npz")
    assert resumed.load() and resumed.count == 3
    model.set_weights([np.zeros(w.shape, np.float32) for w in model.get_weights()])
    resumed.add()  # a fourth snapshot, all zeros: (1 + 3 + 8 + 0) / 4
    assert resumed.apply() == 4
    assert all(np.allclose(w, 3.0) for w in model.get_weights())


@pytest.mark.slow
def test_fit_with_weight_averaging_ships_the_average(tmp_path):
    from train.fit import FitConfig, run

    result = run(FitConfig(data=[MINI], out=tmp_path / "avg", input_size=64, epochs=3, batch_size=8,
                           val_fraction=0.25, test_fraction=0.25, seed=1, verbose=0, patience=1,
                           average_from=2, average_every=1, cache_path=tmp_path / "h.json", gradcam_per_kind=1))
    ckpt = result.out / "checkpoints"
    # 12 training images in batches of 8: 2 steps an epoch, snapshots at every step of epochs 2 and 3
    assert json.loads((ckpt / "average.json").read_text()) == {"snapshots": 4, "through_epoch": 3}
    with open(result.out / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3  # patience 1, but no early stopping with averaging
    import models.architectures  # noqa: F401
    import tf_keras as keras

    shipped = keras.models.load_model(str(result.out / "model.keras"), compile=False)
    last = keras.models.load_model(str(ckpt / "last.keras"), compile=False)
    with np.load(ckpt / "average.npz") as data:
        mean = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
    kernels = [i for i, w in enumerate(shipped.weights) if "kernel" in w.name]
    assert kernels
    for i in kernels:  # kernels are the average (BatchNorm statistics are re-estimated afterwards)
        assert np.allclose(shipped.weights[i].numpy(), mean[i], atol=1e-6)
    assert not all(np.allclose(shipped.weights[i].numpy(), last.weights[i].numpy()) for i in kernels)


@pytest.mark.slow
def test_ensemble_answers_with_the_mean_of_its_members_logits(tmp_path):
    import tf_keras as keras

    import models.architectures  # noqa: F401
    from converters.cam import with_cam_output
    from converters.convert import convert
    from train.ensemble import run_ensemble
    from train.fit import FitConfig, run

    def member(seed, split_seed):
        return run(FitConfig(data=[MINI], out=tmp_path / f"s{seed}-{split_seed}", preset="cnn-4block",
                             input_size=32, epochs=1, batch_size=8, val_fraction=0.25, test_fraction=0.25, seed=seed,
                             split_seed=split_seed, verbose=0, cache_path=tmp_path / "h.json",
                             gradcam_per_kind=1)).out

    runs = [member(1, 0), member(2, 0)]
    result = run_ensemble(runs, tmp_path / "ens", name="ens-test", verbose=0)
    for name in ("model.keras", "model.meta.json", "metrics.json", "report.md", "predictions.csv", "splits.csv"):
        assert (result.out / name).is_file(), name
    assert (result.out / "splits.csv").read_bytes() == (runs[0] / "splits.csv").read_bytes()
    assert "Ensemble of 2 runs" in (result.out / "report.md").read_text()
    meta = ModelMetadata.from_dict(json.loads((result.out / "model.meta.json").read_text()))
    assert meta.name == "ens-test" and meta.preprocessing.height == 32

    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype(np.float32)
    members = [keras.models.load_model(str(r / "model.keras"), compile=False) for r in runs]
    ensemble = keras.models.load_model(str(result.out / "model.keras"), compile=False)
    logits = np.mean([np.log(m.predict(x, verbose=0).astype(np.float64)) for m in members], axis=0)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(ensemble.predict(x, verbose=0), expected, atol=1e-5)
    # the head is still GAP -> Dense: the class-activation maps average back to the ensemble's logits
    probs, cam = with_cam_output(ensemble).predict(x, verbose=0)
    mean_cam = cam.mean(axis=(1, 2))
    assert np.allclose(np.exp(mean_cam) / np.exp(mean_cam).sum(axis=1, keepdims=True), probs, atol=1e-5)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=convert(ensemble, "float32", None))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[:1])
    interpreter.invoke()
    assert np.allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0], expected[0],
                       atol=1e-4)

    with pytest.raises(CxrError, match="split differently"):
        run_ensemble([runs[0], member(3, 5)], tmp_path / "bad", verbose=0)

    # --per-source-threshold: the target in every source with 30 abnormal validation images, here none (one
    # small source), so the threshold is the pooled one and the rule says why
    per_source = run_ensemble(runs, tmp_path / "ens-per-source", per_source_threshold=True, verbose=0).metrics
    assert per_source["threshold_sources"] == [] and result.metrics["threshold_sources"] is None
    assert per_source["threshold"] == pytest.approx(result.metrics["threshold"])
    assert "no source had the 30 abnormal images" in per_source["threshold_rule"]
    assert per_source["training"]["config"]["per_source_threshold"] is True


@pytest.mark.slow
def test_pretrain_writes_weights_that_fit_starts_from(tiny_run, tmp_path):
    import models.architectures  # noqa: F401
    import tf_keras as keras
    from models.architectures import build_model
    from train.fit import FitConfig, run
    from train.pretrain import WEIGHTS_FILE, pretrain

    lines = []
    result = pretrain(tiny_run.out, tmp_path / "ssl", epochs=2, batch_size=4, say=lines.append)
    history = json.loads((tmp_path / "ssl" / "history.json").read_text())
    with open(tiny_run.out / "splits.csv") as handle:
        train_rows = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    assert history["images"] == len(train_rows) and history["preset"] == "small-cnn"
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and all(np.isfinite(e["loss"]) for e in history["epochs"])
    assert "internal test" in result["linear_probe_auc"] and json.loads((tmp_path / "ssl" / "probe.json").read_text()) == result
    weights = tmp_path / "ssl" / WEIGHTS_FILE
    # the whole classifier of the base run's preset and size: its convolutions are the pretrained ones
    meta = ModelMetadata.from_dict(json.loads((tiny_run.out / "model.meta.json").read_text()))
    fresh = build_model("small-cnn", input_size=64, classes=len(meta.classes), seed=0)
    loaded = build_model("small-cnn", input_size=64, classes=len(meta.classes), weights=str(weights), seed=0)
    kernels = [i for i, w in enumerate(fresh.weights) if "kernel" in w.name and "conv" in w.name]
    assert kernels and not any(np.allclose(fresh.weights[i].numpy(), loaded.weights[i].numpy()) for i in kernels)
    assert isinstance(loaded, keras.Model)
    tuned = run(FitConfig(data=[MINI], out=tmp_path / "tuned", input_size=64, epochs=1, batch_size=8,
                          val_fraction=0.25, test_fraction=0.25, seed=1, verbose=0, cache_path=tmp_path / "h.json",
                          gradcam_per_kind=1, weights=str(weights)))
    assert f"Started from weights: {weights}" in (tuned.out / "report.md").read_text()
    with pytest.raises(CxrError, match="fewer than one batch") as error:
        pretrain(tiny_run.out, tmp_path / "big", epochs=1, batch_size=10_000, say=lines.append)
    assert error.value.code == ExitCode.USAGE
