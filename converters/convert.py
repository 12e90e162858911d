"""Keras -> TFLite in one of four modes, with a static batch of one image.

float32: reference conversion, no quantization.
float16: weights stored as float16 (half the size), computed in float32 on CPUs.
dynamic: weights int8, activations float (dynamic-range quantization).
int8:    full-integer: int8 weights, activations, input and output, calibrated on real images.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edge.errors import CxrError, ExitCode

MODES = ("float32", "float16", "dynamic", "int8")


def representative(images: np.ndarray):
    """The calibration generator the converter asks for: one preprocessed image per step."""
    def generate() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype(np.float32)]
    return generate


def make_converter(model, mode: str, calibration: np.ndarray | None = None):
    """A configured TFLiteConverter whose input is fixed at (1, H, W, C): static shapes everywhere."""
    import tensorflow as tf

    if mode not in MODES:
        raise CxrError(f"unknown mode {mode!r} (choose {', '.join(MODES)})", code=ExitCode.USAGE,
                       reason="bad_option")
    shape = [1, *model.inputs[0].shape[1:]]
    function = tf.function(lambda image: model(image, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="image"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if calibration is None or len(calibration) == 0:
            raise CxrError("int8 needs calibration images (--data)", code=ExitCode.DATA, reason="no_calibration")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def convert(model, mode: str, calibration: np.ndarray | None = None) -> bytes:
    converter = make_converter(model, mode, calibration)
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the MLIR converter reports unsupported ops as ConverterError and others
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CxrError(f"TFLite conversion ({mode}) failed: {first}", code=ExitCode.MODEL,
                       reason="conversion_failed") from None


def output_indices(tflite_bytes: bytes, with_cam: bool) -> dict[str, int]:
    """Which interpreter output is which: TFLite may reorder a model's outputs, so look at their ranks."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=tflite_bytes).get_output_details()
    if not with_cam:
        return {"probabilities": 0}
    ranks = {len(d["shape"]): i for i, d in enumerate(details)}
    if len(details) != 2 or set(ranks) != {2, 4}:
        raise CxrError(f"converted model has outputs {[tuple(d['shape']) for d in details]}; expected "
                       "probabilities (1, classes) and cam (1, h, w, classes)", code=ExitCode.MODEL,
                       reason="conversion_failed")
    return {"probabilities": ranks[2], "cam": ranks[4]}
