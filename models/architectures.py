"""Model presets: baselines, small CNNs trained from scratch and Keras-applications transfer models, one head.

Every model takes the output of edge.preprocess.preprocess: (H, W, 1) float32 in [0, 1]. A
backbone that wants three channels or another value range gets it from the `GreyToBackbone`
layer inside the graph, so data stays one grey channel on disk, in caches and on the device.
Every preset ends in `features -> GlobalAveragePooling2D("gap") -> Dropout -> Dense("logits")
-> softmax("probabilities")`, which the converters turn into a class-activation-map output.

`import models.architectures` registers the custom layer, after which
`tf_keras.models.load_model("RUN/model.keras")` loads any model cxr-train wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from edge.errors import CxrError, ExitCode  # noqa: E402

BACKBONE = "backbone"
FEATURES_POOL = "gap"
MIXSTYLE_BLOCKS = 2  # MixStyle after the first two conv blocks (style lives in early features)

# Value range each Keras application expects, as (scale, offset) per channel applied to x in [0, 1]:
# "tf" -> [-1, 1]; "raw" -> [0, 255] (models with their own rescaling layers); "torch" -> ImageNet
# mean/std; "caffe" -> BGR, ImageNet mean subtracted, [0, 255].
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
SCALINGS = {
    "unit": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "tf": ((2.0, 2.0, 2.0), (-1.0, -1.0, -1.0)),
    "raw": ((255.0, 255.0, 255.0), (0.0, 0.0, 0.0)),
    "torch": (tuple(1 / s for s in _IMAGENET_STD), tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD))),
    "caffe": ((255.0, 255.0, 255.0), (-103.939, -116.779, -123.68)),
}


@keras.saving.register_keras_serializable(package="cxr_edge")
class GreyToBackbone(keras.layers.Layer):
    """(H, W, 1) in [0, 1] -> (H, W, 3) in the backbone's value range, computed on the fly."""

    def __init__(self, scaling: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {scaling!r}")
        self.scaling = scaling

    def call(self, inputs):
        scale, offset = SCALINGS[self.scaling]
        grey = tf.cast(inputs, self.compute_dtype)
        rgb = tf.concat([grey, grey, grey], axis=-1)
        return rgb * tf.constant(scale, self.compute_dtype) + tf.constant(offset, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self):
        return {**super().get_config(), "scaling": self.scaling}


@keras.saving.register_keras_serializable(package="cxr_edge")
class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al., ICLR 2021), a domain-generalisation layer for early feature maps. In training,
    with probability `p` per batch, each image's per-channel feature mean and standard deviation (its
    "style": contrast, sharpness, texture of its hospital's films) are mixed with those of another image of
    the batch, lambda ~ Beta(alpha, alpha); the content (normalised features) is kept. At inference it is the
    identity, so converted .tflite files hold no trace of it.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.p, self.alpha, self.eps, self.seed = float(p), float(alpha), float(eps), seed

    def call(self, inputs, training=None):
        if not training or not self.p:
            return inputs
        x = tf.cast(inputs, tf.float32)
        batch = tf.shape(x)[0]
        mu = tf.stop_gradient(tf.reduce_mean(x, axis=[1, 2], keepdims=True))
        sig = tf.stop_gradient(tf.sqrt(tf.math.reduce_variance(x, axis=[1, 2], keepdims=True) + self.eps))
        g1 = tf.random.gamma([batch, 1, 1, 1], self.alpha, seed=self.seed)
        g2 = tf.random.gamma([batch, 1, 1, 1], self.alpha, seed=None if self.seed is None else self.seed + 1)
        lam = g1 / tf.maximum(g1 + g2, 1e-12)
        perm = tf.random.shuffle(tf.range(batch), seed=self.seed)
        mixed = (x - mu) / sig * (lam * sig + (1 - lam) * tf.gather(sig, perm)) + (
            lam * mu + (1 - lam) * tf.gather(mu, perm))
        apply = tf.random.uniform([], seed=self.seed) < self.p
        return tf.cast(tf.where(apply, mixed, x), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "p": self.p, "alpha": self.alpha, "eps": self.eps, "seed": self.seed}


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "cnn" or "transfer"
    description: str
    build_features: Callable  # (inputs, weights, seed) -> feature-map tensor
    min_size: int = 32
    edge: bool = False  # small enough for a Raspberry Pi / Edge TPU


def _small_cnn(filters=(32, 64, 128), dropout: float = 0.0, l2: float = 0.0, batch_norm: bool = False,
               pool_last: bool = False):
    def build(inputs, weights, seed, mixstyle: float = 0.0):
        reg = keras.regularizers.l2(l2) if l2 else None
        x = inputs
        for i, n in enumerate(filters):
            x = keras.layers.Conv2D(n, 3, padding="same", use_bias=not batch_norm, kernel_regularizer=reg,
                                    activation=None if batch_norm else "relu", name=f"conv{i + 1}")(x)
            if batch_norm:
                # momentum 0.9, not Keras' 0.99: with ~100-200 steps an epoch the 0.99 moving statistics lag
                # the weights so far that inference-mode outputs collapse to one class (measured here).
                x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
                x = keras.layers.Activation("relu", name=f"relu{i + 1}")(x)
            if i < len(filters) - 1 or pool_last:
                x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
                if dropout:
                    x = keras.layers.Dropout(dropout, seed=seed, name=f"drop{i + 1}")(x)
            if mixstyle and i < MIXSTYLE_BLOCKS:
                x = MixStyle(mixstyle, seed=seed * 10 + i, name=f"mixstyle{i + 1}")(x)
        return x
    return build


def _dense(units: int = 128, pool: int = 8):
    """A fully connected baseline: average-pool the image to (H/pool, W/pool), flatten, one hidden Dense layer.
    Returned as a (1, 1, units) 'feature map' so the shared head (gap -> logits) applies unchanged."""
    def build(inputs, weights, seed):
        x = keras.layers.AveragePooling2D(pool, name="downsample")(inputs)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(units, activation="relu", name="hidden")(x)
        return keras.layers.Reshape((1, 1, units), name="as_map")(x)
    return build


def _application(constructor: str, scaling: str, **extra):
    def build(inputs, weights, seed):
        rgb = GreyToBackbone(scaling, name="grey_to_rgb")(inputs)
        app = getattr(keras.applications, constructor)
        backbone = app(include_top=False, weights=weights, input_shape=tuple(rgb.shape[1:]), **extra)
        backbone._name = BACKBONE
        if weights is None:
            # Keras applications use BatchNorm momentum 0.999, made for long ImageNet runs: trained from
            # scratch for a few epochs here, the moving statistics lagged and validation collapsed to one class.
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = 0.9
        return backbone(rgb)
    return build


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("dense", "cnn", "baseline without convolutions: 8x8 average pooling, Flatten, Dense 128 ReLU (the "
           "head's pooling then sees one 1x1 'feature map')", _dense(), edge=True),
    Preset("single-conv", "cnn", "baseline: one Conv2D 3x3 (32 filters, ReLU) + MaxPooling, no BatchNorm",
           _small_cnn(filters=(32,), pool_last=True), edge=True),
    Preset("small-cnn", "cnn", "3 conv blocks (Conv2D 3x3 32-64-128, ReLU, MaxPooling between), no BatchNorm, no "
           "dropout; fastest on CPU", _small_cnn(), edge=True),
    Preset("small-cnn-dropout", "cnn", "small-cnn with Dropout 0.25 after each pooling", _small_cnn(dropout=0.25),
           edge=True),
    Preset("small-cnn-l2", "cnn", "small-cnn with Dropout 0.25 and L2 1e-4 on every kernel",
           _small_cnn(dropout=0.25, l2=1e-4), edge=True),
    Preset("cnn-4block", "cnn", "4 conv blocks (Conv2D 3x3 32-64-128-256 + BatchNorm + ReLU, MaxPooling between)",
           _small_cnn(filters=(32, 64, 128, 256), batch_norm=True), edge=True),
    Preset("mobilenetv2", "transfer", "MobileNetV2 alpha 1.0 (edge)", _application("MobileNetV2", "tf"), edge=True),
    Preset("mobilenetv2-0.35", "transfer", "MobileNetV2 alpha 0.35 (smallest edge model)",
           _application("MobileNetV2", "tf", alpha=0.35), edge=True),
    Preset("mobilenetv3small", "transfer", "MobileNetV3-Small (edge)",
           _application("MobileNetV3Small", "raw"), edge=True),
    Preset("mobilenetv3large", "transfer", "MobileNetV3-Large (edge)",
           _application("MobileNetV3Large", "raw"), edge=True),
    Preset("efficientnetb0", "transfer", "EfficientNet-B0 (edge, slow on CPU)",
           _application("EfficientNetB0", "raw"), edge=True),
    Preset("vgg16", "transfer", "VGG16 convolutional base (14.7M parameters; large for a Pi)",
           _application("VGG16", "caffe")),
    Preset("vgg19", "transfer", "VGG19 convolutional base (20.0M parameters; large for a Pi)",
           _application("VGG19", "caffe")),
    Preset("resnet50v2", "transfer", "ResNet50V2 (23.6M parameters)", _application("ResNet50V2", "tf")),
    Preset("densenet121", "transfer", "DenseNet121 (7.0M parameters; CheXNet's backbone)",
           _application("DenseNet121", "torch")),
    Preset("xception", "transfer", "Xception (20.9M parameters; input >= 71)", _application("Xception", "tf"),
           min_size=71),
    Preset("inceptionv3", "transfer", "InceptionV3 (21.8M parameters; input >= 75)",
           _application("InceptionV3", "tf"), min_size=75),
]}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CxrError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}",
                       code=ExitCode.USAGE, reason="bad_option")
    return PRESETS[name]


def _weights_argument(preset: Preset, weights: str | None):
    """Keras applications take None, "imagenet" or a weights file path."""
    if not weights or weights == "none":
        return None
    if weights == "imagenet":
        if preset.kind != "transfer":
            raise CxrError(f"--weights imagenet: preset {preset.name} has no ImageNet weights (it is trained from "
                           "scratch)", code=ExitCode.USAGE, reason="bad_option")
        return "imagenet"
    if not os.path.isfile(weights):
        raise CxrError(f"--weights {weights}: file not found (use none, imagenet, or a weights file path)",
                       code=ExitCode.USAGE, reason="bad_option")
    return weights


def _saved_head_classes(path: str) -> int | None:
    """Class count of the last Dense layer in a Keras `.weights.h5` file, or None when it cannot be read."""
    try:
        import h5py
        with h5py.File(path, "r") as f:
            dense = [name for name in f.get("layers", {}) if name == "dense" or name.startswith("dense_")]
            if not dense:
                return None
            last = max(dense, key=lambda n: int(n.rsplit("_", 1)[1]) if "_" in n else 0)
            return int(f["layers"][last]["vars"]["0"].shape[-1])
    except (OSError, KeyError, ValueError, ImportError):
        return None


def build_model(preset: str, *, input_size: int = 224, classes: int = 3, weights: str | None = None,
                dropout: float = 0.2, seed: int = 0, mixstyle: float = 0.0) -> keras.Model:
    """A fresh model for `preset`; weights: None/"none" (offline default), "imagenet", or a file path.

    For a transfer preset a file path is passed to the Keras application (its no-top weights file,
    e.g. mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5); for a CNN preset the
    file holds weights of the whole model (e.g. a previous run's checkpoint).
    """
    spec = get_preset(preset)
    if input_size < spec.min_size:
        raise CxrError(f"--input-size {input_size} is too small for {preset} (minimum {spec.min_size})",
                       code=ExitCode.USAGE, reason="bad_option")
    weights_arg = _weights_argument(spec, weights)
    if mixstyle and (spec.kind != "cnn" or spec.name == "dense"):
        raise CxrError(f"--mixstyle works with the convolutional presets trained from scratch, not {preset}",
                       code=ExitCode.USAGE, reason="bad_option")
    inputs = keras.Input((input_size, input_size, 1), name="image")
    try:
        features = spec.build_features(inputs, weights_arg if spec.kind == "transfer" else None, seed,
                                       **({"mixstyle": mixstyle} if mixstyle else {}))
    except Exception as exc:  # download failures surface as several exception types
        if weights_arg == "imagenet":
            raise CxrError(f"cannot load ImageNet weights for {preset} ({str(exc).splitlines()[0][:160]}); "
                           "without internet download the Keras no-top weights file elsewhere and pass "
                           "--weights PATH, or train from scratch with --weights none",
                           code=ExitCode.MODEL, reason="weights_unavailable") from None
        if weights_arg:
            raise CxrError(f"--weights {weights_arg}: cannot be loaded into {preset} ({str(exc)[:160]})",
                           code=ExitCode.MODEL, reason="weights_unloadable") from None
        raise
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_POOL)(features)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    x = keras.layers.Dense(classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=preset.replace(".", "_"))
    if weights_arg and spec.kind == "cnn":
        try:
            file_classes = _saved_head_classes(weights_arg)
            if file_classes not in (None, classes):
                # same backbone, another class set (e.g. self-supervised weights saved with 4 classes, fine-tuned
                # on 2): load into a twin with the file's head and take everything but the head from it
                twin = build_model(preset, input_size=input_size, classes=file_classes, weights=weights_arg,
                                   dropout=dropout, seed=seed, mixstyle=mixstyle)
                for mine, theirs in zip(model.layers, twin.layers):
                    if mine.name != "logits":
                        mine.set_weights(theirs.get_weights())
            else:
                model.load_weights(weights_arg)
        except CxrError:
            raise
        except Exception as exc:
            raise CxrError(f"--weights {weights_arg}: cannot be loaded into {preset} ({str(exc)[:160]})",
                           code=ExitCode.MODEL, reason="weights_unloadable") from None
    return model


def backbone_of(model: keras.Model):
    """The Keras-applications base of a transfer model, or None for a CNN preset."""
    try:
        return model.get_layer(BACKBONE)
    except ValueError:
        return None


def set_backbone_trainable(model: keras.Model, trainable_fraction: float) -> int:
    """Freeze the backbone (0.0) or unfreeze its top fraction; BatchNorm layers stay frozen.

    Returns the number of backbone layers left trainable.
    """
    backbone = backbone_of(model)
    if backbone is None:
        return 0
    layers = backbone.layers
    first = int(round(len(layers) * (1.0 - trainable_fraction)))
    backbone.trainable = trainable_fraction > 0
    count = 0
    for i, layer in enumerate(layers):
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)
        count += layer.trainable
    return count


def build_ensemble(members: list, name: str = "ensemble") -> keras.Model:
    """One model that answers as the mean of the members' logits (softmax of the average), for members built
    by build_model with the same input and classes. Each member up to its feature map is a nested model
    (member1, member2, ...); the maps are concatenated, pooled, and one Dense layer holds the members' Dense
    weights stacked and divided by their number. GAP and Dense are linear, so this is exactly the average of
    the members' logits, and the head is still GAP -> Dense: class-activation maps and every converter work
    on it unchanged."""
    if len(members) < 2:
        raise CxrError("an ensemble needs at least two members", code=ExitCode.USAGE, reason="bad_option")
    first = members[0]
    inputs = keras.Input(first.input_shape[1:], name="image")
    feature_maps, kernels, biases = [], [], []
    for k, member in enumerate(members, start=1):
        if member.input_shape != first.input_shape or member.output_shape != first.output_shape:
            raise CxrError(f"ensemble member {k} takes {member.input_shape} -> {member.output_shape}, member 1 "
                           f"{first.input_shape} -> {first.output_shape}", code=ExitCode.MODEL, reason="bad_model")
        body = keras.Model(member.inputs, member.get_layer(FEATURES_POOL).input, name=f"member{k}")
        feature_maps.append(body(inputs))
        kernel, bias = member.get_layer("logits").get_weights()
        kernels.append(kernel)
        biases.append(bias)
    x = keras.layers.Concatenate(name="members")(feature_maps)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_POOL)(x)
    dense = keras.layers.Dense(len(biases[0]), name="logits")
    x = dense(x)
    dense.set_weights([np.concatenate(kernels, axis=0) / len(members), np.mean(biases, axis=0)])
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
