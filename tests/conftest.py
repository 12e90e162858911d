"""Shared fixtures: real data paths (skipped when absent) and a small real TFLite model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real chest X-rays not available at {SHARED_DATA} (see README, 'Data')")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's real review log and calibrations."""
    home = tmp_path_factory.mktemp("cxr-home")
    monkeypatch.setenv("CXR_EDGE_HOME", str(home))
    monkeypatch.delenv("CXR_EDGE_LOG", raising=False)
    monkeypatch.delenv("CXR_EDGE_MODEL", raising=False)


def build_tiny_tflite(path: Path, *, size: int = 64, quantize: bool = False) -> Path:
    """A small, untrained but real Keras CNN converted to TFLite with cxr-edge metadata.

    For tests of mechanics (I/O, logging, the watcher) where the answer itself does not matter.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from converters.tflite_metadata import embed_metadata
    from edge.metadata import ModelMetadata
    from edge.preprocess import PreprocessSpec

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((size, size, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        def representative():
            rng = np.random.default_rng(0)
            for _ in range(8):
                yield [rng.random((1, size, size, 1), dtype=np.float32)]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    metadata = ModelMetadata(
        name="test-tiny", version="0.0.0", classes=["normal", "pneumonia", "covid-19"],
        preprocessing=PreprocessSpec(height=size, width=size), threshold=0.5,
        threshold_rule="fixed at 0.5 for tests", architecture="tiny-test-cnn",
        quantization="int8" if quantize else "float32",
    )
    path.write_bytes(embed_metadata(converter.convert(), metadata))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_tflite(tmp_path_factory.mktemp("models") / "tiny.tflite")


@pytest.fixture(scope="session")
def tiny_int8_model(tmp_path_factory) -> Path:
    return build_tiny_tflite(tmp_path_factory.mktemp("models") / "tiny-int8.tflite", quantize=True)
