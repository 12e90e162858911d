"""Re-estimate BatchNorm statistics on clean training images after training.

During training, BatchNorm's moving mean and variance follow *augmented* batches (contrast curves, blur,
downscaling, sample weights); at inference the model sees clean images, whose statistics differ. Measured
here: with the source-look augmentation on, validation accuracy of cnn-4block swung between 0.03 and 0.63
from one epoch to the next (models/MODEL_CARD.md). Recomputing the moving statistics as the plain average
of each BatchNorm layer's batch statistics over clean training images (no weights are trained) removes
that mismatch. Every fit does it before evaluating, so what is reported is the model that ships.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def batchnorm_layers(model) -> list:
    import tf_keras as keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


def recalibrate(model, dataset, *, max_batches: int = 64) -> int:
    """Set each trainable BatchNorm layer's moving statistics to the average of its batch statistics over
    `dataset` (batches of clean images, labels ignored). Returns the number of batches used (0: no BN)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    used = 0
    try:
        for images, *_ in dataset.take(max_batches):
            for layer in layers:  # cumulative average: the k-th batch gets weight 1/(k+1)
                layer.momentum = used / (used + 1.0)
            model(images, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return used
