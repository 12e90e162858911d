"""Every seed architecture is built, takes one real training step and converts to TFLite.

At the smallest input each preset allows, random weights (weights=None: nothing is downloaded), on
real chest X-rays from tests/data/cxr-mini. The converted file must give the Keras model's answer.
Most of the time goes into the float32 conversion of the large backbones (DenseNet121: about
2 minutes on 2 busy cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

MINI = Path(__file__).parent / "data" / "cxr-mini"

# preset -> conversion mode: int8 for the small ones (they are meant for the edge), float32 for the large
SEED_ARCHITECTURES = {
    "dense": "int8", "single-conv": "int8", "small-cnn": "int8", "small-cnn-dropout": "int8", "small-cnn-l2": "int8",
    "cnn-4block": "int8", "mobilenetv2-0.35": "int8", "mobilenetv3small": "float32",
    "vgg16": "float32", "vgg19": "float32", "resnet50v2": "float32", "xception": "float32",
    "inceptionv3": "float32", "densenet121": "float32",
}


def _images(size: int) -> tuple[np.ndarray, np.ndarray]:
    from edge.decode import load_image
    from edge.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec(height=size, width=size)
    files = [sorted((MINI / c).glob("*.jpg"))[0] for c in ("NORMAL", "PNEUMONIA", "Covid")]
    x = np.stack([preprocess(load_image(f).pixels, spec) for f in files]).astype(np.float32)
    return x, np.array([0, 1, 2], np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(SEED_ARCHITECTURES))
def test_seed_architecture_builds_trains_one_step_and_converts(preset):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from converters.convert import convert
    from models.architectures import PRESETS, build_model

    size = PRESETS[preset].min_size
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model(preset, input_size=size, classes=3, weights=None)
    assert model.input_shape == (None, size, size, 1) and model.output_shape == (None, 3)
    # eager: tracing a training graph of DenseNet121 took 35 s, the eager step 5 s (2 busy cores)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = _images(size)
    before = [w.copy() for w in model.get_layer("logits").get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = model.get_layer("logits").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "one step changed no head weight"

    mode = SEED_ARCHITECTURES[preset]
    data = convert(model, mode, x if mode == "int8" else None)
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    expected = model(x[:1], training=False).numpy()[0]
    if mode == "int8":
        scale, zero = inp["quantization"]
        interpreter.set_tensor(inp["index"], np.clip(np.round(x[:1] / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        o_scale, o_zero = out["quantization"]
        got = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - o_zero) * o_scale
        assert got.sum() == pytest.approx(1.0, abs=0.05)
        assert np.abs(got - expected).max() < 0.1
    else:
        interpreter.set_tensor(inp["index"], x[:1])
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])[0]
        assert got == pytest.approx(expected, abs=1e-4)


def test_mixstyle_mixes_style_in_training_keeps_content_and_vanishes_when_converted(tmp_path):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from converters.convert import convert
    from models.architectures import MixStyle, build_model

    x, y = _images(32)
    layer = MixStyle(p=1.0, seed=3)
    assert np.array_equal(layer(x, training=False).numpy(), x)  # identity when screening
    mixed = layer(x, training=True).numpy()
    assert not np.allclose(mixed, x)
    mu, sd = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
    m_mu, m_sd = mixed.mean(axis=(1, 2)), mixed.std(axis=(1, 2))
    for i in range(len(x)):  # each image's new style lies between its own and another image's of the batch
        assert mu.min() - 1e-5 <= m_mu[i, 0] <= mu.max() + 1e-5 and sd.min() - 1e-5 <= m_sd[i, 0] <= sd.max() + 1e-5
        content, kept = (x[i] - mu[i]) / sd[i], (mixed[i] - m_mu[i]) / m_sd[i]  # the content is unchanged
        assert np.allclose(content, kept, atol=1e-3)
    same = np.repeat(x[:1], 3, axis=0)  # one style only: nothing to mix
    assert np.allclose(layer(same, training=True).numpy(), same, atol=1e-5)

    keras.utils.set_random_seed(0)
    model = build_model("cnn-4block", input_size=32, classes=3, mixstyle=0.5)
    assert [layer.name for layer in model.layers if isinstance(layer, MixStyle)] == ["mixstyle1", "mixstyle2"]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.train_on_batch(x, y))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.get_layer("mixstyle2").p == 0.5
    expected = model(x[:1], training=False).numpy()[0]
    assert np.allclose(loaded(x[:1], training=False).numpy()[0], expected, atol=1e-6)
    interpreter = Interpreter(model_content=convert(model, "float32", None), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x[:1])
    interpreter.invoke()
    assert interpreter.get_tensor(out["index"])[0] == pytest.approx(expected, abs=1e-4)
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    assert not ops & {"RandomGamma", "RandomShuffle", "RandomUniform", "FlexRandomGamma"}, ops


def test_mixstyle_is_refused_for_transfer_presets():
    from edge.errors import CxrError
    from models.architectures import build_model

    with pytest.raises(CxrError, match="mixstyle"):
        build_model("mobilenetv2-0.35", input_size=32, classes=3, mixstyle=0.5)


def test_weights_saved_with_another_class_count_load_all_but_the_head(tmp_path):
    """Self-supervised or 4-class weights start a 2-class model: every layer but `logits` comes from the file."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from models.architectures import build_model

    four = build_model("cnn-4block", input_size=32, classes=4, weights=None, seed=1)
    path = tmp_path / "four.weights.h5"
    four.save_weights(str(path))
    two = build_model("cnn-4block", input_size=32, classes=2, weights=str(path), seed=2)
    for mine, theirs in zip(two.layers, four.layers):
        if mine.name == "logits":
            assert mine.get_weights()[0].shape == (256, 2)
        else:
            for a, b in zip(mine.get_weights(), theirs.get_weights()):
                np.testing.assert_array_equal(a, b)
    assert any(w.size for layer in two.layers if layer.name != "logits" for w in layer.get_weights())
