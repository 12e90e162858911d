"""Shared by the review tests: a real two-output (probabilities + class activation map) TFLite model,
the cxr-edge CLI run as a process, and a station whose log was written by a real watcher."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "tests" / "data" / "cxr-mini"
SAMPLES = ROOT / "models" / "samples"
NASTY_NAME = '<img src=x onerror="alert(1)"> & co.jpg'  # a file name that must be escaped in the page


def build_cam_tflite(path: Path, size: int = 64) -> Path:
    """A small untrained CNN whose head is conv -> class maps -> GAP -> softmax, exported with both the
    probabilities and the class activation maps ("cam") as outputs, with cxr-edge metadata."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras

    from converters.tflite_metadata import embed_metadata
    from edge.metadata import ModelMetadata
    from edge.preprocess import PreprocessSpec

    keras.utils.set_random_seed(3)
    image = keras.layers.Input((size, size, 1))
    features = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(image)
    cam = keras.layers.Conv2D(3, 1, name="cam")(features)
    probabilities = keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(cam))
    model = keras.Model(image, [probabilities, cam])
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    from ai_edge_litert.interpreter import Interpreter
    ranks = {len(d["shape"]): i for i, d in enumerate(Interpreter(model_content=tflite).get_output_details())}
    metadata = ModelMetadata(
        name="test-cam", version="0.0.1", classes=["normal", "pneumonia", "covid-19"],
        preprocessing=PreprocessSpec(height=size, width=size), threshold=0.5,
        threshold_rule="fixed for tests", architecture="tiny-cam-test-cnn",
        training_data={"known_limitations": ["untrained test network: its scores mean nothing"]},
        outputs={"probabilities": ranks[2], "cam": ranks[4]})
    path.write_bytes(embed_metadata(tflite, metadata))
    return path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"cxr-edge {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def watch_once(folder: Path, model: Path, log: Path, *extra: str) -> None:
    cli("watch", str(folder), "--model", str(model), "--log", str(log), "--once", "--settle", "0.1",
        "--retry-delay", "0.1", *extra)


def make_station(base: Path, model: Path) -> dict:
    """A log with referred, normal and quarantined exams; the originals were moved away after screening."""
    log, done, failed = base / "review.sqlite", base / "done", base / "failed"
    referred_in, normal_in = base / "inbox-a", base / "inbox-b"
    referred_in.mkdir()
    normal_in.mkdir()
    files = {}
    for source in [*sorted((MINI / "Covid").glob("*.jpg"))[:3], SAMPLES / "covid-adult.png"]:
        files[shutil.copy(source, referred_in / source.name)] = "refer"
    files[shutil.copy(sorted((MINI / "PNEUMONIA").glob("*.jpg"))[0], referred_in / NASTY_NAME)] = "refer"
    for source in sorted((MINI / "NORMAL").glob("*.jpg"))[:2]:
        files[shutil.copy(source, normal_in / source.name)] = "normal"
    (referred_in / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300 + b"IEND\xaeB`\x82")
    hashes = {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in files}
    moves = ("--move-done", str(done), "--move-failed", str(failed))
    watch_once(referred_in, model, log, "--threshold", "0.0", *moves)  # everything referred
    watch_once(normal_in, model, log, "--threshold", "1.0", *moves)  # nothing referred
    assert not any(referred_in.iterdir()) and not any(normal_in.iterdir())
    return {"log": log, "files": {str(p): d for p, d in files.items()}, "hashes": hashes,
            "garbage": str(referred_in / "garbage.png"), "base": base}


def listed(log: Path, *args: str) -> list[dict]:
    out = cli("review", "list", "--json", "--log", str(log), *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def export(log: Path, out: Path, *args: str) -> str:
    return cli("review", "export", str(out), "--log", str(log), *args).stdout


def bundle_data(out: Path) -> dict:
    """The bundle's embedded data (bundle id, station id, exam id -> image sha256), as the page's script reads it."""
    page = (out / "index.html").read_text()
    start = page.index('<script type="application/json" id="bundle-data">') + len(
        '<script type="application/json" id="bundle-data">')
    return json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium (Debian: apt-get install -y chromium)")
