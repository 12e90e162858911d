"""Age-shortcut check: does the model's feature space carry "adult-looking", and does that push a child's
normal film towards "abnormal"?

A linear probe (train.heldout's logistic probe) learns child vs adult from the model's pooled features of
normal films only: Kermany's children against Shenzhen's and NIH's adults (NIH: age >= 18; NIH is never in
the shipped model's training, Shenzhen's 128 px copy is, so two adult sources keep the probe from learning
one source's look). It is then applied to films it never saw: covid19-3class's Normal and Viral Pneumonia
children (later Kermany patients), and Kermany pneumonia.

usage: python scripts/analysis/age_probe.py RUN [n_per_group]   (RUN: a cxr-train fit or ensemble folder)
prints one JSON object.
"""
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
from train.heldout import _fit_softmax, features_and_cams  # noqa: E402

run = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 150
meta = ModelMetadata.from_dict(json.loads((run / "model.meta.json").read_text()))
spec, classes = meta.preprocessing, list(meta.classes)
if spec.crop == "lungs":
    edge_lungs.register((run / "lungs.tflite").read_bytes())
model = keras.models.load_model(str(run / "model.keras"), compile=False)
rng = np.random.default_rng(0)


def pick(samples, k):
    samples = sorted(samples, key=lambda s: str(s.path))
    return [samples[i] for i in rng.permutation(len(samples))[:k]]


def inputs(samples, name):
    paths = [str(s.path) for s in samples]
    ds = eval_dataset(paths, [0] * len(paths), spec, batch_size=32)
    return np.concatenate([x.numpy() for x, _ in ds])


def features(samples, name):
    x = inputs(samples, name)
    feats, _ = features_and_cams(model, x, classes)
    probs = model.predict(x, verbose=0)
    probs = probs[0] if isinstance(probs, list) else probs
    return feats, 1.0 - probs[:, classes.index("normal")]


kermany = discover_many([DATA / "kermany-pneumonia"])
nih = discover_many([DATA / "adult-nih"])
shenzhen = discover_many([DATA / "tb-shenzhen"])
c3 = discover_many([DATA / "covid19-3class"])
groups = {
    "child normal (Kermany)": pick([s for s in kermany if s.label == "normal"], n),
    "adult normal (Shenzhen)": pick([s for s in shenzhen if s.label == "normal"], n // 2),
    "adult normal (NIH, age >= 18)": pick([s for s in nih if s.label == "normal" and (s.age or 0) >= 18], n // 2),
    "covid19-3class Normal (children)": [s for s in c3 if s.label == "normal"],
    "covid19-3class Viral Pneumonia (children)": [s for s in c3 if s.label == "pneumonia"],
    "Kermany pneumonia (children)": pick([s for s in kermany if s.label == "pneumonia"], n),
}
feats, abn = {}, {}
for i, (name, samples) in enumerate(groups.items()):
    feats[name], abn[name] = features(samples, f"g{i}")

probe_groups = list(groups)[:3]
x = np.concatenate([feats[g] for g in probe_groups])
y = np.concatenate([np.full(len(feats[g]), int(g.startswith("adult"))) for g in probe_groups])
mean, std = x.mean(0), x.std(0) + 1e-6
w = _fit_softmax((x - mean) / std, y, 2, 1e-2)


def p_adult(f):
    logits = np.c_[(f - mean) / std, np.ones(len(f))] @ w
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p[:, 1] / p.sum(1)


out = {"run": str(run), "model": meta.name, "version": meta.version, "groups": {}}
for name in groups:
    pa = p_adult(feats[name])
    out["groups"][name] = {"n": len(pa), "p_adult_median": round(float(np.median(pa)), 3),
                           "abnormality_median": round(float(np.median(abn[name])), 3),
                           "in_probe_training": name in probe_groups}
cn, cv = "covid19-3class Normal (children)", "covid19-3class Viral Pneumonia (children)"
pa_n, pa_v = p_adult(feats[cn]), p_adult(feats[cv])
both_pa, both_abn = np.r_[pa_n, pa_v], np.r_[abn[cn], abn[cv]]
out["covid19_3class_children"] = {
    "screening_auc": round(float(roc_auc(np.r_[np.zeros(len(pa_n)), np.ones(len(pa_v))], both_abn)), 3),
    "auc_of_p_adult_for_normal_vs_viral": round(float(roc_auc(np.r_[np.ones(len(pa_n)), np.zeros(len(pa_v))],
                                                              both_pa)), 3),
    "spearman_p_adult_vs_abnormality": round(float(np.corrcoef(np.argsort(np.argsort(both_pa)),
                                                               np.argsort(np.argsort(both_abn)))[0, 1]), 3),
    "spearman_within_normals": round(float(np.corrcoef(np.argsort(np.argsort(pa_n)),
                                                       np.argsort(np.argsort(abn[cn])))[0, 1]), 3)}
print(json.dumps(out, indent=1))
