"""Evaluation that tells the truth first: held-out sources, per-source / age / view metrics, shortcut checks.

A model is judged on hospitals and patients it never saw. `cxr-train fit --hold-out SOURCE` leaves a
source out of training, validation and the threshold, and scores it at the end ("external"); every
run also breaks its internal test split down by source, age group and view, and checks how much of
its decision could come from the source alone:

- source-only AUC: how well "which source is it" alone predicts abnormal in this data (a confound
  that is in the data, whatever the model does);
- a linear probe on the model's pooled features that predicts the source (balanced accuracy against
  chance, cross-validated): how much of the source the model carries;
- P(abnormal) of the normal images, by source, age group and view (a normal is a normal: it should
  not depend on where it came from);
- where the class-activation heat of "abnormal" falls: the share in the outer border ring, where
  markers, text and collimation live, against the ring's share of the area.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edge.groups import AGE_RULE, age_group, breakdown
from edge.metadata import NORMAL_CLASS
from edge.metrics import roc_auc

BORDER_RING = 0.15  # fraction of each side counted as "border" for the heat check


def split_held_out(samples, audit, indices, hold_out) -> tuple[np.ndarray, np.ndarray, int]:
    """(indices to split for training, external indices, external images dropped as copies of used ones).

    An external image that is a near-duplicate of an image the model trains on is not external: it is
    dropped from the external set (covid19-3class holds copies of Kermany's training images)."""
    held = set(hold_out)
    unknown = held - {s.dataset for s in samples}
    if unknown:
        from edge.errors import CxrError, ExitCode

        raise CxrError(f"--hold-out {', '.join(sorted(unknown))}: no such source in the data (sources: "
                       f"{', '.join(sorted({s.dataset for s in samples}))})", code=ExitCode.USAGE, reason="bad_option")
    used = np.array([i for i in indices if samples[i].dataset not in held], int)
    used_groups = {int(audit.duplicate_group[i]) for i in used}
    external, copies = [], 0
    for i in indices:
        if samples[i].dataset in held:
            if int(audit.duplicate_group[i]) in used_groups:
                copies += 1
            else:
                external.append(int(i))
    return used, np.array(external, int), copies


def source_only_auc(train_samples, eval_samples) -> float | None:
    """AUC of 'the abnormal rate of this image's source in training' as a score for abnormal."""
    rate = defaultdict(list)
    for s in train_samples:
        rate[s.dataset].append(s.label != NORMAL_CLASS)
    score = np.array([np.mean(rate[s.dataset]) if rate[s.dataset] else 0.5 for s in eval_samples])
    y = np.array([s.label != NORMAL_CLASS for s in eval_samples])
    return roc_auc(y, score) if 0 < y.sum() < len(y) else None


def features_and_cams(model, images: np.ndarray, classes, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (n, K) and the class-activation map of 'abnormal' (n, h, w) on logits:
    sum over abnormal classes' weights minus the normal class's weights, ReLU."""
    import tf_keras as keras

    fmap_model = keras.Model(model.inputs, model.get_layer("gap").input)
    weights = model.get_layer("logits").get_weights()[0]  # (K, C)
    normal = list(classes).index(NORMAL_CLASS)
    abnormal = [i for i in range(len(classes)) if i != normal]
    direction = weights[:, abnormal].mean(axis=1) - weights[:, normal]
    feats, cams = [], []
    for start in range(0, len(images), batch):
        fmap = np.asarray(fmap_model(images[start:start + batch], training=False), np.float64)
        feats.append(fmap.mean(axis=(1, 2)))
        cams.append(np.maximum(fmap @ direction, 0.0))
    return np.concatenate(feats), np.concatenate(cams)


def border_heat(cams: np.ndarray) -> dict:
    """Mean share of the positive 'abnormal' heat in the outer ring, and the ring's share of the area."""
    n, h, w = cams.shape
    ring = np.ones((h, w), bool)
    dy, dx = max(1, round(h * BORDER_RING)), max(1, round(w * BORDER_RING))
    ring[dy:h - dy, dx:w - dx] = False
    total = cams.reshape(n, -1).sum(axis=1)
    share = np.where(total > 0, cams[:, ring].sum(axis=1) / np.maximum(total, 1e-12), np.nan)
    return {"ring_share_of_heat": float(np.nanmean(share)) if np.isfinite(share).any() else None,
            "ring_share_of_area": float(ring.mean()), "ring_fraction_per_side": BORDER_RING}


def source_probe(features: np.ndarray, sources, *, folds: int = 5, seed: int = 0, l2: float = 1e-2) -> dict:
    """Cross-validated balanced accuracy of a multinomial logistic probe that predicts the source."""
    names = sorted(set(sources))
    if len(names) < 2:
        return {"balanced_accuracy": None, "chance": None, "sources": names}
    y = np.array([names.index(s) for s in sources])
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.empty(len(y), int)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        w = _fit_softmax(x[train], y[train], len(names), l2)
        pred[test] = (np.c_[x[test], np.ones(len(test))] @ w).argmax(1)
    recalls = [float((pred[y == c] == c).mean()) for c in range(len(names)) if (y == c).any()]
    return {"balanced_accuracy": float(np.mean(recalls)), "chance": 1.0 / len(recalls), "sources": names,
            "n": int(len(y)), "folds": folds}


def _fit_softmax(x, y, k, l2, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    xb = np.c_[x, np.ones(len(x))]
    w = np.zeros((xb.shape[1], k))
    onehot = np.eye(k)[y]
    for _ in range(steps):
        logits = xb @ w
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        w -= lr * (xb.T @ (p - onehot) / len(y) + l2 * w)
    return w


def normals_by(samples, probs, classes, key) -> dict:
    """{group: mean P(abnormal) and n} over the normal images, grouped by key(sample)."""
    normal = list(classes).index(NORMAL_CLASS)
    groups = defaultdict(list)
    for s, p in zip(samples, probs):
        if s.label == NORMAL_CLASS:
            groups[key(s)].append(1.0 - p[normal])
    return {g: {"n": len(v), "mean_abnormality": float(np.mean(v))} for g, v in sorted(groups.items()) if g}


def source_report(model, samples, by_split, labels, probs, classes, threshold, spec, *, probe_images: int = 600,
                  seed: int = 0) -> dict:
    """Everything above for one trained model: metrics by source / age group / view of the internal test
    split and of the held-out sources, and the shortcut checks."""
    from edge.decode import load_image
    from edge.preprocess import preprocess

    out: dict = {"age_rule": AGE_RULE}
    for split in ("test", "external"):
        if split not in probs or not len(by_split.get(split, [])):
            continue
        chosen = [samples[i] for i in by_split[split]]
        y, p = labels[split], probs[split]
        out[split] = {**breakdown(chosen, y, p, classes, threshold),
                      "normals_mean_abnormality": {
                          "by_source": normals_by(chosen, p, classes, lambda s: s.dataset),
                          "by_age": normals_by(chosen, p, classes, age_group),
                          "by_view": normals_by(chosen, p, classes, lambda s: s.view or "unknown")}}
    scored = [i for split in ("val", "test", "external") for i in by_split.get(split, [])]
    train_samples = [samples[i] for i in by_split["train"]]
    checks: dict = {"source_only_auc_test": source_only_auc(train_samples, [samples[i] for i in by_split["test"]])
                    if by_split.get("test") else None}
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(scored), size=min(probe_images, len(scored)), replace=False).tolist())
    images = np.stack([preprocess(load_image(samples[scored[k]].path).pixels, spec) for k in picks]).astype(np.float32)
    feats, cams = features_and_cams(model, images, classes)
    chosen = [samples[scored[k]] for k in picks]
    checks["source_probe"] = source_probe(feats, [s.dataset for s in chosen], seed=seed)
    normals = np.array([s.label == NORMAL_CLASS for s in chosen])
    checks["source_probe_normals_only"] = source_probe(feats[normals], [s.dataset for s in chosen if s.label ==
                                                                        NORMAL_CLASS], seed=seed)
    checks["border_heat"] = border_heat(cams)
    checks["border_heat_by_source"] = {src: border_heat(cams[[s.dataset == src for s in chosen]])["ring_share_of_heat"]
                                       for src in sorted({s.dataset for s in chosen})}
    checks["images"] = len(picks)
    out["shortcut_checks"] = checks
    return out


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def render_sources(sources: dict) -> list[str]:
    """Markdown for the training report."""
    lines = []
    titles = {"external": "Held-out sources (never trained on, never used to choose anything)",
              "test": "Internal test split, by source, age group and view"}
    for split in ("external", "test"):
        if split not in sources:
            continue
        lines += [f"## {titles[split]}", "",
                  "| group | n (normal / abnormal) | AUC | sensitivity | specificity | refer rate | 3-class acc. |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind in ("by_source", "by_age", "by_view"):
            for key, m in sources[split][kind].items():
                lines.append(f"| {kind[3:]}: {key} | {m['n']} ({m['n_normal']} / {m['n_abnormal']}) | {_f(m['auc'])} | "
                             f"{_f(m['sensitivity'])} | {_f(m['specificity'])} | {_f(m['refer_rate'])} | "
                             f"{_f(m['accuracy_3class'])} |")
        lines.append("")
    checks = sources.get("shortcut_checks")
    if checks:
        probe, normals = checks["source_probe"], checks["source_probe_normals_only"]
        heat = checks["border_heat"]
        lines += ["## Shortcut checks", "",
                  f"- Source alone (each test image scored by its source's abnormal rate in training): AUC "
                  f"{_f(checks['source_only_auc_test'])}. Near 1 means the data lets a model pass by recognising "
                  "the source.",
                  f"- Linear probe on the model's pooled features predicting the source ({checks['images']} images): "
                  f"balanced accuracy {_f(probe['balanced_accuracy'])} (chance {_f(probe['chance'])}); normal images "
                  f"only: {_f(normals['balanced_accuracy'])} (chance {_f(normals['chance'])}).",
                  f"- 'Abnormal' activation heat in the outer {heat['ring_fraction_per_side']:.0%} ring: "
                  f"{_f(heat['ring_share_of_heat'])} of the heat on {_f(heat['ring_share_of_area'])} of the area; by "
                  "source: " + ", ".join(f"{k} {_f(v)}" for k, v in checks["border_heat_by_source"].items()) + ".",
                  ""]
        for split in ("test", "external"):
            if split in sources:
                by = sources[split]["normals_mean_abnormality"]
                lines.append(f"- Mean abnormality of the normal images ({split}): " + "; ".join(
                    f"{kind[3:]} " + ", ".join(f"{k} {_f(v['mean_abnormality'])} (n={v['n']})" for k, v in by[kind].items())
                    for kind in ("by_source", "by_age", "by_view")) + ".")
        lines.append("")
    return lines
