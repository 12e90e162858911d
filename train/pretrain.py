"""`cxr-train pretrain`: self-supervised pretraining (SimCLR) of a convolutional preset on a finished fit run's
training films, without their labels, for `cxr-train fit --weights OUT/ssl.weights.h5`.

Each film of a batch gets two strongly augmented views (contrast curve, blur, resolution, sharpening, rotation,
zoom, shift: what differs between hospitals rather than between classes); each view must find its partner
among the batch's 2N views (NT-Xent loss, Chen et al. 2020). The films are the base run's `train` split,
preprocessed as the base run's model (crop, CLAHE, size), so its validation, test and held-out sources stay
unseen. OUT/ssl.weights.h5 holds the whole classifier (a random head) of the base run's preset, input size
and classes.

At the end a linear probe (softmax on the frozen pooled features, every class and source weighing the same,
as fit's --balance source) is trained on the same films and scored on the base run's internal test split and
held-out sources: what the pretrained features alone carry before any fine-tuning. epochs=0 only probes an
existing OUT/ssl.weights.h5 again, or, when OUT has none, a random init: the probe's control.

Writes OUT/ssl.weights.h5, OUT/history.json (loss, pair top-1 per epoch, the settings) and OUT/probe.json.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edge.errors import CxrError, ExitCode  # noqa: E402
from edge.metadata import ModelMetadata  # noqa: E402
from edge.metrics import roc_auc  # noqa: E402

from .data import Augment  # noqa: E402

# Stronger than fit's augmentation, aimed at what differs between sources rather than between classes.
STRONG = Augment(rotation_deg=15.0, zoom=0.25, shift=0.12, brightness=0.2, contrast=0.4, gamma=0.6, blur=2.0,
                 downscale=0.35, sharpen=1.0)
WEIGHTS_FILE = "ssl.weights.h5"


def read_base_run(base: Path) -> tuple[ModelMetadata, dict, list[dict]]:
    """The base run's metadata, fit options and splits.csv rows (every split); a clear error for a folder that is
    not a run."""
    needed = [base / name for name in ("model.meta.json", "metrics.json", "splits.csv")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise CxrError(f"{base}: not a finished `cxr-train fit` run (no {', '.join(missing)})", code=ExitCode.USAGE,
                       reason="not_a_run")
    meta = ModelMetadata.from_dict(json.loads(needed[0].read_text()))
    config = json.loads(needed[1].read_text())["training"]["config"]
    with open(needed[2], newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r["split"] == "train"]
    if not train or not Path(train[0]["path"]).is_file():
        raise CxrError(f"{base}: its splits.csv names {train[0]['path'] if train else 'no training films'}, not found "
                       "from here; run from the folder the fit ran in (its paths are relative to it)",
                       code=ExitCode.USAGE, reason="not_a_run")
    if meta.preprocessing.crop == "lungs" and not (base / "lungs.tflite").is_file():
        raise CxrError(f"{base}: its model crops the lungs but lungs.tflite is missing", code=ExitCode.USAGE,
                       reason="not_a_run")
    return meta, config, rows


def pretrain(base: Path, out: Path, *, epochs: int = 30, batch_size: int = 128, temperature: float = 0.2,
             seed: int = 0, say=print) -> dict:
    """SimCLR on `base`'s training films; epochs=0 only probes (see the module text). Returns probe.json's dict."""
    import tensorflow as tf
    import tf_keras as keras

    from edge import lungs as edge_lungs
    from models.architectures import FEATURES_POOL, build_model

    from .data import affine, eval_dataset

    meta, config, rows = read_base_run(base)
    train = [r for r in rows if r["split"] == "train"]
    spec = meta.preprocessing
    if spec.crop == "lungs":
        edge_lungs.register((base / "lungs.tflite").read_bytes())
    if epochs and len(train) < batch_size:
        raise CxrError(f"{base}: {len(train)} training films, fewer than one batch of {batch_size}; lower "
                       "--batch-size", code=ExitCode.USAGE, reason="bad_option")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    t0 = time.time()
    images = np.concatenate([x for x, _ in eval_dataset([r["path"] for r in train], [0] * len(train), spec,
                                                        batch_size=64, cache=out / "cache" / "train")])
    say(f"{len(images)} training films decoded in {time.time() - t0:.0f} s")
    height, width = spec.height, spec.width

    def views(pair_seed, image):
        seeds = tf.random.experimental.stateless_split(pair_seed, 2)
        return affine(image, seeds[0], STRONG, height, width), affine(image, seeds[1], STRONG, height, width)

    steps = len(images) // batch_size
    ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((seeds, ds)).map(views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    tf.keras.utils.set_random_seed(seed)
    model = build_model(config["preset"], input_size=height, classes=len(meta.classes),
                        dropout=config.get("dropout", 0.2), seed=seed)
    encoder = keras.Model(model.input, model.get_layer(FEATURES_POOL).output)
    projector = keras.Sequential([keras.layers.Dense(256, activation="relu"), keras.layers.Dense(128)])
    projector.build((None, encoder.output_shape[-1]))
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=max(1, steps * epochs)))
    variables = encoder.trainable_variables + projector.trainable_variables

    @tf.function
    def step(a, b):
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(projector(encoder(tf.concat([a, b], 0), training=True), training=True), 1)
            n = tf.shape(a)[0]
            sim = tf.matmul(z, z, transpose_b=True) / temperature - tf.eye(2 * n) * 1e9  # a view is not its pair
            target = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], 0)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(target, sim, from_logits=True))
            top1 = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(sim, 1, output_type=tf.int32), target), tf.float32))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, top1

    history = []
    if not epochs:
        if weights.exists():
            model.load_weights(str(weights))
        else:
            say(f"no {weights}: probing a random init (the control)")
    for epoch in range(epochs):
        t1, losses, accs = time.time(), [], []
        for a, b in ds.take(steps):
            loss, top1 = step(a, b)
            losses.append(float(loss))
            accs.append(float(top1))
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                        "pair_top1": round(float(np.mean(accs)), 4), "seconds": round(time.time() - t1)})
        say(json.dumps(history[-1]))
        model.save_weights(str(weights))
        (out / "history.json").write_text(json.dumps({
            "base_run": str(base), "preset": config["preset"], "images": len(images), "batch": batch_size,
            "temperature": temperature, "seed": seed, "augment": STRONG.to_dict(), "epochs": history}, indent=1))
    if epochs:
        say(f"wrote {weights} after {time.time() - t0:.0f} s")
    result = {"base_run": str(base), "weights": str(weights) if weights.exists() else None,
              "linear_probe_auc": linear_probe(base, meta, config, rows, images, encoder)}
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    return result


def linear_probe(base: Path, meta: ModelMetadata, config: dict, rows: list[dict], images, encoder) -> dict:
    """Screening AUC (1 - P(normal)) of a softmax on frozen features (`images`: the training rows' films):
    internal test and each held-out source."""
    import tf_keras as keras

    from .data import eval_dataset, source_class_weights

    train = [r for r in rows if r["split"] == "train"]
    classes = list(meta.classes)
    y_train = np.array([classes.index(r["label"]) for r in train])
    f_train = encoder.predict(images, batch_size=64, verbose=0)
    probe = keras.Sequential([keras.layers.Dense(len(classes), activation="softmax")])
    probe.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    probe.fit((f_train - mean) / std, y_train, sample_weight=source_class_weights(y_train, [r["dataset"] for r in train]),
              epochs=100, batch_size=256, verbose=0)
    with open(base / "predictions.csv", newline="") as handle:
        scored = [r for r in csv.DictReader(handle) if r["split"] in ("test", "external")]
    x = np.concatenate([b for b, _ in eval_dataset([r["path"] for r in scored], [0] * len(scored),
                                                   meta.preprocessing, batch_size=64)])
    abnormal = 1.0 - probe.predict((encoder.predict(x, batch_size=64, verbose=0) - mean) / std, verbose=0)[:, 0]
    dataset = {r["path"]: r["dataset"] for r in rows}
    for r in scored:  # held-out films are not in splits.csv: the hold-out named in their path
        r["source"] = dataset.get(r["path"]) or next((h for h in config["hold_out"] if f"/{h}/" in f"/{r['path']}"),
                                                     "held out")
    groups = {"internal test": [r["split"] == "test" for r in scored]}
    for split, source in sorted({(r["split"], r["source"]) for r in scored}):
        groups[f"{source} ({split})"] = [r["source"] == source and r["split"] == split for r in scored]
    is_abnormal = np.array([r["true"] != "normal" for r in scored])
    result = {}
    for name, keep in groups.items():
        m = np.array(keep)
        y = is_abnormal[m]
        result[name] = round(float(roc_auc(y, abnormal[m])), 3) if 0 < y.sum() < len(y) else None
    return result
