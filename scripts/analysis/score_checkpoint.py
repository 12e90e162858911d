"""Score a run's model with other weights (e.g. checkpoints/best.weights.h5) on its test and external images,
BatchNorm re-estimated on the same seen subset as fit does. Prints screening AUC by source.
usage: python scripts/analysis/score_checkpoint.py RUN [WEIGHTS ...]   (no WEIGHTS: the shipped model.keras as is, recalibrated again)"""
import csv, json, os, sys
from pathlib import Path
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1"); os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np

DATA = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
import tf_keras as keras
import models.architectures  # noqa
from edge.metadata import ModelMetadata
from edge.metrics import roc_auc
from train.batchnorm import recalibrate
from train.data import eval_dataset
from train.splits import seen_subset

run = Path(sys.argv[1]); weights = sys.argv[2:] or [None]
meta = ModelMetadata.from_dict(json.loads((run / "model.meta.json").read_text()))
spec, classes = meta.preprocessing, meta.classes
from edge import lungs as edge_lungs
if spec.crop == "lungs":
    edge_lungs.register((run / "lungs.tflite").read_bytes())
cfg = json.loads((run / "metrics.json").read_text())["training"]["config"]
label_of = {c: i for i, c in enumerate(classes)}
rows = list(csv.DictReader(open(run / "splits.csv")))
train = [r for r in rows if r["split"] == "train"]
by_split = {"train": list(range(len(train)))}
paths = {"train": [r["path"] for r in train]}
labels = {"train": np.array([label_of[r["label"]] for r in train], np.int32)}
seen_subset(cfg["seen_images"], cfg["seed"], by_split, paths, labels)
pred = list(csv.DictReader(open(run / "predictions.csv")))
def src(p):
    return Path(p).resolve().relative_to(DATA.resolve()).parts[0]
sets = {s: [r for r in pred if r["split"] == s] for s in ("test", "external")}
for w in weights:
    model = keras.models.load_model(str(run / "model.keras"), compile=False)
    if w:
        model.load_weights(str(run / w))
    recalibrate(model, eval_dataset(paths["seen"], labels["seen"], spec, batch_size=32, cache=run / "cache" / "seen"))
    out = {}
    for s, rs in sets.items():
        ps = [r["path"] for r in rs]
        ys = np.array([label_of.get(r["true"], -1) for r in rs])
        prob = model.predict(eval_dataset(ps, ys, spec, batch_size=32, cache=run / "cache" / s), verbose=0)
        ab = 1 - prob[:, label_of["normal"]]
        srcs = np.array([src(p) for p in ps])
        for name in sorted(set(srcs)) + ["all"]:
            m = (srcs == name) if name != "all" else np.ones(len(ps), bool)
            y = (ys[m] != label_of["normal"]).astype(int)
            if 0 < y.sum() < len(y):
                out[f"{s}:{name}"] = round(float(roc_auc(y, ab[m])), 3)
    print(w or "model.keras", json.dumps(out))
