"""Could one file route children to a children's model? A router learnt on the default model's features.

A linear probe (train.heldout's logistic probe) learns "Kermany child" against every adult source from the
pooled features of ADULT_RUN (the shipped ensemble) on a sample of its training split, and is then applied to
its test split and to films no model here trained on: covid19-3class (later Kermany children; Cohen adults) and
fullres. With CHILD_RUN (a children-only model) it also scores the soft mixture
P(child) * child + (1 - P(child)) * adult, the abnormality a routed model would give.

usage: python scripts/analysis/child_route.py ADULT_RUN CHILD_RUN [n_train_per_source]   prints one JSON object
"""
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np  # noqa: E402

DATA = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

import tf_keras as keras  # noqa: E402

import models.architectures  # noqa: E402,F401  (registers custom layers)
from edge import lungs as edge_lungs  # noqa: E402
from edge.datasets import discover_many  # noqa: E402
from edge.metadata import ModelMetadata  # noqa: E402
from edge.metrics import roc_auc  # noqa: E402
from train.data import eval_dataset  # noqa: E402
from train.heldout import _fit_softmax  # noqa: E402

adult_run, child_run = Path(sys.argv[1]), Path(sys.argv[2])
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 250
meta = ModelMetadata.from_dict(json.loads((adult_run / "model.meta.json").read_text()))
spec = meta.preprocessing
child_meta = ModelMetadata.from_dict(json.loads((child_run / "model.meta.json").read_text()))
assert child_meta.preprocessing == spec, "both models must share one preprocessing"
if spec.crop == "lungs":
    edge_lungs.register((adult_run / "lungs.tflite").read_bytes())
rng = np.random.default_rng(0)
rows = [r for r in csv.DictReader(open(adult_run / "splits.csv"))]
groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
for r in rows:
    if r["split"] in ("train", "test"):
        groups.setdefault((r["split"], r["dataset"]), []).append((r["path"], r["label"]))
picked = []  # (split, group, path, label)
for (split, source), items in sorted(groups.items()):
    order = rng.permutation(len(items))[: n_train if split == "train" else len(items)]
    picked += [(split, source, *items[i]) for i in order]
names = {"Covid": "c3 adults (Cohen, COVID-19)", "Normal": "c3 children, normal",
         "Viral Pneumonia": "c3 children, viral pneumonia"}
for s in discover_many([DATA / "covid19-3class", DATA / "fullres"]):
    group = names.get(Path(s.path).parent.name, s.dataset)
    picked.append(("external", group, str(s.path), s.label))


def outputs(run: Path, x_ds):
    model = keras.models.load_model(str(run / "model.keras"), compile=False)
    probe = keras.Model(model.inputs, [model.get_layer("gap").output, model.outputs[0]])
    return probe.predict(x_ds, verbose=0)


x_ds = eval_dataset([p for _, _, p, _ in picked], [0] * len(picked), spec, batch_size=64).map(lambda x, y: x)
feats, probs = outputs(adult_run, x_ds)
_, child_probs = outputs(child_run, x_ds)
split = np.array([p[0] for p in picked])
group = np.array([p[1] for p in picked])
abnormal = np.array([p[3] != "normal" for p in picked])
is_child = np.isin(group, ["kermany-pneumonia", names["Normal"], names["Viral Pneumonia"]])
train = split == "train"
mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
w = _fit_softmax((feats[train] - mean) / std, is_child[train].astype(int), 2, 1e-2)
z = np.c_[(feats - mean) / std, np.ones(len(feats))] @ w
p_child = np.exp(z[:, 1] - np.logaddexp(z[:, 0], z[:, 1]))
adult_score, child_score = 1 - probs[:, 0], 1 - child_probs[:, 0]
mixed = p_child * child_score + (1 - p_child) * adult_score
out = {"adult_run": str(adult_run), "child_run": str(child_run), "n_train_per_source": n_train,
       "probe": "logistic on standardized pooled features, Kermany vs every adult source, training split sample",
       "groups": {}}
for sp, g in sorted(set(zip(split, group))):
    if sp == "train":
        continue
    m = (split == sp) & (group == g)
    both = abnormal[m].any() and (~abnormal[m]).any()
    out["groups"][f"{sp}: {g}"] = {
        "n": int(m.sum()), "routed_to_child": round(float((p_child[m] > 0.5).mean()), 3),
        "mean_p_child": round(float(p_child[m].mean()), 3),
        **({"auc_default": round(roc_auc(abnormal[m], adult_score[m]), 3),
            "auc_child_model": round(roc_auc(abnormal[m], child_score[m]), 3),
            "auc_routed_mix": round(roc_auc(abnormal[m], mixed[m]), 3)} if both else {})}
kids = np.isin(group, [names["Normal"], names["Viral Pneumonia"]])
out["c3 children, both classes"] = {"n": int(kids.sum()), "auc_default": round(roc_auc(abnormal[kids], adult_score[kids]), 3),
                                    "auc_child_model": round(roc_auc(abnormal[kids], child_score[kids]), 3),
                                    "auc_routed_mix": round(roc_auc(abnormal[kids], mixed[kids]), 3)}
print(json.dumps(out, indent=1))
