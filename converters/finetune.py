"""What pruning and quantization-aware training share: the training images and a short fit."""

from __future__ import annotations

import numpy as np

from edge.metadata import ModelMetadata

from .data import ImageSet, find_samples, load_images, training_part


def split_images(data, meta: ModelMetadata, aliases, splits_csv=None) -> tuple[ImageSet, ImageSet | None]:
    """(training images, validation images or None when neither the folders nor RUN/splits.csv split them)."""
    samples = find_samples(data, meta.classes, aliases, splits_csv)
    train = load_images(training_part(samples), meta.preprocessing, meta.classes)
    held_out = [s for s in samples if s.split == "val"] or [s for s in samples if s.split == "test"]
    val = load_images(held_out, meta.preprocessing, meta.classes) if held_out else None
    return train, val


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights, so a 74%-pneumonia folder does not pull the model towards 'refer everything'."""
    counts = np.bincount(labels, minlength=n_classes)
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts) if c}


def fit(model, images: ImageSet, *, epochs: int, batch_size: int, learning_rate: float, callbacks=()) -> list:
    import tf_keras as keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(images.images, images.labels, epochs=epochs, batch_size=batch_size, shuffle=True,
                        class_weight=class_weights(images.labels, len(images.classes)),
                        callbacks=list(callbacks), verbose=0)
    return [round(float(x), 5) for x in history.history.get("loss", [])]


def evaluate(model, images: ImageSet | None, meta: ModelMetadata) -> dict | None:
    """Accuracy, sensitivity, specificity and AUC on held-out images, as parity computes them."""
    if images is None:
        return None
    from .parity import model_metrics

    out = model.predict(images.images, batch_size=32, verbose=0)
    probs = np.asarray(out[0] if isinstance(out, list) else out, dtype=np.float64)
    return {"images": len(images), **model_metrics(images.labels, probs, meta)}
