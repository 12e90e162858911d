"""converters: modes, metadata inside the file, heatmap output, Edge TPU check, size report, pruning,
QAT, and one-line errors for bad inputs. Real images from ../shared/data, a model trained by train/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ExitCode
from edge.metadata import ModelMetadata, file_sha256, read_model_file
from edge.preprocess import PreprocessSpec

from test_converters_support import (CLASSES, INPUT_SIZE, cli, converted, dataset, pruned_model, quantize_report,
                                     trained_run)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
MODES = ("float32", "float16", "dynamic", "int8")


def assert_one_line_error(result, code: int, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.startswith("converters: error:")]
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_meta(folder: Path, size: int = 32) -> None:
    meta = ModelMetadata(name="t", version="0", classes=list(CLASSES), preprocessing=PreprocessSpec(size, size),
                         threshold=0.5)
    (folder / "model.meta.json").write_text(meta.to_json())


# ---- every mode: metadata inside the file ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_carries_its_metadata_inside_the_file(mode):
    path = converted(mode)
    source_meta = json.loads((trained_run() / "model.meta.json").read_text())
    data, meta = read_model_file(path)
    assert meta.quantization == mode
    assert meta.source_model_sha256 == file_sha256(trained_run() / "model.keras")
    assert meta.classes == source_meta["classes"] == list(CLASSES)
    assert meta.threshold == pytest.approx(source_meta["threshold"])
    assert meta.preprocessing.height == INPUT_SIZE and meta.name == "test-screen" and meta.version == "0.0.1"
    assert meta.training_data["splits"] and meta.metrics["validation"]["screening"]["auc"] is not None
    assert meta.outputs == {"probabilities": 0}
    sidecar = json.loads(Path(f"{path}.json").read_text())  # an extra copy, identical to the one inside
    assert sidecar == json.loads(meta.to_json())

    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=data)
    detail = interpreter.get_input_details()[0]
    assert tuple(detail["shape"]) == (1, INPUT_SIZE, INPUT_SIZE, 1)
    assert -1 not in detail["shape_signature"]  # static shapes
    expected = np.int8 if mode == "int8" else np.float32
    assert detail["dtype"] == expected and interpreter.get_output_details()[0]["dtype"] == expected


@pytest.mark.slow
def test_int8_calibration_is_a_stratified_sample_of_the_training_split():
    meta = read_model_file(converted("int8"))[1]
    calibration = meta.training_data["int8_calibration"]
    train_rows = [line for line in (trained_run() / "splits.csv").read_text().splitlines() if line.endswith(",train")]
    assert calibration["images"] == len(train_rows)  # fewer than 200 here: all of the training split, none of val
    assert all(n > 0 for n in calibration["per_class"].values())


@pytest.mark.slow
def test_cxr_edge_screen_reads_the_converted_model(shared_data):
    model = converted("int8")
    image = sorted((dataset() / "PNEUMONIA").iterdir())[0]
    result = cli("screen", str(image), "--model", str(model), "--json", "--no-log", tool="cxr-edge")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["model"] == {"name": "test-screen", "version": "0.0.1",
                            "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}
    assert set(row["probabilities"]) == set(CLASSES)
    assert row["threshold"] == pytest.approx(read_model_file(model)[1].threshold)


# ---- heatmap export ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_cam_output_averages_back_to_the_model_logits():
    from edge.runtime import TFLiteModel
    from edge.decode import load_image
    from edge.preprocess import preprocess

    model = TFLiteModel(converted("float32", cam=True))
    assert set(model.metadata.outputs) == {"probabilities", "cam"}
    image = preprocess(load_image(sorted((dataset() / "NORMAL").iterdir())[3]).pixels, model.metadata.preprocessing)
    out = model.predict(image).outputs
    cam = out["cam"]
    assert cam.ndim == 3 and cam.shape[-1] == len(CLASSES) and cam.shape[0] > 1
    logits = cam.mean(axis=(0, 1))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, out["probabilities"], atol=1e-5)

    int8 = TFLiteModel(converted("int8", cam=True))
    cam8 = int8.predict(image).outputs["cam"]
    assert cam8.shape == cam.shape
    assert np.corrcoef(cam8.ravel(), cam.ravel())[0, 1] > 0.95


# ---- reports -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_int8_report_names_the_layers_that_lose_the_most():
    report = quantize_report(converted("int8"))
    rows = report["layer_error"]
    assert rows and all(np.isfinite(r["rmse_over_scale"]) for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["rmse_over_scale"])
    assert any(r["layer"].startswith(("conv", "logits", "gap")) for r in rows)
    assert report["edgetpu"]["compatible"] is True


@pytest.mark.slow
def test_size_report_command_measures_every_file():
    files = [converted("float32"), converted("int8")]
    result = cli("report", *map(str, files), "--json", "--runs", "5")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["files"]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for row, path in zip(rows, files):
        assert row["bytes"] == path.stat().st_size and 0 < row["gzip_bytes"] < row["bytes"]
        assert row["latency"]["median_ms"] > 0 and row["latency"]["runs"] == 5
        assert row["model"]["name"] == "test-screen"
    assert rows[1]["bytes"] < rows[0]["bytes"] / 2  # int8 weights are a quarter of float32's


# ---- pruning and QAT ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_prune_reaches_the_sparsity_and_prune_then_int8_shrinks_gzip():
    report = json.loads(pruned_model().with_suffix(".report.json").read_text())
    sparsity = {r["layer"]: r["sparsity"] for r in report["layers"]}
    assert abs(sparsity["conv2"] - 0.5) < 0.02 and abs(sparsity["conv3"] - 0.5) < 0.02
    assert sparsity["conv1"] == 0.0 and sparsity["logits"] == 0.0  # first conv and classifier left whole
    assert report["validation_after"]["auc"] > 0.7  # fine-tuning recovered, it did not collapse
    meta = json.loads(pruned_model().with_suffix(".meta.json").read_text())
    assert meta["training_data"]["pruning"]["target_sparsity"] == 0.5
    dense = quantize_report(converted("int8"))["size"]
    sparse = quantize_report(converted("int8", source="pruned"))["size"]
    assert sparse["sparsity"] > 0.45 and dense["sparsity"] < 0.05
    assert sparse["gzip_bytes"] < 0.8 * dense["gzip_bytes"]


@pytest.mark.slow
def test_qat_writes_a_full_integer_model_with_its_training_recorded(tmp_path):
    from converters.qat import QatOptions, qat_model

    out = tmp_path / "qat.tflite"
    report = qat_model(trained_run() / "model.keras", out, QatOptions(epochs=1, batch_size=16, data=[dataset()]))
    meta = read_model_file(out)[1]
    assert meta.quantization == "int8" and "quantization_aware_training" in meta.training_data
    assert report["size"]["bytes"] == out.stat().st_size and report["edgetpu"]["compatible"]


# ---- Edge TPU check ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_edgetpu_check_passes_int8_and_lists_float_fallback():
    ok = cli("edgetpu-check", str(converted("int8")), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ops_on_cpu"] == 0
    bad = cli("edgetpu-check", str(converted("float32")), "--json")
    assert bad.returncode == ExitCode.CHECK_FAILED
    result = json.loads(bad.stdout)
    assert not result["compatible"] and result["ops_on_cpu"] == result["ops_total"]
    assert "FLOAT32" in result["summary"]


def _hard_swish_model(folder: Path) -> Path:
    """A small CNN with MobileNetV3's hard-swish activation, which the Edge TPU does not run."""
    import tf_keras as keras

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    write_meta(folder)
    return folder / "model.keras"


@pytest.mark.slow
def test_edgetpu_refuses_a_model_with_an_unsupported_op(tmp_path):
    model = _hard_swish_model(tmp_path)
    out = tmp_path / "m.tflite"
    result = cli("quantize", str(model), "--data", str(dataset()), "--out", str(out), "--edgetpu",
                 "--calibration-size", "8")
    assert_one_line_error(result, ExitCode.CHECK_FAILED, "Edge TPU", "HARD_SWISH", "CPU")
    assert not out.exists()


def test_edgetpu_rules_flag_new_op_versions_float_tensors_and_dynamic_shapes():
    from converters.edgetpu import check_edgetpu, op_problems
    from converters.tflite_model import Graph, Op, Tensor

    def tensor(kind="INT8", signature=(1, 8, 8, 4), constant=False):
        return Tensor(0, "t", kind, (1, 8, 8, 4), signature, constant, b"", 0)

    assert op_problems(Op(0, "CONV_2D", 3, [tensor()], [tensor()], None)) == []
    assert "newer than compiler v16" in op_problems(Op(0, "CONV_2D", 6, [tensor()], [tensor()], None))[0]
    assert op_problems(Op(0, "HARD_SWISH", 1, [tensor()], [tensor()], None)) == ["not supported by the Edge TPU"]
    assert "FLOAT32" in op_problems(Op(0, "ADD", 1, [tensor("FLOAT32")], [tensor()], None))[0]
    assert "dynamic shape" in op_problems(Op(0, "ADD", 1, [tensor(signature=(-1, 8, 8, 4))], [tensor()], None))
    ops = [Op(0, "CONV_2D", 3, [tensor()], [tensor()], None), Op(1, "HARD_SWISH", 1, [tensor()], [tensor()], None),
           Op(2, "CONV_2D", 3, [tensor()], [tensor()], None)]
    report = check_edgetpu(Graph(ops, [], 1, ""))
    # the compiler cuts once: everything from the first unsupported op on runs on the CPU
    assert [op.on_tpu for op in report.ops] == [True, False, False]
    assert "2 of 3 ops would run on the CPU" in report.summary()


# ---- bad inputs: one line, no traceback ---------------------------------------------------------------

def test_a_file_that_is_not_a_keras_model_is_refused(tmp_path, tiny_model):
    write_meta(tmp_path)
    text = tmp_path / "model.keras"
    text.write_text("not a model\n")
    assert_one_line_error(cli("quantize", str(text), "--mode", "float32", "--out", str(tmp_path / "x.tflite")),
                          ExitCode.MODEL, "not a Keras model")
    tflite = tmp_path / "model.h5"
    shutil.copy(tiny_model, tflite)
    assert_one_line_error(cli("quantize", str(tflite), "--mode", "float32", "--out", str(tmp_path / "x.tflite")),
                          ExitCode.MODEL, "TFLite model, not a Keras model")


def test_missing_metadata_points_to_meta_option(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04")
    assert_one_line_error(cli("quantize", str(tmp_path / "model.keras"), "--mode", "float32", "--out",
                              str(tmp_path / "x.tflite")), ExitCode.MODEL, "--meta")


def test_empty_and_unlabelled_data_folders_are_refused(tmp_path, shared_data):
    write_meta(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04")  # the data is checked before the model is loaded
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "x.tflite")
    assert_one_line_error(cli("quantize", str(tmp_path / "model.keras"), "--data", str(empty), "--out", out),
                          ExitCode.DATA, str(empty))
    loose = tmp_path / "loose"  # images without class folders or a label file
    loose.mkdir()
    for path in sorted((shared_data / "kermany-pneumonia" / "train" / "NORMAL").iterdir())[:3]:
        shutil.copy(path, loose / path.name)
    assert_one_line_error(cli("quantize", str(tmp_path / "model.keras"), "--data", str(loose), "--out", out),
                          ExitCode.DATA, str(loose))


def test_option_mistakes_are_usage_errors(tmp_path):
    write_meta(tmp_path)
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK\x03\x04")
    out = str(tmp_path / "x.tflite")
    assert_one_line_error(cli("quantize", str(model), "--mode", "int8", "--out", out), ExitCode.USAGE, "--data")
    assert_one_line_error(cli("quantize", str(model), "--mode", "float16", "--edgetpu", "--out", out),
                          ExitCode.USAGE, "--edgetpu needs --mode int8")
    assert_one_line_error(cli("quantize", str(model), "--mode", "int4", "--out", out), ExitCode.USAGE, "int4")
