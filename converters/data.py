"""Labelled images for calibration, fine-tuning and parity, read through the one preprocessing."""

from __future__ import annotations

import csv
import dataclasses
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.decode import load_image
from edge.errors import CxrError, ExitCode
from edge.preprocess import PreprocessSpec, preprocess

TRAIN_SPLITS = ("train", None)  # None: the folder declares no split


@dataclass
class ImageSet:
    """Preprocessed images with integer labels (indices into `classes`)."""

    images: np.ndarray  # (N, H, W, 1) float32 in [0, 1]
    labels: np.ndarray  # (N,) int
    classes: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)  # "path: reason" for files that could not be read

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        counts = Counter(self.classes[i] for i in self.labels)
        return {"images": len(self), "per_class": {c: counts.get(c, 0) for c in self.classes},
                "skipped": len(self.skipped)}


def find_samples(roots: list[Path], classes: list[str], aliases: list[str] | None = None,
                 splits_csv: Path | None = None) -> list:
    """Every labelled image under `roots` whose class the model knows; CxrError (exit 6) when none.

    splits_csv: the RUN/splits.csv cxr-train wrote; when given (and it lists these images), each
    image gets the split training used, so calibration stays on training images and parity can
    run on the validation images the model never trained on.
    """
    from edge import datasets

    overrides = datasets.parse_alias_overrides(aliases or [])
    samples = datasets.discover_many([Path(r) for r in roots], aliases=overrides or None, classes=classes)
    known = [s for s in samples if s.label in classes]
    if not known:
        shown = ", ".join(str(r) for r in roots)
        raise CxrError(f"{shown}: no labelled images for the model's classes {classes}",
                       code=ExitCode.DATA, reason="no_labelled_images")
    if splits_csv is not None and Path(splits_csv).is_file():
        known = apply_run_splits(known, Path(splits_csv))
    return known


def apply_run_splits(samples: list, splits_csv: Path) -> list:
    """Samples with the split cxr-train gave them; images it did not use (duplicates) become 'unused'."""
    assigned = {}
    with open(splits_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("path") and row.get("split"):
                assigned[str(Path(row["path"]).resolve())] = row["split"]
    if not any(str(Path(s.path).resolve()) in assigned for s in samples):
        return samples  # other data than the model was trained on: keep the folders' own splits
    return [dataclasses.replace(s, split=assigned.get(str(Path(s.path).resolve()), "unused")) for s in samples]


def run_splits_file(model_path: Path) -> Path | None:
    """RUN/splits.csv beside a model cxr-train wrote, if there is one."""
    candidate = Path(model_path).parent / "splits.csv"
    return candidate if candidate.is_file() else None


def training_part(samples: list) -> list:
    """The training split when the folders declare splits, else everything given."""
    train = [s for s in samples if s.split in TRAIN_SPLITS]
    return train or samples


def stratified_sample(samples: list, n: int | None, seed: int = 0) -> list:
    """Up to n samples with every class represented in proportion (at least one each); deterministic."""
    if n is None or n >= len(samples):
        return sorted(samples, key=lambda s: str(s.path))
    by_class: dict[str, list] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    quota = {label: max(1, round(n * len(members) / len(samples))) for label, members in by_class.items()}
    while sum(quota.values()) > n:  # rounding overshoot: trim the largest class
        largest = max(quota, key=quota.get)
        quota[largest] -= 1
    chosen = [s for label, members in by_class.items() for s in members[:quota[label]]]
    return sorted(chosen, key=lambda s: str(s.path))


def load_images(samples: list, spec: PreprocessSpec, classes: list[str]) -> ImageSet:
    """Decode and preprocess; unreadable files are skipped and named, never scored."""
    images, labels, paths, skipped = [], [], [], []
    for sample in samples:
        try:
            decoded = load_image(sample.path)
        except CxrError as exc:
            skipped.append(f"{sample.path}: {exc}")
            continue
        images.append(preprocess(decoded.pixels, spec))
        labels.append(classes.index(sample.label))
        paths.append(str(sample.path))
    if skipped:
        sys.stderr.write(f"converters: skipped {len(skipped)} unreadable image(s), first: {skipped[0]}\n")
    if not images:
        raise CxrError("none of the selected images could be read", code=ExitCode.DATA, reason="no_readable_images")
    array = np.stack(images).astype(np.float32)
    return ImageSet(array, np.asarray(labels, dtype=np.int64), list(classes), paths, skipped)
