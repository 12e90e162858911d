"""edge.datasets: the layouts public CXR datasets come in, aliases, skips and the errors users see."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.datasets import (CANONICAL_CLASSES, DEFAULT_ALIASES, Sample, class_counts, discover, discover_many,
                           parse_alias_overrides)
from edge.errors import CxrError, ExitCode

MINI = Path(__file__).parent / "data" / "cxr-mini"


def _images(cls: str) -> list[Path]:
    return sorted((MINI / cls).glob("*.jpg"))


def _copy(files, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, folder / f.name)) for f in files]


def test_class_folders_any_case(tmp_path):
    samples = discover(MINI)
    assert {s.label for s in samples} == {"normal", "pneumonia", "covid-19"}
    assert all(s.dataset == "cxr-mini" and s.split is None for s in samples)
    assert class_counts(samples)["total"] == {"normal": 8, "pneumonia": 8, "covid-19": 8}


def test_split_folders_and_images_subfolder(tmp_path):
    root = tmp_path / "COVID-QU-Ex"
    _copy(_images("Covid")[:3], root / "Train" / "COVID-19" / "images")
    _copy(_images("Covid")[:3], root / "Train" / "COVID-19" / "masks")  # not radiographs: ignored
    _copy(_images("NORMAL")[:2], root / "Val" / "Normal" / "images")
    _copy(_images("PNEUMONIA")[:2], root / "Test" / "Non-COVID" / "images")
    samples = discover(root)
    assert len(samples) == 7
    assert {(s.split, s.label) for s in samples} == {("train", "covid-19"), ("val", "normal"),
                                                   ("test", "pneumonia")}
    assert all("masks" not in s.path.parts for s in samples)


def test_split_folder_given_directly_names_the_parent_dataset(tmp_path):
    _copy(_images("NORMAL")[:2], tmp_path / "kermany" / "train" / "NORMAL")
    samples = discover(tmp_path / "kermany" / "train")
    assert {(s.dataset, s.split) for s in samples} == {("kermany", "train")}


def test_csv_of_path_label(tmp_path):
    files = _copy(_images("NORMAL")[:2] + _images("Covid")[:2], tmp_path / "site")
    rows = ["file,label,source"] + [f"{f.name},{'NORMAL' if i < 2 else 'COVID-19'},x" for i, f in enumerate(files)]
    (tmp_path / "site" / "labels.csv").write_text("\n".join(rows) + "\n")
    samples = discover(tmp_path / "site")
    assert [s.label for s in samples].count("covid-19") == 2
    assert discover(tmp_path / "site" / "labels.csv") == samples


def test_split_lists_in_text_files(tmp_path):
    root = tmp_path / "covidx"
    files = _copy(_images("NORMAL")[:2] + _images("Covid")[:2], root / "train")
    (root / "train.txt").write_text(f"p1 {files[0].name} normal src\np2 {files[2].name} positive src\n")
    (root / "val.txt").write_text(f"train/{files[1].name} Normal\ntrain/{files[3].name} COVID-19\n")
    samples = discover(root)
    assert sorted((s.split, s.label) for s in samples) == [("train", "covid-19"), ("train", "normal"),
                                                          ("val", "covid-19"), ("val", "normal")]


def test_collection_of_datasets_and_discover_many(tmp_path):
    _copy(_images("NORMAL")[:2], tmp_path / "a" / "train" / "NORMAL")
    _copy(_images("PNEUMONIA")[:3], tmp_path / "b" / "Viral Pneumonia")
    samples = discover(tmp_path)
    assert {s.dataset for s in samples} == {"a", "b"}
    both = discover_many([tmp_path / "a", tmp_path / "b", tmp_path / "a"])  # the same root twice counts once
    assert len(both) == 5


def test_unknown_folder_names_the_folder_and_the_aliases(tmp_path):
    _copy(_images("NORMAL")[:1], tmp_path / "ds" / "Normal")
    _copy(_images("Covid")[:1], tmp_path / "ds" / "Lung_Opacity")
    with pytest.raises(CxrError) as info:
        discover(tmp_path / "ds")
    assert info.value.code == ExitCode.DATA
    message = str(info.value)
    assert "Lung_Opacity" in message and "covid19->covid-19" in message and "\n" not in message
    overrides = parse_alias_overrides(["Lung_Opacity=skip"])
    assert {s.label for s in discover(tmp_path / "ds", aliases=overrides)} == {"normal"}
    assert {s.label for s in discover(tmp_path / "ds", aliases=parse_alias_overrides(["lung opacity=pneumonia"]))} \
        == {"normal", "pneumonia"}


def test_empty_and_unlabelled_folders(tmp_path):
    (tmp_path / "ds" / "NORMAL").mkdir(parents=True)
    with pytest.raises(CxrError, match="holds no images") as info:
        discover(tmp_path / "ds")
    assert info.value.code == ExitCode.DATA
    _copy(_images("NORMAL")[:1], tmp_path / "flat")
    with pytest.raises(CxrError, match="no class folders"):
        discover(tmp_path / "flat")
    with pytest.raises(CxrError, match="not found"):
        discover(tmp_path / "missing")


def test_classes_subset_requires_an_explicit_skip(tmp_path):
    with pytest.raises(CxrError, match="not one of the model's classes"):
        discover(MINI, classes=("normal", "pneumonia"))
    samples = discover(MINI, classes=("normal", "pneumonia"), aliases=parse_alias_overrides(["covid=skip"]))
    assert {s.label for s in samples} == {"normal", "pneumonia"}


def test_alias_overrides_are_validated():
    assert parse_alias_overrides(["Lung_Opacity=Pneumonia"]) == {"lung opacity": "pneumonia"}
    with pytest.raises(CxrError) as info:
        parse_alias_overrides(["nonsense"])
    assert info.value.code == ExitCode.USAGE
    with pytest.raises(CxrError, match="not one of the model's classes"):
        discover(MINI, aliases={"normal": "effusion"})
    assert DEFAULT_ALIASES["no finding"] == "normal"


def test_shared_data_is_one_collection(shared_data):
    samples = discover(shared_data)
    counts = class_counts(samples)
    assert counts["kermany-pneumonia"] == {"normal": 1341, "pneumonia": 3875}
    assert counts["covid19-3class"] == {"covid-19": 111, "normal": 70, "pneumonia": 70}
    assert counts["fullres"] == {"covid-19": 2, "normal": 2}
    assert counts["adult-nih"] == {"normal": 500, "pneumonia": 500}
    assert counts["tb-shenzhen"] == {"normal": 322, "tuberculosis": 334}
    assert counts["tb-tbx11k"] == {"tuberculosis": 800}
    assert counts["covid-hannover"] == {"covid-19": 243}
    assert all(isinstance(s, Sample) for s in samples)
    nih = [s for s in samples if s.dataset == "adult-nih"]
    assert all(s.patient and s.patient.startswith("adult-nih:") and s.view in ("AP", "PA") for s in nih)
    assert all(s.age is not None for s in nih) and sum(s.age < 15 for s in nih) == 55  # README: 55 children
    hannover = [s for s in samples if s.dataset == "covid-hannover"]
    assert len({s.patient for s in hannover}) == 71


def test_csv_with_extra_columns_beside_class_folders_and_a_folder_without_classes(tmp_path):
    """NIH/TBX11K/Hannover style: labels.csv with patient, age, sex and view beside class folders; a folder of
    unlabelled negatives in the collection is left out with a note naming it, not blamed as a class."""
    root = tmp_path / "collection"
    nih = root / "adults"
    files = _copy(_images("NORMAL")[:2], nih / "images") + _copy(_images("PNEUMONIA")[:1], nih / "images")
    (nih / "labels.csv").write_text(
        "file,label,finding_labels,patient_id,age,sex,view\n"
        f"images/{files[0].name},NORMAL,No Finding,7,058Y,m,pa\n"
        f"images/{files[1].name},NORMAL,No Finding,7,58,M,PA\n"
        f"images/{files[2].name},TUBERCULOSIS,TB,9,,F,AP\n")
    tb = root / "tb-only"
    tb_files = _copy(_images("Covid")[:2], tb / "TUBERCULOSIS")
    (tb / "labels.csv").write_text("file,label,tbx11k_label\n" +
                                   "".join(f"TUBERCULOSIS/{f.name},TUBERCULOSIS,active\n" for f in tb_files))
    _copy(_images("NORMAL")[:1], root / "not-cxr" / "ct")
    notes: list[str] = []
    samples = discover(root, notes=notes)
    assert [n.split(":")[0] for n in notes] == [str(root / "not-cxr")]
    assert "skipped" in notes[0]
    assert class_counts(samples)["adults"] == {"normal": 2, "tuberculosis": 1}
    assert class_counts(samples)["tb-only"] == {"tuberculosis": 2}
    adults = sorted((s for s in samples if s.dataset == "adults"), key=lambda s: s.path.name)
    by_name = {s.path.name: s for s in adults}
    first = by_name[files[0].name]
    assert (first.patient, first.age, first.sex, first.view) == ("adults:7", 58.0, "M", "PA")
    assert by_name[files[2].name].age is None
    assert "tuberculosis" in CANONICAL_CLASSES


def test_splits_csv_keeps_each_image_source(tmp_path):
    """cxr-train's splits.csv names each image's dataset: eval's per-source table must use it."""
    files = _images("NORMAL")[:1] + _images("Covid")[:1]
    table = tmp_path / "splits.csv"
    table.write_text("path,dataset,label,split\n" + f"{files[0]},kermany,normal,test\n{files[1]},hannover,covid-19,test\n")
    assert {(s.dataset, s.label) for s in discover(table)} == {("kermany", "normal"), ("hannover", "covid-19")}


def test_error_names_the_folder_actually_at_fault(tmp_path):
    root = tmp_path / "collection"
    _copy(_images("NORMAL")[:1], root / "good" / "NORMAL")
    _copy(_images("NORMAL")[:1], root / "bad" / "NORMAL")
    _copy(_images("PNEUMONIA")[:1], root / "bad" / "Effusion")
    _copy(_images("NORMAL")[:1], root / "negatives" / "ct")
    with pytest.raises(CxrError) as err:
        discover(root)
    assert err.value.code == ExitCode.DATA
    assert str(root / "bad" / "Effusion") in str(err.value) and "collection:" not in str(err.value)
