"""Two-output export for heatmaps on the device (TFLite has no gradients).

For a head `features -> GlobalAveragePooling2D -> [Dropout] -> Dense(classes) -> softmax`, the
class activation map is the Dense layer applied at every position of the feature map:
cam[y, x, k] = features[y, x] . kernel[:, k] + bias[k]. It is built inside the graph as a 1x1
convolution with the Dense weights, so the edge only has to upsample it to the image size.
Averaging the map over y and x gives back the model's logits exactly (GAP and Dense are linear).
"""

from __future__ import annotations

from edge.errors import CxrError, ExitCode

CAM_OUTPUT = "cam"
PASS_THROUGH = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "ActivityRegularization")


def _producer(tensor):
    return tensor._keras_history.layer


def find_cam_head(model):
    """(feature-map tensor, Dense layer) of a GAP -> Dense head; CxrError when the model has none."""
    layer = _producer(model.outputs[0])
    while type(layer).__name__ in ("Activation", "Softmax"):
        layer = _producer(layer.input)
    if type(layer).__name__ != "Dense":
        raise _no_head(f"its output comes from {type(layer).__name__} {layer.name!r}, not a Dense layer")
    dense = layer
    layer = _producer(dense.input)
    while type(layer).__name__ in PASS_THROUGH:
        layer = _producer(layer.input)
    if type(layer).__name__ not in ("GlobalAveragePooling2D", "GlobalAvgPool2D"):
        raise _no_head(f"the Dense layer {dense.name!r} is fed by {type(layer).__name__} {layer.name!r}, "
                       "not GlobalAveragePooling2D")
    if getattr(layer, "keepdims", False):
        raise _no_head("its GlobalAveragePooling2D keeps dimensions")
    features = layer.input
    if len(features.shape) != 4:
        raise _no_head(f"the pooled features have shape {tuple(features.shape)}, not (batch, h, w, c)")
    return features, dense


def with_cam_output(model):
    """A model with two outputs: [probabilities, cam (1, h, w, classes) in logit units]."""
    import tf_keras as keras

    features, dense = find_cam_head(model)
    kernel, bias = dense.get_weights() if dense.use_bias else (dense.get_weights()[0], None)
    channels, classes = kernel.shape
    conv = keras.layers.Conv2D(classes, 1, use_bias=bias is not None, name=CAM_OUTPUT)
    cam = conv(features)
    conv.set_weights([kernel.reshape(1, 1, channels, classes)] + ([bias] if bias is not None else []))
    return keras.Model(model.inputs, [model.outputs[0], cam], name=f"{model.name}_with_cam")


def _no_head(why: str) -> CxrError:
    return CxrError(f"--cam needs a GlobalAveragePooling2D -> Dense classification head; {why}",
                    code=ExitCode.MODEL, reason="no_cam_head")
