"""Self-supervised pretraining (SimCLR: two strongly augmented views of each film must find each other in a
batch), as a check, not a fit option: does a cnn-4block that first learns to ignore a film's look (contrast
curve, sharpness, resolution, framing) do better on sources it never saw once it is fine-tuned?

It pretrains on a finished fit run's training split only (no labels; NIH, covid19-3class and fullres stay
unseen), with that run's preprocessing, and writes OUT/ssl.weights.h5: the whole cnn-4block classifier
(random head) for `cxr-train fit --weights OUT/ssl.weights.h5` with the same preset, input size and classes.

At the end a linear probe (softmax on the frozen pooled features, source and class balanced as fit does) is
trained on the same split and scored on the base run's internal test and never-seen films: what the
pretrained features alone carry, before any fine-tuning. Epochs 0 only probes OUT/ssl.weights.h5 again
(or, where OUT has none, a random init: the probe's control).

usage: python scripts/analysis/ssl_pretrain.py BASE_RUN OUT [epochs]   (run from the repository root, as the
run's splits.csv paths are relative to where it was trained; SMOKE=1 for a few images)"""
import csv, json, os, sys, time
from pathlib import Path
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1"); os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np
import tensorflow as tf
import tf_keras as keras
import models.architectures  # noqa
from models.architectures import FEATURES_POOL, build_model
from edge import lungs as edge_lungs
from edge.metadata import ModelMetadata
from edge.metrics import roc_auc
from train.data import Augment, _affine, eval_dataset, source_class_weights

BASE, out = Path(sys.argv[1]), Path(sys.argv[2])
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
BATCH, TAU = int(os.environ.get("BATCH", 128)), 0.2
out.mkdir(parents=True, exist_ok=True)
weights = out / "ssl.weights.h5"
meta = ModelMetadata.from_dict(json.loads((BASE / "model.meta.json").read_text()))
spec = meta.preprocessing
if spec.crop == "lungs":
    edge_lungs.register((BASE / "lungs.tflite").read_bytes())
train = [r for r in csv.DictReader(open(BASE / "splits.csv")) if r["split"] == "train"]
SMOKE = bool(os.environ.get("SMOKE"))
if SMOKE:
    train = train[::40]
t0 = time.time()
images = np.concatenate([x for x, _ in eval_dataset([r["path"] for r in train], [0] * len(train), spec,
                                                     batch_size=64, cache=None if SMOKE else out / "cache" / "train")])
print(f"{len(images)} training films decoded in {time.time() - t0:.0f} s", flush=True)

# Stronger than fit's augmentation, aimed at what differs between sources rather than between classes.
strong = Augment(rotation_deg=15.0, zoom=0.25, shift=0.12, brightness=0.2, contrast=0.4, gamma=0.6, blur=2.0,
                 downscale=0.35, sharpen=1.0)
H, W = spec.height, spec.width


def views(seed, image):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    return _affine(image, seeds[0], strong, H, W), _affine(image, seeds[1], strong, H, W)


steps = len(images) // BATCH
ds = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=0, reshuffle_each_iteration=True)
seeds = tf.data.Dataset.random(seed=0, rerandomize_each_iteration=True).batch(2)
ds = tf.data.Dataset.zip((seeds, ds)).map(views, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH, drop_remainder=True)
ds = ds.prefetch(tf.data.AUTOTUNE)

tf.keras.utils.set_random_seed(0)
model = build_model("cnn-4block", input_size=H, classes=len(meta.classes), dropout=0.2, seed=0)
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
        sim = tf.matmul(z, z, transpose_b=True) / TAU - tf.eye(2 * n) * 1e9  # a view is not its own pair
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
        print("no OUT/ssl.weights.h5: probing a random init (the control)", flush=True)
for epoch in range(epochs):
    t1, losses, accs = time.time(), [], []
    for a, b in ds.take(steps):
        loss, top1 = step(a, b)
        losses.append(float(loss)); accs.append(float(top1))
    history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                    "pair_top1": round(float(np.mean(accs)), 4), "seconds": round(time.time() - t1)})
    print(json.dumps(history[-1]), flush=True)
    model.save_weights(str(weights))
    (out / "history.json").write_text(json.dumps({"base_run": str(BASE), "images": len(images), "batch": BATCH,
                                                  "temperature": TAU, "augment": strong.to_dict(),
                                                  "epochs": history}, indent=1))
if epochs:
    print(f"wrote {weights} after {time.time() - t0:.0f} s", flush=True)

# Linear probe on the frozen features.
classes = list(meta.classes)
y_train = np.array([classes.index(r["label"]) for r in train])
f_train = encoder.predict(images, batch_size=64, verbose=0)
probe = keras.Sequential([keras.layers.Dense(len(classes), activation="softmax")])
probe.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
mean, std = f_train.mean(0), f_train.std(0) + 1e-6
probe.fit((f_train - mean) / std, y_train, sample_weight=source_class_weights(y_train, [r["dataset"] for r in train]),
          epochs=100, batch_size=256, verbose=0)
scored = [r for r in csv.DictReader(open(BASE / "predictions.csv")) if r["split"] in ("test", "external")]
if SMOKE:
    scored = scored[::40]
x = np.concatenate([b for b, _ in eval_dataset([r["path"] for r in scored], [0] * len(scored), spec, batch_size=64)])
abnormal = 1.0 - probe.predict((encoder.predict(x, batch_size=64, verbose=0) - mean) / std, verbose=0)[:, 0]
result = {}
for name, keep in [("internal test", lambda r: r["split"] == "test"),
                   ("adult-nih", lambda r: "/adult-nih/" in r["path"]),
                   ("covid19-3class", lambda r: "/covid19-3class/" in r["path"]),
                   ("its children", lambda r: "/covid19-3class/" in r["path"] and r["true"] in ("normal", "pneumonia")),
                   ("tb-shenzhen (test)", lambda r: r["split"] == "test" and "/tb-shenzhen/" in r["path"])]:
    m = np.array([keep(r) for r in scored])
    y = np.array([r["true"] != "normal" for r in scored])[m]
    result[name] = round(float(roc_auc(y, abnormal[m])), 3) if 0 < y.sum() < len(y) else None
print(json.dumps({"linear_probe_auc": result}), flush=True)
(out / "probe.json").write_text(json.dumps({"base_run": str(BASE), "weights": str(weights) if weights.exists() else None,
                                            "linear_probe_auc": result}, indent=1))
