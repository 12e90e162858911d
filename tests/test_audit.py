"""train.audit: near-duplicates made by real re-encoding, leakage across splits, caching, and the
overlaps that ../shared/data's README describes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

from edge.datasets import discover, discover_many
from train.audit import perceptual_hash, run_audit
from train.splits import assign_splits, leaks, select_images

MINI = Path(__file__).parent / "data" / "cxr-mini"


def _reencode(src: Path, dst: Path, size: int, quality: int, contrast: float = 1.0) -> Path:
    """A resized, re-contrasted JPEG copy: what dataset aggregators do to images."""
    img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = cv2.convertScaleAbs(img, alpha=contrast, beta=0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return dst


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_hash_matches_reencoded_copy_not_other_radiographs(tmp_path):
    from edge.decode import load_image

    files = sorted(MINI.glob("*/*.jpg"))
    original = files[0]
    copy = _reencode(original, tmp_path / "copy.jpg", 300, 70, contrast=1.3)
    h0, h1 = (perceptual_hash(load_image(p).pixels) for p in (original, copy))
    assert _hamming(h0, h1) <= 20
    others = [perceptual_hash(load_image(p).pixels) for p in files[1:]]
    assert min(_hamming(h0, h) for h in others) > 20


def _two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "site-a"
    for cls in ("NORMAL", "PNEUMONIA", "Covid"):
        for f in sorted((MINI / cls).glob("*.jpg")):
            shutil.copy(f, (a / cls).mkdir(parents=True, exist_ok=True) or a / cls / f.name)
    b = tmp_path / "site-b"
    src = sorted((MINI / "NORMAL").glob("*.jpg"))[0]
    _reencode(src, b / "normal" / "copy-of-normal.jpg", 256, 80)
    _reencode(sorted((MINI / "Covid").glob("*.jpg"))[0], b / "pneumonia" / "mislabelled.jpg", 200, 85)
    shutil.copy(sorted((MINI / "PNEUMONIA").glob("*.jpg"))[1], b / "pneumonia" / "exact.jpg")
    return a, b


def test_audit_finds_cross_dataset_copies_and_label_conflicts(tmp_path):
    a, b = _two_datasets(tmp_path)
    result = run_audit(discover_many([a, b]), cache_path=tmp_path / "cache.json")
    report = result.report
    pairs = report["near_duplicate_pairs"]
    assert report["duplicates"]["across_datasets"] == 3
    assert {p["b"]["dataset"] for p in pairs} == {"site-b"}
    assert sum(p["exact"] for p in pairs) == 1
    conflicts = [p for p in pairs if p["label_conflict"]]
    assert len(conflicts) == 1 and {conflicts[0]["a"]["label"], conflicts[0]["b"]["label"]} == {"covid-19", "pneumonia"}
    assert report["class_counts"]["total"]["normal"] == 9
    keep, dropped = select_images(result)
    assert dropped == {"unreadable": 0, "duplicate_copy": 2, "label_conflict": 2}
    assert len(keep) == 27 - 4
    assert report["hash"]["hashed"] == 27
    again = run_audit(discover_many([a, b]), cache_path=tmp_path / "cache.json")
    assert again.report["hash"]["from_cache"] == 27 and again.report["near_duplicate_pairs"] == pairs


def test_grouped_split_keeps_copies_together(tmp_path):
    a, b = _two_datasets(tmp_path)
    result = run_audit(discover_many([a, b]), cache_path=None)
    keep, _ = select_images(result, dedup=False, drop_conflicts=False)
    for seed in range(5):
        splits = assign_splits(result, keep, val_fraction=0.3, test_fraction=0.3, seed=seed)
        assert leaks(result, splits) == []
        assert {s for s in splits if s} == {"train", "val", "test"}


def test_dataset_split_that_leaks_is_reported(tmp_path):
    root = tmp_path / "ds"
    for split, cls in (("train", "NORMAL"), ("val", "NORMAL"), ("train", "PNEUMONIA"), ("val", "PNEUMONIA")):
        for f in sorted((MINI / cls).glob("*.jpg"))[:4] if split == "train" else sorted((MINI / cls).glob("*.jpg"))[4:]:
            shutil.copy(f, (root / split / cls).mkdir(parents=True, exist_ok=True) or root / split / cls / f.name)
    _reencode(root / "train" / "NORMAL" / sorted(p.name for p in (root / "train" / "NORMAL").iterdir())[0],
              root / "val" / "NORMAL" / "leaked.jpg", 180, 75)
    result = run_audit(discover(root), cache_path=None)
    assert result.report["duplicates"]["across_splits"] == 1
    assert result.report["duplicates"]["crossing_splits"] == 1
    keep, _ = select_images(result)
    leaked = leaks(result, assign_splits(result, keep))
    assert len(leaked) == 1 and {leaked[0]["a"]["split"], leaked[0]["b"]["split"]} == {"train", "val"}
    regrouped = assign_splits(result, keep, use_dataset_splits=False)
    assert leaks(result, regrouped) == []


def test_cli_audit_json_on_shared_data_finds_the_readme_overlaps(shared_data):
    """README: covid19-3class shares pediatric images with kermany, has copies inside itself, and at
    least one 'Covid' image is a pediatric viral-pneumonia image."""
    proc = subprocess.run([sys.executable, "-m", "train.cli", "audit", str(shared_data), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    pairs = report["near_duplicate_pairs"]
    cross = [p for p in pairs if p["scope"] == "across_datasets"]
    assert {frozenset((p["a"]["dataset"], p["b"]["dataset"])) for p in cross} == {
        frozenset(("covid19-3class", "kermany-pneumonia"))}
    assert sum(p["a"]["label"] == p["b"]["label"] == "normal" for p in cross) >= 5
    covid_child = [p for p in cross if p["label_conflict"]]
    assert any("person" in (p["a"]["path"] + p["b"]["path"]) and "virus" in (p["a"]["path"] + p["b"]["path"])
               for p in covid_child)
    inside = [p for p in pairs if p["a"]["dataset"] == p["b"]["dataset"] == "covid19-3class"]
    assert len(inside) >= 4
    assert report["class_counts"]["kermany-pneumonia"] == {"normal": 1341, "pneumonia": 3875}
    # The README's traps: TBX11K and Hannover hold one class each, so "this hospital" can stand for the disease.
    assert any("single-class source: tb-tbx11k" in w for w in report["warnings"])
    assert any("single-class source: covid-hannover" in w for w in report["warnings"])
    assert set(report["datasets"]) >= {"adult-nih", "tb-shenzhen", "tb-tbx11k", "covid-hannover"}
    assert not {"not-cxr", "lung-masks"} & set(report["datasets"])
    assert "not-cxr: skipped" in proc.stderr and "lung-masks: skipped" in proc.stderr
    assert any("class imbalance" in w for w in report["warnings"])
