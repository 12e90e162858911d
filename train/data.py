"""tf.data pipelines: stream files from disk, decode + the one shared preprocessing, cache to a file,
augment the training split only, prefetch. Nothing holds a whole dataset in memory.

Augmentation uses stateless random ops seeded from a tf.data random stream, so a run with the
same seed sees the same augmented images in the same order (on CPU; GPU kernels may differ in
the last bits).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge.decode import load_image  # noqa: E402
from edge.preprocess import PreprocessSpec, preprocess  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
MIN_CELL = 50  # nested_weights: a source with fewer images of a class weighs as if it had this many


@dataclass(frozen=True)
class Augment:
    """Random changes applied to training images only. Every magnitude can be set (`cxr-train fit --aug
    NAME=VALUE`) and is recorded in the run's metrics.json. The last four act against a source's look
    (contrast curve, sharpness, resolution: Shenzhen's copy is 128 px, NIH's 512 px) and are off unless set."""

    rotation_deg: float = 10.0
    zoom: float = 0.10  # scale in [1 - zoom, 1 + zoom]
    shift: float = 0.08  # fraction of the side
    brightness: float = 0.10  # added in [-b, b]
    contrast: float = 0.20  # factor in [1 - c, 1 + c]
    # Gaussian noise at the model's input resolution is off by default: measured on ../shared/data
    # (cnn-4block, 96 px), with sigma 0.02 the first BatchNorm's moving variance was 9x that of clean
    # validation images and the model predicted one class for every validation image (docs/training.md).
    noise: float = 0.0
    flip: bool = False  # a mirrored chest puts the heart on the wrong side; off unless asked for
    gamma: float = 0.0  # x ** exp(u), u in [-gamma, gamma]: another contrast curve
    blur: float = 0.0  # Gaussian blur, sigma in [0, blur] pixels at the model's input, half of the images
    downscale: float = 1.0  # shrink to a factor in [downscale, 1] and back: another resolution
    sharpen: float = 0.0  # unsharp mask of strength in [0, sharpen], half of the images

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def with_overrides(cls, base: "Augment", items) -> "Augment":
        """["gamma=0.3", "blur=1.0"] on top of `base`; CxrError naming the bad item."""
        from dataclasses import replace

        from edge.errors import CxrError, ExitCode

        values = {}
        for item in items or []:
            name, sep, text = str(item).partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in cls.__dataclass_fields__ or name == "flip":
                raise CxrError(f"--aug {item!r}: expected NAME=VALUE with NAME one of "
                               f"{', '.join(f for f in cls.__dataclass_fields__ if f != 'flip')}",
                               code=ExitCode.USAGE, reason="bad_option")
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            limit = 1.0 if name in ("downscale",) else 90.0 if name == "rotation_deg" else 3.0
            if not 0.0 <= value <= limit or (name == "downscale" and value < 0.2):
                raise CxrError(f"--aug {item!r}: {name} must be a number in "
                               f"[{0.2 if name == 'downscale' else 0}, {limit}]", code=ExitCode.USAGE,
                               reason="bad_option")
            values[name] = value
        return replace(base, **values)


def _loader(spec: PreprocessSpec):
    def load(path: bytes) -> np.ndarray:
        return preprocess(load_image(path.decode()).pixels, spec).astype(np.float32)
    return load


def _decode(spec: PreprocessSpec):
    load = _loader(spec)

    def fn(path):
        image = tf.numpy_function(load, [path], tf.float32, stateful=False)
        image.set_shape((spec.height, spec.width, 1))
        return image
    return fn


def affine(image, seed, aug: Augment, height: int, width: int):
    """One random rotation, zoom and shift, then aug's photometric changes, of one image (stateless: seed)."""
    seeds = tf.random.experimental.stateless_split(seed, 8)
    angle = tf.random.stateless_uniform([], seeds[0], -1.0, 1.0) * aug.rotation_deg * math.pi / 180.0
    zoom = 1.0 + tf.random.stateless_uniform([], seeds[1], -aug.zoom, aug.zoom)
    dx = tf.random.stateless_uniform([], seeds[2], -aug.shift, aug.shift) * width
    dy = tf.random.stateless_uniform([], seeds[3], -aug.shift, aug.shift) * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # maps each output pixel to the input pixel it samples (rotation + zoom about the centre, shift)
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy - dx,
                          -sin, cos, cy + sin * cx - cos * cy - dy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.constant([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    if aug.flip:
        out = tf.cond(tf.random.stateless_uniform([], seeds[4]) < 0.5, lambda: tf.image.flip_left_right(out),
                      lambda: out)
    out = _photometric(out, tf.random.experimental.stateless_split(seeds[4], 6), aug, height, width)
    mean = tf.reduce_mean(out)
    contrast = 1.0 + tf.random.stateless_uniform([], seeds[5], -aug.contrast, aug.contrast)
    brightness = tf.random.stateless_uniform([], seeds[6], -aug.brightness, aug.brightness)
    out = (out - mean) * contrast + mean + brightness
    if aug.noise > 0:
        out = out + tf.random.stateless_normal(tf.shape(out), seeds[7], stddev=aug.noise)
    return tf.clip_by_value(out, 0.0, 1.0)


def _gaussian_blur(image, sigma):
    """Separable 7-tap Gaussian of standard deviation `sigma` (a tensor) on an (H, W, 1) image."""
    x = tf.range(-3.0, 4.0)
    kernel = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, 1e-3)))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
    out = tf.nn.conv2d(padded, tf.reshape(kernel, [7, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(out, tf.reshape(kernel, [1, 7, 1, 1]), 1, "VALID")[0]


def _photometric(out, seeds, aug: Augment, height: int, width: int):
    if aug.downscale < 1.0:
        factor = tf.random.stateless_uniform([], seeds[0], aug.downscale, 1.0)
        small = tf.cast(tf.round(tf.constant([height, width], tf.float32) * factor), tf.int32)
        out = tf.image.resize(tf.image.resize(out, small, method="area"), [height, width], method="bilinear")
    if aug.blur > 0:
        sigma = tf.random.stateless_uniform([], seeds[1], 0.0, aug.blur)
        out = tf.cond(tf.random.stateless_uniform([], seeds[2]) < 0.5, lambda: _gaussian_blur(out, sigma),
                      lambda: out)
    if aug.sharpen > 0:
        amount = tf.random.stateless_uniform([], seeds[3], 0.0, aug.sharpen)
        out = tf.cond(tf.random.stateless_uniform([], seeds[4]) < 0.5,
                      lambda: out + amount * (out - _gaussian_blur(out, 1.5)), lambda: out)
    if aug.gamma > 0:
        gamma = tf.exp(tf.random.stateless_uniform([], seeds[5], -aug.gamma, aug.gamma))
        out = tf.pow(tf.clip_by_value(out, 1e-4, 1.0), gamma)
    return tf.clip_by_value(out, 0.0, 1.0)


def _augmenter(aug: Augment, spec: PreprocessSpec):
    def fn(seed, element):
        image, rest = element[0], element[1:]
        return (affine(image, seed, aug, spec.height, spec.width), *rest)
    return fn


def _base(paths: list[str], labels: list[int], spec: PreprocessSpec, cache: Path | None):
    images = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    images = images.map(_decode(spec), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Only the images are cached, keyed by the files and the spec: a changed split or input size never
        # reads a stale cache, and labels (another --alias or --classes into a reused --out) are attached
        # afresh after it, so the same images serve every labelling and are decoded once.
        key = hashlib.sha256(json.dumps(["images", spec.to_dict(), paths]).encode()).hexdigest()[:12]
        for stale in cache.parent.glob(f"{cache.name}-{key}*.lockfile"):
            stale.unlink()  # left by an interrupted run; one run owns its run folder
        images = images.cache(f"{cache}-{key}")  # preprocessed tensors on disk: later epochs skip decoding
    return tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(tf.constant(labels, tf.int32))))


def eval_dataset(paths, labels, spec: PreprocessSpec, *, batch_size: int = 32, cache: Path | None = None):
    """Validation / test / prediction: decoded once, in file order, no augmentation."""
    return _base(list(paths), list(labels), spec, cache).batch(batch_size).prefetch(AUTOTUNE)


def train_dataset(paths, labels, spec: PreprocessSpec, *, batch_size: int = 32, seed: int = 0,
                  augment: Augment | None = Augment(), balanced: bool = False, n_classes: int = 3,
                  cache_dir: Path | None = None, sample_weights=None) -> tuple[tf.data.Dataset, int]:
    """(dataset, steps per epoch). balanced=True draws every class equally often (with repetition).
    `sample_weights` (one per image) makes the elements (image, label, weight)."""
    paths, labels = list(paths), list(labels)
    steps = math.ceil(len(paths) / batch_size)
    ds = _base(paths, labels, spec, cache_dir / "train" if cache_dir else None)
    if sample_weights is not None:
        weights = tf.data.Dataset.from_tensor_slices(tf.constant(np.asarray(sample_weights, np.float32)))
        ds = tf.data.Dataset.zip((ds, weights)).map(lambda element, w: (element[0], element[1], w))
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if balanced:
        # Rejection sampling over the repeated, cached stream: every pass reads the whole cache (so the
        # cache file is completed), and classes come out equally often.
        counts = np.bincount(np.asarray(labels, int), minlength=n_classes).astype(np.float32)
        present = counts > 0
        target = np.where(present, 1.0 / present.sum(), 0.0).astype(np.float32)
        ds = ds.repeat().rejection_resample(lambda image, label, *weight: label, target_dist=target,
                                            initial_dist=counts / counts.sum(), seed=seed)
        ds = ds.map(lambda cls, element: element).take(steps * batch_size)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((seeds, ds)).map(_augmenter(augment, spec), num_parallel_calls=AUTOTUNE,
                                                  deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE), steps


def source_class_weights(labels, sources) -> np.ndarray:
    """One weight per image: every class carries the same total weight, and inside a class every source
    the same share, so that neither a big source nor a single-class source (TBX11K: only tuberculosis)
    dominates what a class looks like. Mean weight 1."""
    return nested_weights([labels, sources])


def age_source_class_weights(labels, sources, age_groups, normal: int) -> np.ndarray:
    """`source_class_weights` one level down: every age group carries the same total weight, inside it
    normal and abnormal films the same share, inside those every class, and inside a class every source.
    Where most adult films are abnormal (TBX11K and the COVID-19 sets have no normals), class balance
    alone still tells the model "adult, so abnormal"; this makes P(abnormal | age group) one half."""
    abnormal = np.asarray(labels) != normal
    return nested_weights([age_groups, abnormal, labels, sources])


def nested_weights(levels) -> np.ndarray:
    """One weight per image from nested groupings (outermost first): at every level the groups present
    inside their parent share its weight equally, and the images of a leaf share the leaf's weight.
    A leaf with fewer than MIN_CELL images (fullres: 2) weighs as if it had MIN_CELL, so it is not blown up
    into a whole group's share. Mean weight 1."""
    keys = [np.asarray(level).astype(str) for level in levels]
    n = len(keys[0])
    weights = np.zeros(n, np.float64)

    def share(mask: np.ndarray, depth: int, amount: float) -> None:
        if depth == len(keys):
            weights[mask] = amount / max(int(mask.sum()), MIN_CELL)
            return
        groups = np.unique(keys[depth][mask])
        for g in groups:
            share(mask & (keys[depth] == g), depth + 1, amount / len(groups))

    share(np.ones(n, bool), 0, 1.0)
    return (weights * n / weights.sum()).astype(np.float32)


def class_weights(labels, n_classes: int) -> dict[int, float]:
    """n / (k * n_c): every class contributes the same total weight to the loss."""
    counts = np.bincount(np.asarray(labels, int), minlength=n_classes)
    present = counts > 0
    k = int(present.sum())
    return {c: float(len(labels) / (k * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}
