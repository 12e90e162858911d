"""Train / validation / test assignment that keeps near-duplicates and same-patient images together.

A dataset's own val/test split is kept (the user chose it); images without one are split here,
group by group, stratified by label, with a fixed seed. `resplit_val` keeps only the datasets' own
test splits and regroups their train + val (a dataset's own validation split can be tiny: Kermany's
has 16 images). Whatever the origin, `leaks` lists the near-duplicate pairs and the patients whose
images still end up on different sides, and `fit` refuses to start on any.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from edge.metadata import NORMAL_CLASS

from .audit import AuditResult, pair_rows, patients_across

SPLITS = ("train", "val", "test")


def select_images(result: AuditResult, *, dedup: bool = True, drop_conflicts: bool = True) -> tuple[np.ndarray, dict]:
    """Indices of the images to train/evaluate on, and what was left out and why."""
    samples, records = result.samples, result.records
    keep = result.readable.copy()
    dropped = Counter()
    dropped["unreadable"] = int((~keep).sum())
    members = defaultdict(list)
    for i, g in enumerate(result.duplicate_group):
        if keep[i]:
            members[int(g)].append(i)
    for group in members.values():
        if len(group) < 2:
            continue
        labels = {samples[i].label for i in group}
        if drop_conflicts and len(labels) > 1:
            keep[group] = False
            dropped["label_conflict"] += len(group)
            continue
        if dedup:  # one copy per side of a dataset's own split; copies across its sides stay (a leak to report)
            sides = defaultdict(list)
            for i in group:
                sides[samples[i].split if samples[i].split in ("val", "test") else "train"].append(i)
            for side in sides.values():
                best = max(side, key=lambda i: (records[i]["width"] * records[i]["height"], -i))
                for i in side:
                    if i != best:
                        keep[i] = False
                        dropped["duplicate_copy"] += 1
    return np.nonzero(keep)[0], dict(dropped)


def assign_splits(result: AuditResult, indices: np.ndarray, *, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0, use_dataset_splits: bool = True,
                  resplit_val: bool = False) -> list[str | None]:
    """Split name per sample (None for images not in `indices`).

    resplit_val: a dataset's own "val" counts as "train"; its own "test" stays, and its train + val are
    split into train and validation here (no extra test images are taken from a dataset with its own)."""
    samples = result.samples
    splits: list[str | None] = [None] * len(samples)

    def own_split(i):
        split = samples[i].split if use_dataset_splits else None
        return "train" if resplit_val and split == "val" else split

    has_own = defaultdict(set)
    for i in indices:
        if own_split(i):
            has_own[samples[i].dataset].add(own_split(i))
    groups = defaultdict(list)
    for i in indices:
        groups[int(result.split_group[i])].append(int(i))
    free, free_own_test = [], []
    for gid, members in groups.items():
        own = {own_split(i) for i in members}
        needs_holdout = all("val" not in has_own[samples[i].dataset] for i in members)
        if own & {"val", "test"} or not needs_holdout:
            for i in members:
                splits[i] = own_split(i) or "train"
        elif resplit_val and any("test" in has_own[samples[i].dataset] for i in members):
            free_own_test.append(members)
        else:
            free.append(members)
    _stratified(free, samples, splits, val_fraction, test_fraction, seed)
    _stratified(free_own_test, samples, splits, val_fraction, 0.0, seed)
    return splits


def _stratified(groups, samples, splits, val_fraction, test_fraction, seed) -> None:
    rng = np.random.default_rng(seed)
    by_label = defaultdict(list)
    for members in sorted(groups, key=lambda m: str(samples[m[0]].path)):
        label = Counter(samples[i].label for i in members).most_common(1)[0][0]
        by_label[label].append(members)
    for label in sorted(by_label):
        bucket = by_label[label]
        order = rng.permutation(len(bucket))
        total = sum(len(m) for m in bucket)
        targets = {"val": round(total * val_fraction), "test": round(total * test_fraction)}
        filled = Counter()
        for k in order:
            members = bucket[k]
            side = next((s for s in ("val", "test") if filled[s] < targets[s]), "train")
            filled[side] += len(members)
            for i in members:
                splits[i] = side


def leaks(result: AuditResult, splits: list[str | None]) -> list[dict]:
    """Near-duplicate pairs of used images that sit on different sides of the split ("kind":
    "near_duplicate"), then patients whose used images sit on different sides ("kind": "same_patient")."""
    pairs = [{**row, "kind": "near_duplicate"} for row, (i, j, _) in zip(pair_rows(result, splits), result.pairs)
             if splits[i] is not None and splits[j] is not None and splits[i] != splits[j]]
    return pairs + patients_across(result.samples, splits)


def split_counts(samples, splits) -> dict:
    out = {s: {} for s in SPLITS}
    for sample, side in zip(samples, splits):
        if side is not None:
            out[side][sample.label] = out[side].get(sample.label, 0) + 1
    return out


def leak_summary(leaked: list[dict]) -> str:
    pairs = sum(row.get("kind", "near_duplicate") == "near_duplicate" for row in leaked)
    patients = len(leaked) - pairs
    parts = ([f"{pairs} near-duplicate pair(s)"] if pairs else []) + ([f"{patients} patient(s)"] if patients else [])
    return " and ".join(parts)


MIN_VAL_PER_SIDE = 50  # fewer normal or abnormal validation images than this: the threshold is a guess


def small_validation_warning(counts: dict) -> str | None:
    val = counts.get("val", {})
    normal = val.get(NORMAL_CLASS, 0)
    abnormal = sum(n for c, n in val.items() if c != NORMAL_CLASS)
    if normal >= MIN_VAL_PER_SIDE and abnormal >= MIN_VAL_PER_SIDE:
        return None
    return (f"the validation split holds {abnormal} abnormal and {normal} normal image(s) (fewer than "
            f"{MIN_VAL_PER_SIDE} of either): the threshold chosen on it is uncertain; use --resplit-val (keeps "
            "the datasets' test splits) or raise --val-fraction")


def seen_subset(limit: int, seed: int, by_split, paths, labels) -> None:
    """by_split/paths/labels["seen"]: at most `limit` training images (seeded sample), which fit scores in
    inference mode like the test split: seen vs test is the generalisation gap."""
    n = len(paths["train"])
    picks = np.arange(n)
    if n > limit:
        picks = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    by_split["seen"] = [by_split["train"][k] for k in picks]
    paths["seen"] = [paths["train"][k] for k in picks]
    labels["seen"] = labels["train"][picks]
