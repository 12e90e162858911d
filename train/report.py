"""Evaluation report of a trained model: metrics (edge.metrics), plots and Grad-CAM images."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge.decode import load_image  # noqa: E402
from edge.metadata import NORMAL_CLASS  # noqa: E402
from edge.metrics import (classification_report, roc_curve, screening_metrics, threshold_for_sensitivity,  # noqa: E402
                          threshold_for_sensitivity_in_groups, threshold_table)
from edge.preprocess import PreprocessSpec, preprocess  # noqa: E402

THRESHOLD_GRID = [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)]


def abnormality(probs: np.ndarray, classes) -> np.ndarray:
    return 1.0 - np.asarray(probs)[:, list(classes).index(NORMAL_CLASS)]


def choose_threshold(y: np.ndarray, probs: np.ndarray, classes, target: float,
                     sources: list[str] | None = None) -> tuple[float, list[str]]:
    """Highest threshold reaching the target sensitivity on these (validation) images; with `sources`, also in
    every source holding 30 abnormal ones (those are returned too)."""
    is_abnormal = y != list(classes).index(NORMAL_CLASS)
    if sources is None:
        return threshold_for_sensitivity(is_abnormal, abnormality(probs, classes), target), []
    return threshold_for_sensitivity_in_groups(is_abnormal, abnormality(probs, classes), sources, target)


def evaluate(y: np.ndarray, probs: np.ndarray, classes, threshold: float) -> dict:
    """Per-class report, screening decision at `threshold`, threshold table."""
    is_abnormal = y != list(classes).index(NORMAL_CLASS)
    score = abnormality(probs, classes)
    grid = sorted(set(THRESHOLD_GRID) | {round(threshold, 6)})
    return {
        "n": int(len(y)),
        "classes": classification_report(y, probs, classes),
        "screening": screening_metrics(is_abnormal, score, threshold),
        "threshold_table": threshold_table(is_abnormal, score, grid),
    }


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: dict, path: Path) -> Path:
    plt = _plt()
    metrics = [m for m in ("loss", "accuracy", "screening_auc") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, metrics):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion, classes, path: Path, title: str) -> Path:
    plt = _plt()
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, probs: np.ndarray, classes, threshold: float, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    is_abnormal = y != list(classes).index(NORMAL_CLASS)
    score = abnormality(probs, classes)
    fpr, tpr, _ = roc_curve(is_abnormal, score)
    ax.plot(fpr, tpr, lw=2, label="screening (abnormal vs normal)")
    point = screening_metrics(is_abnormal, score, threshold)
    if point["specificity"] is not None and point["sensitivity"] is not None:
        ax.plot(1 - point["specificity"], point["sensitivity"], "o", label=f"threshold {threshold:.3f}")
    for k, name in enumerate(classes):
        if name == NORMAL_CLASS or not (y == k).any():
            continue
        f, t, _ = roc_curve(y == k, probs[:, k])
        ax.plot(f, t, lw=1, alpha=0.7, label=f"{name} vs rest")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grad_cam(model, images: np.ndarray, class_index: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (n, H, W) in [0, 1] from the feature map that feeds the model's 'gap' layer.

    The gradient is taken of the chosen class's *logit* (the 'logits' layer, before softmax): the
    softmax output of a confident image is flat (p close to 1), so its gradients vanish."""
    import tensorflow as tf
    import tf_keras as keras

    features = model.get_layer("gap").input
    grad_model = keras.Model(model.inputs, [features, model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        maps, logits = grad_model(images, training=False)
        chosen = tf.gather(tf.cast(logits, tf.float32), class_index, axis=1, batch_dims=1)
    grads = tape.gradient(chosen, maps)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(maps, tf.float32), axis=-1)).numpy()
    out = []
    import cv2

    for c in cam:
        c = c / c.max() if c.max() > 0 else c
        out.append(cv2.resize(c, (images.shape[2], images.shape[1]), interpolation=cv2.INTER_LINEAR))
    return np.stack(out) if out else np.zeros((0,) + images.shape[1:3])


def save_grad_cams(model, paths, y, probs, classes, spec: PreprocessSpec, out_dir: Path, per_kind: int = 4) -> list[str]:
    """PNG overlays for a few correct and a few wrong validation images (most confident first)."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    written, index = [], []
    for kind, mask in (("correct", pred == y), ("wrong", pred != y)):
        picks = [i for i in np.argsort(-conf) if mask[i]][:per_kind]
        if not picks:
            continue
        images = np.stack([preprocess(load_image(paths[i]).pixels, spec) for i in picks]).astype(np.float32)
        cams = grad_cam(model, images, pred[picks].astype(np.int32))
        for n, (i, image, cam) in enumerate(zip(picks, images, cams)):
            grey = np.round(image[:, :, 0] * 255).astype(np.uint8)
            heat = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
            overlay = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.6, heat, 0.4, 0)
            panel = np.hstack([cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), overlay])
            name = (f"gradcam-{kind}-{n + 1}-true-{classes[y[i]]}-pred-{classes[pred[i]]}"
                    f"-{probs[i, pred[i]]:.2f}.png").replace(" ", "_")
            cv2.imwrite(str(out_dir / name), panel)
            written.append(name)
            index.append(f"{name}: {paths[i]}")
    (out_dir / "index.txt").write_text(
        "Grad-CAM of the predicted class over validation images (left: model input, right: overlay).\n"
        + "\n".join(index) + "\n")
    return written
