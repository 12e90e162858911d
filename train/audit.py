"""Audit a labelled image collection before training: duplicates, leakage risks, balance, readability.

Near-duplicates are found with a perceptual hash computed with OpenCV: the decoded grey image is
resized to 64x64, histogram-equalised (so a re-encoded copy with other contrast still matches),
DCT-transformed, and the 16x16 lowest frequencies minus DC (255 bits) are compared with their
median. On ../shared/data the resized / re-encoded / re-contrasted copies measured 0-10 bits
apart and the closest pairs of different radiographs 36 bits or more, so the default
`max_distance` is 20 (see docs/training.md).

Hashes are cached per file (path, size, mtime) so `fit` after `audit` does not decode again.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.datasets import Sample, class_counts
from edge.decode import load_image
from edge.errors import CxrError
from edge.paths import data_home

HASH_VERSION = "dct16-equalized-v1"
DEFAULT_MAX_DISTANCE = 20
HASH_BITS = 255


def default_cache_path() -> Path:
    """$CXR_EDGE_CACHE, else <cxr-edge data home>/cache/image-hashes.json."""
    if os.environ.get("CXR_EDGE_CACHE"):
        return Path(os.environ["CXR_EDGE_CACHE"]) / "image-hashes.json"
    return data_home() / "cache" / "image-hashes.json"


def perceptual_hash(pixels: np.ndarray) -> str:
    """256-bit DCT hash (hex) of a grey float image in [0, 1]."""
    small = cv2.resize(np.asarray(pixels, np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    small = cv2.equalizeHist(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)).astype(np.float32)
    low = cv2.dct(small)[:16, :16].ravel()[1:]
    bits = np.r_[low > np.median(low), False]
    return np.packbits(bits).tobytes().hex()


def image_record(path: str) -> dict:
    """What the audit needs to know about one file; errors become a record, not an exception."""
    try:
        image = load_image(path)
    except CxrError as exc:
        return {"error": str(exc), "reason": exc.reason, "sha256": getattr(exc, "sha256", None)}
    return {"sha256": image.sha256, "phash": perceptual_hash(image.pixels), "width": image.width,
            "height": image.height, "bits": image.bits, "kind": image.kind}


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class HashCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path and path.exists():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == HASH_VERSION:
                    self.entries = data.get("entries", {})
            except (OSError, json.JSONDecodeError):
                self.entries = {}  # a damaged cache is rebuilt, never trusted

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": HASH_VERSION, "entries": self.entries}))
        os.replace(tmp, self.path)


def hash_samples(samples: list[Sample], cache_path: Path | None = None, workers: int | None = None,
                 progress=None) -> tuple[list[dict], dict]:
    """Records for every sample (cached), and timing stats."""
    start = time.perf_counter()
    cache = HashCache(cache_path)
    keys = [_cache_key(s.path) for s in samples]
    todo = [i for i, k in enumerate(keys) if k not in cache.entries]
    workers = workers or min(4, os.cpu_count() or 1)
    if todo:
        paths = [str(samples[i].path) for i in todo]
        if workers > 1 and len(todo) > 32:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(image_record, paths, chunksize=32)
                for n, (i, record) in enumerate(zip(todo, results)):
                    cache.entries[keys[i]] = record
                    if progress:
                        progress(n + 1, len(todo))
        else:
            for n, i in enumerate(todo):
                cache.entries[keys[i]] = image_record(paths[n])
                if progress:
                    progress(n + 1, len(todo))
        cache.save()
    stats = {"seconds": round(time.perf_counter() - start, 2), "hashed": len(todo),
             "from_cache": len(samples) - len(todo), "cache": str(cache_path) if cache_path else None}
    return [cache.entries[k] for k in keys], stats


def _hash_words(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    ok = np.array([r.get("phash") is not None for r in records], bool)
    words = np.zeros((len(records), 4), np.uint64)
    for i, r in enumerate(records):
        if ok[i]:
            words[i] = np.frombuffer(bytes.fromhex(r["phash"]), dtype=">u8")
    return words, ok


def near_duplicate_pairs(records: list[dict], max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """(i, j, hamming distance) for every pair of readable images within max_distance, i < j."""
    words, ok = _hash_words(records)
    index = np.nonzero(ok)[0]
    w = words[index]
    pairs = []
    for a in range(len(index) - 1):
        dist = np.bitwise_count(w[a] ^ w[a + 1:]).sum(axis=1)
        for b in np.nonzero(dist <= max_distance)[0]:
            pairs.append((int(index[a]), int(index[a + 1 + b]), int(dist[b])))
    return pairs


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


@dataclass
class AuditResult:
    samples: list[Sample]
    records: list[dict]
    pairs: list[tuple[int, int, int]]  # near-duplicate pairs (includes exact copies, distance 0)
    duplicate_group: np.ndarray  # images that are copies of each other share an id
    split_group: np.ndarray  # duplicates and images of the same patient: must stay on one side
    report: dict = field(default_factory=dict)

    @property
    def readable(self) -> np.ndarray:
        return np.array([r.get("error") is None for r in self.records], bool)


def _describe(sample: Sample, split: str | None = None) -> dict:
    return {"path": str(sample.path), "dataset": sample.dataset, "split": split if split is not None else sample.split,
            "label": sample.label}


def _scope(a: Sample, b: Sample, split_a, split_b) -> str:
    if a.dataset != b.dataset:
        return "across_datasets"
    return "within_split" if split_a == split_b else "across_splits"


def pair_rows(result: AuditResult, splits: list[str | None] | None = None) -> list[dict]:
    rows = []
    for i, j, d in result.pairs:
        a, b = result.samples[i], result.samples[j]
        sa, sb = (splits[i], splits[j]) if splits is not None else (a.split, b.split)
        exact = result.records[i].get("sha256") == result.records[j].get("sha256")
        rows.append({"a": _describe(a, sa), "b": _describe(b, sb), "distance": d, "exact": bool(exact),
                     "scope": _scope(a, b, sa, sb), "label_conflict": a.label != b.label,
                     "crosses_split": sa != sb})
    return rows


def patient_key(sample: Sample) -> str | None:
    """The patient id: a label CSV's patient column (NIH, Hannover), else where a dataset's file names
    carry one (Kermany: person123_..., IM-0115-...)."""
    import re

    if sample.patient:
        return sample.patient
    name = sample.path.name
    match = re.match(r"(person\d+)_", name) or re.match(r"((?:NORMAL2-)?IM-\d+)-", name)
    return f"{sample.dataset}:{match.group(1)}" if match else None


def patients_across(samples: list[Sample], splits) -> list[dict]:
    """Patients (patient_key) whose images sit on different sides of `splits` (None = not used): one row
    each, naming one image on each of two sides and the image count per side."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if splits[i] is not None:
            key = patient_key(s)
            if key is not None:
                by_patient[key].append(i)
    rows = []
    for key, members in sorted(by_patient.items()):
        sides = Counter(splits[i] for i in members)
        if len(sides) < 2:
            continue
        first = {}
        for i in members:
            first.setdefault(splits[i], i)
        a, b = sorted(first.values())[:2]
        rows.append({"kind": "same_patient", "patient": key, "a": _describe(samples[a], splits[a]),
                     "b": _describe(samples[b], splits[b]), "images": dict(sides), "crosses_split": True})
    return rows


def run_audit(samples: list[Sample], *, max_distance: int = DEFAULT_MAX_DISTANCE, cache_path: Path | None = None,
              workers: int | None = None, progress=None) -> AuditResult:
    records, stats = hash_samples(samples, cache_path, workers, progress)
    start = time.perf_counter()
    pairs = near_duplicate_pairs(records, max_distance)
    dup = UnionFind(len(samples))
    for i, j, _ in pairs:
        dup.union(i, j)
    split = UnionFind(len(samples))
    for i, j, _ in pairs:
        split.union(i, j)
    first_of_patient: dict[str, int] = {}
    for i, s in enumerate(samples):
        key = patient_key(s)
        if key is not None:
            split.union(i, first_of_patient.setdefault(key, i))
    result = AuditResult(samples, records, pairs, dup.labels(), split.labels())
    stats["pair_seconds"] = round(time.perf_counter() - start, 2)
    result.report = build_report(result, max_distance, stats)
    return result


def _size_summary(samples, records) -> dict:
    out = {}
    by_dataset = defaultdict(list)
    for s, r in zip(samples, records):
        if r.get("error") is None:
            by_dataset[s.dataset].append(r)
    for name, recs in sorted(by_dataset.items()):
        sizes = Counter(f"{r['width']}x{r['height']}" for r in recs)
        out[name] = {
            "most_common_sizes": dict(sizes.most_common(5)),
            "distinct_sizes": len(sizes),
            "min_side": min(min(r["width"], r["height"]) for r in recs),
            "max_side": max(max(r["width"], r["height"]) for r in recs),
            "bit_depths": dict(Counter(str(r["bits"]) for r in recs)),
            "formats": dict(Counter(r["kind"] for r in recs)),
        }
    return out


def _class_sources(samples, records) -> dict:
    out = {}
    for cls in sorted({s.label for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.label == cls]
        sides = [min(records[i]["width"], records[i]["height"]) for i in idx if records[i].get("error") is None]
        out[cls] = {"datasets": dict(Counter(samples[i].dataset for i in idx)),
                    "median_min_side_px": float(np.median(sides)) if sides else None}
    return out


def _warnings(samples, records, summary, sources) -> list[str]:
    warnings = []
    totals = Counter(s.label for s in samples)
    if totals:
        big, small = max(totals.values()), min(totals.values())
        if small and big / small >= 3:
            top = max(totals, key=totals.get)
            warnings.append(f"class imbalance: {top} is {totals[top] / len(samples):.0%} of the images "
                            f"(largest/smallest class = {big / small:.1f}); accuracy alone hides a model that "
                            f"always answers {top}; read per-class recall and the screening metrics")
    datasets = Counter(s.dataset for s in samples)
    if len(datasets) > 1:
        for name in sorted(datasets):
            own = {s.label for s in samples if s.dataset == name}
            if len(own) == 1:
                warnings.append(f"single-class source: {name} holds only '{next(iter(own))}' images "
                                f"({datasets[name]}); a model can learn 'looks like {name}' instead of the "
                                f"disease: balance by source and class, and score it held out")
        for cls, info in sources.items():
            for name, n in info["datasets"].items():
                share = n / totals[cls]
                others = sum(1 for s in samples if s.dataset == name and s.label != cls)
                other_total = len(samples) - totals[cls]
                if share >= 0.8 and other_total and others / other_total <= 0.2:
                    warnings.append(
                        f"source confound: {share:.0%} of '{cls}' images come from {name}, which holds only "
                        f"{others / other_total:.0%} of the other classes; a model can learn the source "
                        f"(patient age, scanner, image size, text markers) instead of the disease")
        sides = {c: i["median_min_side_px"] for c, i in sources.items() if i["median_min_side_px"]}
        if sides and max(sides.values()) >= 2 * min(sides.values()):
            warnings.append("image size differs by class before resizing (median shorter side: "
                            + ", ".join(f"{c} {v:.0f}px" for c, v in sorted(sides.items()))
                            + "); resampling artefacts can act as a label shortcut")
    if summary["label_conflicts"]:
        warnings.append(f"{summary['label_conflicts']} near-duplicate pair(s) carry different labels "
                        "(the same radiograph labelled twice differently); fit leaves those images out")
    if summary["crossing_splits"]:
        warnings.append(f"{summary['crossing_splits']} near-duplicate pair(s) sit on different sides of the "
                        "datasets' own train/val/test splits (leakage); fit refuses unless allowed")
    unreadable = sum(1 for r in records if r.get("error"))
    if unreadable:
        warnings.append(f"{unreadable} file(s) cannot be decoded and are left out")
    return warnings


def _patient_warning(patients: list[dict]) -> list[str]:
    if not patients:
        return []
    first = patients[0]
    return [f"{len(patients)} patient(s) have images on different sides of a dataset's own train/val/test split "
            f"(e.g. {first['patient']}: {first['a']['path']} in {first['a']['split']}, {first['b']['path']} in "
            f"{first['b']['split']}); fit refuses unless --allow-leakage, or regroup with --resplit"]


def build_report(result: AuditResult, max_distance: int, stats: dict) -> dict:
    samples, records = result.samples, result.records
    rows = pair_rows(result)
    scopes = Counter(r["scope"] for r in rows)
    groups = Counter(int(g) for g in result.duplicate_group)
    summary = {
        "pairs": len(rows),
        "exact_pairs": sum(r["exact"] for r in rows),
        "within_split": scopes.get("within_split", 0),
        "across_splits": scopes.get("across_splits", 0),
        "across_datasets": scopes.get("across_datasets", 0),
        "label_conflicts": sum(r["label_conflict"] for r in rows),
        "crossing_splits": sum(r["crosses_split"] and r["a"]["split"] is not None and r["b"]["split"] is not None
                               for r in rows),
        "images_in_duplicate_groups": sum(n for n in groups.values() if n > 1),
        "redundant_copies": sum(n - 1 for n in groups.values() if n > 1),
    }
    patient_groups = Counter(int(g) for g in result.split_group)
    sources = _class_sources(samples, records)
    patients = patients_across(samples, [s.split for s in samples])
    return {
        "n_images": len(samples),
        "datasets": sorted({s.dataset for s in samples}),
        "class_counts": class_counts(samples),
        "near_duplicate_pairs": rows,
        "duplicates": summary,
        "split_groups": {"groups": len(patient_groups),
                         "largest": max(patient_groups.values()) if patient_groups else 0,
                         "rule": "near-duplicates and images of the same patient id (label CSV column or file name) "
                                 "are kept on the same side of every split"},
        "unreadable": [{"path": str(s.path), "dataset": s.dataset, "reason": r.get("reason"), "error": r["error"]}
                       for s, r in zip(samples, records) if r.get("error")],
        "images": _size_summary(samples, records),
        "class_sources": sources,
        "same_patient_across_splits": patients,
        "warnings": _warnings(samples, records, summary, sources) + _patient_warning(patients),
        "hash": {"method": "DCT perceptual hash of the histogram-equalised 64x64 grey image, "
                           f"{HASH_BITS} bits (OpenCV)", "version": HASH_VERSION,
                 "max_distance": max_distance, **stats},
    }
