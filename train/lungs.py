"""`cxr-train lungs`: train the small lung-field segmenter that the lung crop (edge/lungs.py) runs.

Data: image + binary mask pairs (`pairs.csv` with image, mask and patient_id columns, as in
../shared/data/lung-masks). Split by patient (80/20, seeded). Input is edge.lungs.segmenter_input (the
same function the edge calls); augmentation moves image and mask together, and zooms *out* as well as
in, because children's films show more of the body than the adult films the masks come from.

Writes OUT/lungs.tflite (float32 weights quantized to int8 on the fly: dynamic-range), OUT/lungs.json
(IoU and box agreement on the held-out patients, what the crop would do to every validation image).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge.decode import load_image  # noqa: E402
from edge.errors import CxrError, ExitCode  # noqa: E402
from edge.lungs import SEG_SIZE, box_from_mask, segmenter_input  # noqa: E402


def read_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    table = root / "pairs.csv" if root.is_dir() else root
    if not table.is_file():
        raise CxrError(f"{root}: no pairs.csv (image,mask,patient_id) found", code=ExitCode.DATA, reason="unlabelled")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "mask"} <= set(rows[0]):
        raise CxrError(f"{table}: needs image and mask columns", code=ExitCode.DATA, reason="unlabelled")
    return [(table.parent / r["image"], table.parent / r["mask"], r.get("patient_id") or r["image"]) for r in rows]


def load_pairs(pairs) -> tuple[np.ndarray, np.ndarray]:
    images, masks = [], []
    for image_path, mask_path, _ in pairs:
        pixels = load_image(image_path).pixels
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != pixels.shape:
            raise CxrError(f"{mask_path}: missing, unreadable or not the size of {image_path}", code=ExitCode.DATA,
                           reason="corrupt")
        images.append(segmenter_input(pixels)[:, :, 0])
        masks.append(cv2.resize((mask > 127).astype(np.float32), (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA))
    return np.stack(images), (np.stack(masks) >= 0.5).astype(np.float32)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random affine for both (zoom 0.65-1.15: zooming out mimics children's framing), then a
    contrast curve and blur on the image only."""
    size = SEG_SIZE
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.65, 1.15)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
    fill = float(rng.choice([0.0, float(np.median(image[:4]))]))
    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=fill)
    out_mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0.0)
    out = np.clip(out, 1e-4, 1.0) ** np.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    return out.astype(np.float32), out_mask


def build_unet(filters=(8, 16, 32, 64)):
    import tf_keras as keras

    inputs = keras.Input((SEG_SIZE, SEG_SIZE, 1), name="image")
    x, skips = inputs, []
    for n in filters[:-1]:
        x = _block(x, n)
        skips.append(x)
        x = keras.layers.MaxPooling2D()(x)
    x = _block(x, filters[-1])
    for n, skip in zip(reversed(filters[:-1]), reversed(skips)):
        x = keras.layers.UpSampling2D()(x)
        x = keras.layers.Concatenate()([x, skip])
        x = _block(x, n)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(x)
    return keras.Model(inputs, outputs, name="lung-unet")


def _block(x, n):
    import tf_keras as keras

    for _ in range(2):
        x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    return x


def _dice_bce(y_true, y_pred):
    import tensorflow as tf

    bce = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y_true, y_pred))
    inter = tf.reduce_sum(y_true * y_pred, axis=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (tf.reduce_sum(y_true + y_pred, axis=(1, 2, 3)) + 1.0)
    return bce + tf.reduce_mean(dice)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    top, bottom = max(a[0], b[0]), min(a[1], b[1])
    left, right = max(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, bottom - top) * max(0.0, right - left)
    area = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / area if area > 0 else 0.0


def train(data: Path, out: Path, *, epochs: int = 40, batch_size: int = 16, seed: int = 0,
          val_fraction: float = 0.2) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    pairs = read_pairs(Path(data))
    patients = sorted({p for _, _, p in pairs})
    rng = np.random.default_rng(seed)
    val_patients = set(rng.permutation(patients)[:max(1, round(len(patients) * val_fraction))].tolist())
    train_pairs = [p for p in pairs if p[2] not in val_patients]
    val_pairs = [p for p in pairs if p[2] in val_patients]
    x_train, y_train = load_pairs(train_pairs)
    x_val, y_val = load_pairs(val_pairs)

    model = build_unet()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_dice_bce)
    steps = int(np.ceil(len(x_train) / batch_size))
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        lr = 2e-3 * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        keras.backend.set_value(model.optimizer.learning_rate, lr)
        losses = []
        for k in range(steps):
            idx = order[k * batch_size:(k + 1) * batch_size]
            batch = [augment(x_train[i], y_train[i], rng) for i in idx]
            xb = np.stack([b[0] for b in batch])[..., None]
            yb = np.stack([b[1] for b in batch])[..., None]
            losses.append(float(model.train_on_batch(xb, yb)))
        history.append(round(float(np.mean(losses)), 4))
        print(f"lungs: epoch {epoch + 1}/{epochs} loss {history[-1]:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    prob = model.predict(x_val[..., None], verbose=0)[..., 0]
    ious = [iou(p >= 0.5, m >= 0.5) for p, m in zip(prob, y_val)]
    boxes = [(box_from_mask(p), box_from_mask(m)) for p, m in zip(prob, y_val)]
    box_ious = [box_iou(a, b) for a, b in boxes]
    out.mkdir(parents=True, exist_ok=True)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, float activations
    tflite = converter.convert()
    (out / "lungs.tflite").write_bytes(tflite)
    import hashlib

    report = {
        "file": "lungs.tflite", "sha256": hashlib.sha256(tflite).hexdigest(), "bytes": len(tflite),
        "parameters": int(model.count_params()), "input": [SEG_SIZE, SEG_SIZE, 1],
        "data": {"root": str(data), "pairs": len(pairs), "patients": len(patients), "train_images": len(train_pairs),
                 "val_images": len(val_pairs), "val_patients": len(val_patients), "split": "by patient_id"},
        "validation": {"mask_iou_mean": float(np.mean(ious)), "mask_iou_median": float(np.median(ious)),
                       "box_iou_mean": float(np.mean(box_ious)),
                       "box_found": float(np.mean([a is not None for a, _ in boxes])),
                       "box_iou_at_least_0.7": float(np.mean([b >= 0.7 for b in box_ious]))},
        "training": {"epochs": epochs, "batch_size": batch_size, "seed": seed, "loss_history": history,
                     "seconds": round(time.perf_counter() - start, 1)},
        "limitations": "masks are of adult films (Cohen collection, many portable AP); children are covered only by "
                       "zoom-out augmentation: check the crop on children before trusting it",
    }
    (out / "lungs.json").write_text(json.dumps(report, indent=1))
    return report
