"""Which layers lose the most under int8: TFLite's QuantizationDebugger, per layer.

For every quantized op the debugger runs the float op on the same (dequantized) inputs and
compares it with the int8 op's output. `rmse_over_scale` is the error in units of the output's
quantization step: about 0.29 (1/sqrt(12)) is pure rounding; values well above 1 mark a layer
whose range is badly calibrated (an outlier stretched it, or hard-swish/sigmoid-like ops that
int8 represents poorly). `correlation` near 1 means the layer still carries the same signal.
"""

from __future__ import annotations

import warnings

import numpy as np

from .convert import make_converter, representative

IDEAL_RMSE_OVER_SCALE = 1.0 / np.sqrt(12.0)


def _rmse_over_scale(f, q, scale, zero_point) -> float:
    dequantized = (q.astype(np.float64) - zero_point) * scale
    return float(np.sqrt(np.mean((f - dequantized) ** 2)) / scale) if scale else float("nan")


def _correlation(f, q, scale, zero_point) -> float:
    f, d = f.ravel(), (q.ravel().astype(np.float64) - zero_point) * scale
    if f.std() == 0 or d.std() == 0:
        return 1.0 if np.allclose(f, d) else 0.0
    return float(np.corrcoef(f, d)[0, 1])


def layer_errors(model, calibration: np.ndarray, debug_images: np.ndarray, top: int = 10) -> list[dict]:
    """Per-layer int8 error on `debug_images`, worst first (at most `top` rows)."""
    import tensorflow as tf

    converter = make_converter(model, "int8", calibration)
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"rmse_over_scale": _rmse_over_scale, "correlation": _correlation})
    with warnings.catch_warnings():  # the debugger still uses tf.lite.Interpreter, deprecated for LiteRT
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative(debug_images), debug_options=options)
        debugger.run()
    rows = []
    for tensor, stats in debugger.layer_statistics.items():
        rows.append({
            "layer": layer_name(tensor),
            "tensor": tensor,
            "rmse_over_scale": _scalar(stats.get("rmse_over_scale")),
            "correlation": _scalar(stats.get("correlation")),
            "max_abs_error": _scalar(stats.get("max_abs_error")),
            "mean_squared_error": _scalar(stats.get("mean_squared_error")),
        })
    rows.sort(key=lambda r: -(r["rmse_over_scale"] if np.isfinite(r["rmse_over_scale"]) else np.inf))
    return rows[:top]


def layer_name(tensor: str) -> str:
    """'NumericVerify/model/block_3/Relu;model/...:12' -> 'block_3/Relu'."""
    name = tensor.removeprefix("NumericVerify/").split(";")[0].rsplit(":", 1)[0]
    parts = name.split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else name


def _scalar(value) -> float:
    if value is None:
        return float("nan")
    return round(float(np.mean(value)), 6)
