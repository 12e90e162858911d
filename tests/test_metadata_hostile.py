"""Malformed model metadata (issue 9) is exit 3 with one line, never a traceback or a misleading result.
The bad metadata is written into real .tflite files, the way a hand-edited or hostile model would carry it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.metadata import read_model_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "models" / "samples" / "normal-child.png"


class RawMetadata:
    """What converters.tflite_metadata.embed_metadata needs, carrying any JSON text."""

    def __init__(self, text: str):
        self.text = text

    def validate(self) -> None:
        pass

    def to_json(self) -> str:
        return self.text


def with_metadata(model: Path, out: Path, text: str) -> Path:
    from converters.tflite_metadata import embed_metadata

    out.write_bytes(embed_metadata(model.read_bytes(), RawMetadata(text)))
    return out


def screen_exit(model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_EDGE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--no-log", "-m", str(model), str(SAMPLE)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def changed(tiny_model: Path, **changes) -> str:
    _, meta = read_model_file(tiny_model)
    data = meta.to_dict()
    for key, value in changes.items():
        if key.startswith("pre_"):
            data["preprocessing"][key[4:]] = value
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("changes,needle", [
    ({"outputs": {"probabilities": 7}}, "index 7"),
    ({"pre_height": 64.0, "pre_width": 64.0}, "not a whole number"),
    ({"classes": ["normal", "[bold red]pneumonia[/]", "covid-19"]}, "plain words"),
    ({"classes": ["normal", "pneumonia\x1b[2J", "covid-19"]}, "plain words"),
    ({"name": ["not", "text"]}, "printable text"),
    ({"outputs": {"probabilities": "0"}}, "whole numbers"),
])
def test_malformed_metadata_is_exit_3_in_one_line(tiny_model, tmp_path, changes, needle):
    bad = with_metadata(tiny_model, tmp_path / "bad.tflite", changed(tiny_model, **changes))
    run = screen_exit(bad, tmp_path)
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and needle in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_deeply_nested_metadata_is_exit_3(tiny_model, tmp_path):
    bomb = changed(tiny_model)[:-1] + ', "training_data": ' + "[" * 100000 + "]" * 100000 + "}"
    run = screen_exit(with_metadata(tiny_model, tmp_path / "deep.tflite", bomb), tmp_path)
    assert run.returncode == 3 and "Traceback" not in run.stderr and "nested" in run.stderr, run.stderr


def test_swapped_outputs_are_exit_3(tmp_path):
    """A model with a class-activation map and probabilities, whose metadata names them the wrong way round."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras

    from converters.tflite_metadata import embed_metadata
    from edge.metadata import ModelMetadata
    from edge.preprocess import PreprocessSpec

    keras.utils.set_random_seed(0)
    inputs = keras.layers.Input((32, 32, 1))
    cam = keras.layers.Conv2D(3, 3, padding="same", name="cam")(inputs)  # 3 maps, one per class
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.GlobalAveragePooling2D()(cam))
    flat = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, [probs, cam])).convert()
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=flat).get_output_details()
    right = {("probabilities" if len(d["shape"]) == 2 else "cam"): i for i, d in enumerate(details)}
    swapped = {"probabilities": right["cam"], "cam": right["probabilities"]}
    meta = ModelMetadata(name="swap", version="1", classes=["normal", "pneumonia", "covid-19"],
                         preprocessing=PreprocessSpec(height=32, width=32), threshold=0.5, outputs=swapped)
    model = tmp_path / "swapped.tflite"
    model.write_bytes(embed_metadata(flat, meta))
    run = screen_exit(model, tmp_path)
    assert run.returncode == 3 and "Traceback" not in run.stderr and "swapped" in run.stderr, run.stderr
    meta.outputs = right
    model.write_bytes(embed_metadata(flat, meta))
    assert screen_exit(model, tmp_path).returncode == 0
