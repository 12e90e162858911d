"""The bundled children's model, chosen by name: `cxr-edge screen -m cxr-pediatric`."""

from __future__ import annotations

import json
import subprocess
import sys

from edge.metadata import read_model_file
from edge.paths import bundled_models, resolve_model
from images import NORMAL_SAMPLE, PNEUMONIA_SAMPLE


def _screen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--no-log", *args], capture_output=True, text=True,
                          timeout=120)


def test_bundled_models_are_named_and_the_gate_is_not_one_of_them():
    assert bundled_models() == ["cxr-default", "cxr-pediatric"]
    assert resolve_model("cxr-pediatric").name == "cxr-pediatric.tflite"
    assert resolve_model(None).name == "cxr-default.tflite"


def test_pediatric_model_is_a_two_class_int8_model_that_says_it_is_for_children():
    path = resolve_model("cxr-pediatric")
    assert path.stat().st_size < 5 * 1024 * 1024
    _, meta = read_model_file(path)
    assert (meta.name, meta.quantization, meta.classes) == ("cxr-pediatric", "int8", ["normal", "pneumonia"])
    assert "children" in meta.intended_use and "not a diagnostic" in meta.intended_use.lower()
    assert any("adults are out of scope" in item for item in meta.training_data["known_limitations"])
    assert meta.training_data.get("held_out_sources") and "cam" in meta.outputs
    assert 0.0 < meta.threshold < 1.0


def test_screen_by_model_name_ranks_the_pneumonia_child_above_the_normal_child():
    done = _screen("-m", "cxr-pediatric", "--json", str(NORMAL_SAMPLE), str(PNEUMONIA_SAMPLE))
    assert done.returncode in (0, 1), done.stderr
    results = {r["file"]: r for r in map(json.loads, done.stdout.splitlines())}
    normal, pneumonia = results[str(NORMAL_SAMPLE)], results[str(PNEUMONIA_SAMPLE)]
    assert normal["model"]["name"] == pneumonia["model"]["name"] == "cxr-pediatric"
    assert pneumonia["abnormality"] > normal["abnormality"]
    assert set(pneumonia["probabilities"]) == {"normal", "pneumonia"}


def test_an_unknown_model_name_is_one_line_naming_the_bundled_models():
    done = _screen("-m", "cxr-pediatrc", str(NORMAL_SAMPLE))
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0
    assert "cxr-pediatrc" in done.stderr and "cxr-default, cxr-pediatric" in done.stderr


def test_version_names_every_bundled_model_with_its_ages():
    done = subprocess.run([sys.executable, "-m", "edge.cli", "version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("default model: cxr-default ") and lines[1].endswith("ages 15 and over")
    assert lines[2].startswith("bundled model (-m cxr-pediatric): cxr-pediatric ") and lines[2].endswith("ages under 15")
