"""Model metadata lives inside the .tflite file and survives the round trip."""

from __future__ import annotations

import pytest

from edge.errors import CxrError, ExitCode
from edge.metadata import ModelMetadata, read_model_file
from edge.preprocess import PreprocessSpec
from edge.runtime import TFLiteModel


def test_tiny_model_metadata_round_trip(tiny_model):
    _, meta = read_model_file(tiny_model)
    assert meta.classes == ["normal", "pneumonia", "covid-19"] and meta.normal_index == 0
    assert meta.preprocessing == PreprocessSpec(height=64, width=64)
    assert "Not a diagnostic device" in meta.intended_use
    model = TFLiteModel(tiny_model)
    assert model.identity["name"] == "test-tiny" and model.runtime in ("ai-edge-litert", "tflite-runtime")


def test_embed_replaces_existing_metadata(tiny_model, tmp_path):
    from converters.tflite_metadata import embed_metadata
    data, meta = read_model_file(tiny_model)
    meta.version, meta.threshold = "9.9.9", 0.123
    again = tmp_path / "again.tflite"
    again.write_bytes(embed_metadata(data, meta))
    _, read_back = read_model_file(again)
    assert (read_back.version, read_back.threshold) == ("9.9.9", 0.123)
    # re-embedding drops the old metadata's bytes: the same metadata twice gives the same file, no bigger
    twice = embed_metadata(again.read_bytes(), read_back)
    assert twice == again.read_bytes()
    import numpy as np
    x = np.zeros((64, 64, 1), np.float32)
    np.testing.assert_array_equal(TFLiteModel(again).predict(x).probabilities,
                                  TFLiteModel(tiny_model).predict(x).probabilities)


@pytest.mark.parametrize("change,needle", [
    ({"classes": ["a", "b"]}, "no 'normal' class"),
    ({"threshold": 1.5}, "outside [0, 1]"),
    ({"preprocessing": {"height": 64, "width": 64, "channels": 3}}, "channels=3"),
])
def test_invalid_metadata_is_a_model_error(change, needle):
    base = ModelMetadata(name="x", version="1", classes=["normal", "pneumonia"],
                         preprocessing=PreprocessSpec(), threshold=0.5).to_dict()
    base.update(change)
    with pytest.raises(CxrError) as info:
        ModelMetadata.from_dict(base)
    assert info.value.code == ExitCode.MODEL and needle in str(info.value)
