"""Class-conditional domain-adversarial training (DANN; the class is given to the adversary), as a check, not
a fit option: does making a class's features unable to name their source help on sources never seen?

It trains cnn-4block on a finished fit run's training split with that run's preprocessing and the 2.1.0
recipe (source balance, source-look augmentation, 10 epochs cosine, weights averaged from epoch 3, BatchNorm
re-estimated), plus an adversary behind a gradient-reversal layer that predicts the source from the pooled
features and the class, for the classes with two or more sources (normal, tuberculosis). LAMBDA 0 is the
control (the adversary learns, the features are left alone). Scores the internal test split, NIH adults and
covid19-3class (all never seen by avg-s0's recipe) and prints one JSON object (also OUT/result.json).

usage: python scripts/analysis/dann_check.py BASE_RUN OUT LAMBDA [epochs]   (run from the repository root, as
the run's splits.csv paths are relative to where it was trained)"""
import csv, json, os, sys, time
from pathlib import Path
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1"); os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np
import tensorflow as tf
import tf_keras as keras
import models.architectures  # noqa
from models.architectures import build_model
from edge import lungs as edge_lungs
from edge.metadata import ModelMetadata
from edge.metrics import roc_auc
from edge.datasets import discover_many
from edge.groups import age_group
from train.data import Augment, train_dataset, eval_dataset, source_class_weights
from train.batchnorm import recalibrate

BASE, out, lam_max = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
out.mkdir(parents=True, exist_ok=True)
meta = ModelMetadata.from_dict(json.loads((BASE / "model.meta.json").read_text()))
spec = meta.preprocessing
edge_lungs.register((BASE / "lungs.tflite").read_bytes())
CLASSES = ["normal", "pneumonia", "covid-19", "tuberculosis"]
rows = list(csv.DictReader(open(BASE / "splits.csv")))
train = [r for r in rows if r["split"] == "train"]
SMOKE = bool(os.environ.get("SMOKE"))  # a few images, to check the script runs
if SMOKE:
    train = train[::60]
sources = sorted({r["dataset"] for r in train})
K, S = len(CLASSES), len(sources)
y = np.array([CLASSES.index(r["label"]) for r in train]); s = np.array([sources.index(r["dataset"]) for r in train])
# which (class, source) pairs the adversary sees: classes with >= 2 sources
multi = [c for c in range(K) if len(set(s[y == c])) >= 2]
print("sources", sources, "adversary on classes", [CLASSES[c] for c in multi], flush=True)
w = source_class_weights(y, [r["dataset"] for r in train])
aug = Augment.with_overrides(Augment(), ["gamma=0.4", "blur=1.0", "downscale=0.5", "sharpen=0.5"])
ds, steps = train_dataset([r["path"] for r in train], list(y + K * s), spec, batch_size=32, seed=0, augment=aug,
                          n_classes=K, cache_dir=None if SMOKE else out / "cache", sample_weights=w)
tf.keras.utils.set_random_seed(0)
model = build_model("cnn-4block", input_size=spec.height, classes=K, dropout=0.2, seed=0)
feat = keras.Model(model.input, [model.get_layer("gap").output, model.output])
adv = keras.Sequential([keras.layers.Dense(64, activation="relu"), keras.layers.Dense(S)])
adv.build((None, feat.output_shape[0][-1] + K))
opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps * epochs))
lam = tf.Variable(0.0, trainable=False)
adv_mask_classes = tf.constant([1.0 if c in multi else 0.0 for c in range(K)])


@tf.custom_gradient
def reverse(x):
    return tf.identity(x), lambda dy: -lam * dy


ce = keras.losses.SparseCategoricalCrossentropy(reduction="none")
ce_logits = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
variables = model.trainable_variables + adv.trainable_variables


@tf.function
def step(x, yenc, sw):
    yc, ys = yenc % K, yenc // K
    with tf.GradientTape() as tape:
        f, p = feat(x, training=True)
        loss_c = tf.reduce_sum(ce(yc, p) * sw) / tf.reduce_sum(sw)
        onehot = tf.one_hot(yc, K)
        logits_s = adv(tf.concat([reverse(f), onehot], 1), training=True)
        m = tf.gather(adv_mask_classes, yc) * sw
        loss_s = tf.reduce_sum(ce_logits(ys, logits_s) * m) / (tf.reduce_sum(m) + 1e-6)
        loss = loss_c + loss_s
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    acc_s = tf.reduce_sum(tf.cast(tf.argmax(logits_s, 1, output_type=tf.int32) == ys, tf.float32) * m) / (tf.reduce_sum(m) + 1e-6)
    return loss_c, loss_s, acc_s


mean, count, total = None, 0, steps * epochs
start = time.time()
for epoch in range(1, epochs + 1):
    logs = []
    for i, (x, yenc, sw) in enumerate(ds):
        pgr = ((epoch - 1) * steps + i) / total
        lam.assign(lam_max * (2.0 / (1.0 + np.exp(-10 * pgr)) - 1.0))
        logs.append([float(v) for v in step(x, tf.cast(yenc, tf.int32), sw)])
        if epoch >= 3 and (i + 1) % min(10, steps) == 0:
            ws = [v.numpy().astype(np.float64) for v in model.weights]
            count += 1
            mean = ws if mean is None else [m_ + (w_ - m_) / count for m_, w_ in zip(mean, ws)]
    print(f"epoch {epoch} loss_c {np.mean([l[0] for l in logs]):.3f} loss_s {np.mean([l[1] for l in logs]):.3f} "
          f"adv acc {np.mean([l[2] for l in logs]):.3f} lambda {float(lam.numpy()):.3f} {time.time() - start:.0f}s", flush=True)
for v, m_ in zip(model.weights, mean):
    v.assign(m_.astype(v.dtype.as_numpy_dtype))
clean = eval_dataset([r["path"] for r in train], list(y), spec, batch_size=32, cache=None if SMOKE else out / "cache" / "clean")
recalibrate(model, clean)
model.save(str(out / "model.keras"))


def score(paths):
    p = model.predict(eval_dataset(paths, [0] * len(paths), spec, batch_size=64), verbose=0)
    return 1 - p[:, 0]


res = {"lambda": lam_max, "epochs": epochs, "train_seconds": round(time.time() - start)}
test = [r for r in rows if r["split"] == "test"][::1 + 14 * SMOKE]
ab = score([r["path"] for r in test]); yt = np.array([r["label"] != "normal" for r in test])
res["test"] = roc_auc(yt, ab)
shz = np.array([r["dataset"] == "tb-shenzhen" for r in test]); res["shenzhen_test"] = roc_auc(yt[shz], ab[shz])
data = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
nih = discover_many([data / "adult-nih"], classes=tuple(CLASSES))[::1 + 14 * SMOKE]
a = score([str(x.path) for x in nih]); yn = np.array([x.label != "normal" for x in nih])
res["nih"] = roc_auc(yn, a); res["nih_normals_mean"] = float(a[~yn].mean())
c3 = discover_many([data / "covid19-3class"], classes=tuple(CLASSES))[::1 + 2 * SMOKE]
a = score([str(x.path) for x in c3]); yc = np.array([x.label != "normal" for x in c3])
res["c3"] = roc_auc(yc, a)
kid = np.array([x.label in ("normal", "pneumonia") for x in c3]); res["c3_children"] = roc_auc(yc[kid], a[kid])
print(json.dumps(res), flush=True)
(out / "result.json").write_text(json.dumps(res, indent=1))
