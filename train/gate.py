"""Train the input gate (edge/gate.py): a small CNN on 64x64 grey images, shipped as int8 TFLite with metadata.

Classes are edge.gate.CLASSES. Every training step draws fresh examples from the cached images
(train/gate_data.py): an upright frontal film becomes `frontal`, or is turned by 90/180/270 degrees
(`rotated_K`) or inverted (`inverted`, whatever its rotation, so the runtime un-inverts first and then
looks again); every negative kind becomes `not_cxr`, in any orientation and polarity. Held-out sources and
negative kinds are never drawn; `evaluate` measures the shipped int8 file on them through edge.gate.Gate.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from edge.gate import CLASSES, Gate
from edge.metadata import ModelMetadata
from edge.preprocess import PreprocessSpec

from .gate_data import SIZE, build_cache, load_cache, summary

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

NEGATIVE_KINDS = ("crop", "ct", "dicom-other", "photo", "document", "texture")
KIND_WEIGHTS = (0.5, 1.5, 1.0, 1.0, 1.0, 0.7)  # crops least: a tight frontal film must not look like one
# Share of each class in a training batch: upright, three turns, inverted, not a chest film.
MIX = (0.34, 0.09, 0.09, 0.09, 0.11, 0.28)


@dataclass
class GateConfig:
    data: Path
    out: Path
    epochs: int = 12
    samples_per_epoch: int = 12000
    batch_size: int = 64
    learning_rate: float = 2e-3
    accept: float = 0.5  # P(frontal) needed to pass
    correct: float = 0.9  # P(rotated_K or inverted) needed to correct instead of refusing
    seed: int = 0
    name: str = "cxr-gate"
    version: str = "1.0.0"
    verbose: int = 2


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small geometric and photometric changes that keep the class: float32 [0, 1] SIZE x SIZE."""
    x = image.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    angle, scale = rng.uniform(-8, 8), rng.uniform(0.88, 1.3)  # up to 1.3: tightly collimated films
    matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-3, 3, 2)
    x = cv2.warpAffine(np.ascontiguousarray(x), matrix, (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE)
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4)
    lo, hi = rng.uniform(0, 0.1), rng.uniform(0.9, 1.0)
    if rng.random() < 0.3:  # foggy, low-contrast bedside films (range down to 0.3)
        lo = rng.uniform(0.0, 0.4)
        hi = lo + rng.uniform(0.3, 0.6)
    x = lo + (hi - lo) * x
    if rng.random() < 0.2:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.2))
    if rng.random() < 0.2:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape)
    return np.clip(x, 0, 1).astype(np.float32)


def draw(pools: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n fresh (image, label) examples with class shares MIX."""
    labels = rng.choice(len(CLASSES), size=n, p=np.array(MIX) / sum(MIX))
    images = np.empty((n, SIZE, SIZE, 1), np.float32)
    kinds = [k for k in NEGATIVE_KINDS if len(pools.get(k, ())) > 0]
    weights = np.array([w for k, w in zip(NEGATIVE_KINDS, KIND_WEIGHTS) if k in kinds])
    for i, label in enumerate(labels):
        name = CLASSES[label]
        if name == "not_cxr":
            pool = pools[kinds[rng.choice(len(kinds), p=weights / weights.sum())]]
            x = np.rot90(augment(pool[rng.integers(len(pool))], rng), rng.integers(4))
            if rng.random() < 0.3:
                x = 1.0 - x
        else:
            x = augment(pools["cxr"][rng.integers(len(pools["cxr"]))], rng)
            if name.startswith("rotated"):
                x = np.rot90(x, int(name.split("_")[1]) // 90)
            elif name == "inverted":
                x = 1.0 - np.rot90(x, rng.integers(4) if rng.random() < 0.3 else 0)
        images[i, :, :, 0] = x
    return images, labels


def build_model(seed: int):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.layers.Input((SIZE, SIZE, 1), name="image")
    x = inputs
    for filters in (16, 32, 64, 96):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    # Flatten keeps where things are (4x4 cells): orientation is about layout, which pooling would blur.
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cxr_gate")


def pools_from(cache: dict[str, np.ndarray], held_out: bool) -> dict[str, np.ndarray]:
    pick = cache["held_out"] == held_out
    return {kind: cache["pixels"][pick & (cache["kind"] == kind)] for kind in ("cxr", *NEGATIVE_KINDS)}


def train(config: GateConfig, progress=print) -> dict:
    """Cache -> fit -> int8 .tflite with metadata -> held-out evaluation. Returns the report (also report.json)."""
    import tf_keras as keras

    from converters.convert import convert
    from converters.tflite_metadata import embed_metadata

    config.out.mkdir(parents=True, exist_ok=True)
    cache_path = config.out / f"cache{SIZE}.npz"
    if not cache_path.is_file():
        progress(f"decoding images into {cache_path}")
        build_cache(config.data, cache_path, seed=config.seed, progress=progress)
    cache = load_cache(cache_path)
    pools = pools_from(cache, held_out=False)
    rng = np.random.default_rng(config.seed)
    model = build_model(config.seed)
    steps = config.epochs * (config.samples_per_epoch // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x_val, y_val = draw(pools, 1500, np.random.default_rng(config.seed + 1))  # same pools: a fit check only
    start = time.time()
    history = []
    for epoch in range(config.epochs):
        x, y = draw(pools, config.samples_per_epoch, rng)
        h = model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0, validation_data=(x_val, y_val))
        history.append({k: round(float(v[-1]), 4) for k, v in h.history.items()})
        progress(f"epoch {epoch + 1}/{config.epochs} {history[-1]} {time.time() - start:.0f} s")
    model.save(config.out / "gate.keras")
    calibration, _ = draw(pools, 300, np.random.default_rng(config.seed + 2))
    metadata = ModelMetadata(
        name=config.name, version=config.version, classes=list(CLASSES),
        preprocessing=PreprocessSpec(height=SIZE, width=SIZE), threshold=config.accept, task="gate",
        gate={"correct": config.correct},
        threshold_rule=f"pass when frontal is the top class with P >= {config.accept}; correct a turn or an "
                       f"inversion when its P >= {config.correct}, then look again",
        architecture="4x(2 conv3x3-BN-ReLU)+maxpool, flatten, dense 64, dense 6 (cxr-train gate)",
        quantization="int8", training_data={**summary(cache), "held_out_sources": held_out_sources(cache)},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        intended_use="Input gate of a chest X-ray screening aid: refuses images that are not a usable frontal "
                     "chest radiograph. Not a diagnostic device.")
    tflite = config.out / "cxr-gate.tflite"
    tflite.write_bytes(embed_metadata(convert(model, "int8", calibration), metadata))
    report = {"train_seconds": round(time.time() - start, 1), "history": history,
              "held_out": evaluate(Gate(tflite), cache)}
    metadata.metrics = report["held_out"]
    tflite.write_bytes(embed_metadata(tflite.read_bytes(), metadata))
    (config.out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def held_out_sources(cache: dict[str, np.ndarray]) -> list[str]:
    pick = cache["held_out"] & (cache["kind"] == "cxr")
    return sorted({str(s) for s in cache["source"][pick]})


def evaluate(gate: Gate, cache: dict[str, np.ndarray]) -> dict:
    """Held-out images only: frontal films refused, turned/inverted films handled, negatives refused."""
    held = cache["held_out"]
    out: dict[str, dict] = {}
    films = [(str(s), p) for s, p, k in zip(cache["source"][held], cache["pixels"][held], cache["kind"][held])
             if k == "cxr"]
    variants = {"upright": lambda x: x, "rotated_90": lambda x: np.rot90(x, 1), "rotated_180": lambda x: np.rot90(x, 2),
                "rotated_270": lambda x: np.rot90(x, 3), "inverted": lambda x: 1.0 - x}
    for variant, transform in variants.items():
        verdicts: dict[str, int] = {}
        by_source: dict[str, list[int]] = {}
        for source, pixels in films:
            result = gate.check(transform(pixels.astype(np.float32) / 255.0))
            key = result.verdict if result.verdict != "refused" else f"refused:{result.reason_code}"
            verdicts[key] = verdicts.get(key, 0) + 1
            by_source.setdefault(source.split(":")[0], []).append(int(result.refused))
        out[f"cxr_{variant}"] = {"n": len(films), "verdicts": verdicts,
                                 "refused_by_source": {s: f"{sum(v)}/{len(v)}" for s, v in sorted(by_source.items())}}
    for kind in NEGATIVE_KINDS:
        pick = held & (cache["kind"] == kind)
        refused = sum(gate.check(p.astype(np.float32) / 255.0).refused for p in cache["pixels"][pick])
        out[f"not_cxr_{kind}"] = {"n": int(pick.sum()), "refused": int(refused)}
    return out
