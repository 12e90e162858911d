"""Find labelled chest X-rays in the layouts public datasets come in, and map their labels onto
the model's canonical class names.

One place knows every dataset's spelling of a class (like torchxrayvision's datasets.py): a
folder called `NORMAL`, `Normal` or `No Finding` is the class "normal"; `Covid`, `COVID-19` and
`covid19` are "covid-19". Training (`cxr-train`) and the edge's `cxr-edge eval` both read data
through `discover`, so they agree on what an image's label is.

Layouts recognised under a root folder (checked in this order):
1. split lists: `train.txt`, `val.txt`, `test.txt` (also `*_train.txt`...), one image per line;
   a line is `path`, `path label`, or COVIDx-style `id path label source`;
2. a CSV file with a path column (`path`, `file`, `filename`, `image`...) and a label column
   (`label`, `class`, `finding`...), optionally a `split` column;
3. split folders (`train`, `val`/`valid`/`validation`, `test`, any case) holding class folders;
4. class folders directly under the root.
A class folder that has an `images/` subfolder (COVID-QU-Ex, COVID-19 Radiography Database)
contributes only the files under `images/` (its `masks/` are not radiographs).
A root whose subfolders are neither splits nor classes but each a dataset (like `shared/data`)
is read as a collection: one dataset per subfolder.

Skipping: map a name to `skip` (`--alias "Lung_Opacity=skip"`) and its folder or CSV rows are
left out. Any other unknown name is an error (exit 6) that names the folder and the known aliases.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import CxrError, ExitCode

CANONICAL_CLASSES = ("normal", "pneumonia", "covid-19", "tuberculosis")
SKIP = "skip"

DEFAULT_ALIASES: dict[str, str] = {
    # normal
    "normal": "normal",
    "no finding": "normal",
    "healthy": "normal",
    # pneumonia (any non-COVID pneumonia)
    "pneumonia": "pneumonia",
    "viral pneumonia": "pneumonia",
    "bacterial pneumonia": "pneumonia",
    "pneumonia-viral": "pneumonia",
    "pneumonia-bacterial": "pneumonia",
    "non-covid": "pneumonia",  # COVID-QU-Ex: non-COVID infections (viral or bacterial pneumonia)
    # covid-19
    "covid": "covid-19",
    "covid-19": "covid-19",
    "covid19": "covid-19",
    "covid 19": "covid-19",
    "covid-19 pneumonia": "covid-19",
    "positive": "covid-19",  # COVIDx split lists: positive = COVID-19
    # tuberculosis (active or latent)
    "tuberculosis": "tuberculosis",
    "tb": "tuberculosis",
    "tbc": "tuberculosis",
    "active tuberculosis": "tuberculosis",
}

SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}
PATH_COLUMNS = ("path", "file", "filename", "file name", "image", "image path", "image_path", "filepath",
                "image index", "imagefile")
LABEL_COLUMNS = ("label", "class", "finding", "finding labels", "diagnosis", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "fold")
# Optional per-image facts a CSV may carry (NIH: patient_id, age, sex, view); used for grouped splits and
# per-age / per-view metrics.
PATIENT_COLUMNS = ("patient id", "patient", "patientid", "subject id", "subject")
AGE_COLUMNS = ("age", "patient age")
SEX_COLUMNS = ("sex", "gender", "patient gender", "patient sex")
VIEW_COLUMNS = ("view", "view position", "projection")
DATASET_COLUMNS = ("dataset",)  # cxr-train's splits.csv names each image's source
MASK_FOLDERS = {"masks", "mask", "lung masks", "infection masks"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str  # one of the model's classes
    dataset: str  # e.g. "kermany-pneumonia"
    split: str | None  # "train", "val" or "test" when the dataset defines its own split, else None
    patient: str | None = None  # the dataset's patient id (CSV column), when it has one
    age: float | None = None  # years, when known
    sex: str | None = None
    view: str | None = None  # "PA", "AP", ... when known


def normalize_name(name: str) -> str:
    """Case-, underscore- and space-insensitive form of a folder or label name."""
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def parse_alias_overrides(items: Iterable[str]) -> dict[str, str]:
    """["Lung_Opacity=pneumonia", "Other=skip"] -> {"lung opacity": "pneumonia", "other": "skip"}."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, target = str(item).partition("=")
        if not sep or not name.strip() or not target.strip():
            raise CxrError(f"--alias {item!r}: expected NAME=CLASS (for example Lung_Opacity=pneumonia, "
                           f"or NAME={SKIP} to leave a folder out)", code=ExitCode.USAGE, reason="bad_option")
        out[normalize_name(name)] = normalize_name(target)
    return out


def _alias_table(aliases: dict[str, str] | None, classes: tuple[str, ...]) -> dict[str, str]:
    table = dict(DEFAULT_ALIASES)
    for cls in classes:
        table.setdefault(normalize_name(cls), cls)
    for name, target in (aliases or {}).items():
        target = normalize_name(target)
        if target != SKIP and target not in classes:
            raise CxrError(f"alias {name}={target}: {target!r} is not one of the model's classes "
                           f"({', '.join(classes)}) nor {SKIP!r}", code=ExitCode.USAGE, reason="bad_option")
        table[normalize_name(name)] = target
    return table


class _Resolver:
    """Maps a folder/label name to a class, or None for skip; raises for unknown names."""

    def __init__(self, aliases: dict[str, str] | None, classes):
        self.classes = tuple(classes)
        self.table = _alias_table(aliases, self.classes)
        self.notes: list[str] = []  # folders left out, in words, for the CLI to print

    def known(self, name: str) -> bool:
        return normalize_name(name) in self.table

    def __call__(self, name: str, where: Path | str) -> str | None:
        target = self.table.get(normalize_name(name))
        if target is None:
            raise CxrError(f"{where}: unknown class name {name!r}; known aliases: {self._listing()}; "
                           f"map it with --alias '{name}=CLASS' or --alias '{name}={SKIP}'",
                           code=ExitCode.DATA, reason="unknown_class")
        if target == SKIP:
            return None
        if target not in self.classes:
            raise CxrError(f"{where}: {name!r} means {target!r}, which is not one of the model's classes "
                           f"({', '.join(self.classes)}); map it with --alias '{name}={SKIP}' or another class",
                           code=ExitCode.DATA, reason="unknown_class")
        return target

    def _listing(self) -> str:
        return ", ".join(f"{k}->{v}" for k, v in sorted(self.table.items()))


def _split_of(name: str) -> str | None:
    return SPLIT_NAMES.get(normalize_name(name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    images = folder / "images"
    if images.is_dir():
        folder = images
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") or normalize_name(part) in MASK_FOLDERS for part in rel):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            out.append(path)
    return out


def _split_lists(folder: Path) -> dict[str, Path]:
    lists = {}
    for path in sorted(folder.glob("*.txt")):
        stem = normalize_name(path.stem).replace("-", " ").split(" ")
        for token in (stem[-1], stem[0]):
            split = _split_of(token)
            if split and split not in lists:
                lists[split] = path
                break
    return lists


def _label_csvs(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.csv")) if _csv_columns(p) is not None]


def _csv_columns(path: Path) -> dict[str, str | None] | None:
    """{"path", "label", "split", "patient", "age", "sex", "view"} -> column name (None when absent);
    None when the CSV has no path and label columns (then it is not a label file)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    names = {normalize_name(h): h for h in header}

    def pick(candidates):
        return next((names[c] for c in candidates if c in names), None)

    columns = {"path": pick(PATH_COLUMNS), "label": pick(LABEL_COLUMNS), "split": pick(SPLIT_COLUMNS),
               "patient": pick(PATIENT_COLUMNS), "age": pick(AGE_COLUMNS), "sex": pick(SEX_COLUMNS),
               "view": pick(VIEW_COLUMNS), "dataset": pick(DATASET_COLUMNS)}
    if columns["path"] is None or columns["label"] is None:
        return None
    return columns


def _age(text: str) -> float | None:
    """'58', '058Y', '6M' -> years; None when absent or not a number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YyMmWwDd]?)\s*", text or "")
    if not match:
        return None
    value = float(match.group(1)) / {"": 1, "y": 1, "m": 12, "w": 52.18, "d": 365.25}[match.group(2).lower()]
    return value if 0 <= value < 130 else None


def _resolve_file(name: str, bases: list[Path]) -> Path | None:
    for base in bases:
        for candidate in (base / name, base / "images" / name):
            if candidate.is_file():
                return candidate
    return None


def _from_csv(path: Path, dataset: str, resolve: _Resolver) -> list[Sample]:
    columns = _csv_columns(path)
    samples = []

    def cell(row, key):
        return (row.get(columns[key]) or "").strip() if columns[key] else ""

    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            name, label = cell(row, "path"), cell(row, "label")
            if not name:
                continue
            split = _split_of(cell(row, "split")) if columns["split"] else None
            cls = resolve(label, f"{path}:{line_no}")
            if cls is None:
                continue
            # Relative paths: next to the CSV first, then (as cxr-train's splits.csv writes them) the cwd.
            file = _resolve_file(name, [path.parent] + ([path.parent / split] if split else []) + [Path.cwd()])
            if file is None:
                raise CxrError(f"{path}:{line_no}: image {name!r} not found next to the CSV",
                               code=ExitCode.DATA, reason="missing_image")
            patient = cell(row, "patient")
            source = cell(row, "dataset") or dataset
            samples.append(Sample(file, cls, source, split, patient=f"{source}:{patient}" if patient else None,
                                  age=_age(cell(row, "age")), sex=cell(row, "sex").upper() or None,
                                  view=cell(row, "view").upper() or None))
    return samples


def _from_split_list(path: Path, split: str, root: Path, dataset: str, resolve: _Resolver) -> list[Sample]:
    samples = []
    bases = [root / split, root, path.parent]
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        tokens = [t for t in re.split(r"[\s,]+", line.strip()) if t]
        if not tokens or tokens[0].startswith("#"):
            continue
        file, label = None, None
        for token in tokens:
            if file is None:
                file = _resolve_file(token, bases)
                if file is not None:
                    continue
            if label is None and resolve.known(token):
                label = token
        where = f"{path}:{line_no}"
        if file is None:
            raise CxrError(f"{where}: no image file found for {line.strip()!r}", code=ExitCode.DATA,
                           reason="missing_image")
        cls = resolve(label if label is not None else file.parent.name, where)
        if cls is not None:
            samples.append(Sample(file, cls, dataset, split))
    return samples


def _from_class_folders(folder: Path, dataset: str, split: str | None, resolve: _Resolver) -> list[Sample]:
    samples = []
    subdirs = _subdirs(folder)
    if not subdirs:
        raise CxrError(f"{folder}: no class folders inside (expected e.g. NORMAL/, PNEUMONIA/, or a CSV "
                       "of path,label)", code=ExitCode.DATA, reason="unlabelled")
    for sub in subdirs:
        cls = resolve(sub.name, sub)
        if cls is None:
            continue
        files = _image_files(sub)
        if not files:
            raise CxrError(f"{sub}: class folder holds no images (.png, .jpg, .jpeg, .dcm)", code=ExitCode.DATA,
                           reason="empty_folder")
        samples.extend(Sample(f, cls, dataset, split) for f in files)
    return samples


def _is_dataset(folder: Path, resolve: _Resolver) -> bool:
    subdirs = _subdirs(folder)
    if _split_lists(folder) or _label_csvs(folder):
        return True
    if subdirs and all(_split_of(d.name) for d in subdirs):
        return True
    return bool(subdirs) and any(resolve.known(d.name) for d in subdirs)


def _discover(root: Path, resolve: _Resolver, dataset: str | None = None) -> list[Sample]:
    if root.is_file():
        name = dataset or root.parent.name
        if root.suffix.lower() == ".csv":
            if _csv_columns(root) is None:
                raise CxrError(f"{root}: CSV has no path and label columns (expected e.g. path,label)",
                               code=ExitCode.DATA, reason="unlabelled")
            return _from_csv(root, name, resolve)
        split = next((s for s in (_split_of(t) for t in re.split(r"[\W_]+", root.stem.lower())) if s), None)
        if root.suffix.lower() == ".txt" and split:
            return _from_split_list(root, split, root.parent, name, resolve)
        raise CxrError(f"{root}: not a dataset (give a folder, a CSV of path,label, or a train/val/test .txt list)",
                       code=ExitCode.DATA, reason="unlabelled")
    if not root.is_dir():
        raise CxrError(f"{root}: dataset folder not found", code=ExitCode.DATA, reason="not_found")
    own_split = _split_of(root.name)
    if own_split:  # e.g. kermany-pneumonia/train: the dataset is the parent, this is its split
        return _from_class_folders(root, dataset or root.resolve().parent.name, own_split, resolve)
    name = dataset or root.resolve().name
    lists = _split_lists(root)
    if lists:
        return [s for split, path in lists.items() for s in _from_split_list(path, split, root, name, resolve)]
    csvs = _label_csvs(root)
    if csvs:
        return [s for path in csvs for s in _from_csv(path, name, resolve)]
    subdirs = _subdirs(root)
    if subdirs and all(_split_of(d.name) for d in subdirs):
        return [s for d in subdirs for s in _from_class_folders(d, name, _split_of(d.name), resolve)]
    if subdirs and not any(resolve.known(d.name) for d in subdirs):
        datasets = [d for d in subdirs if _is_dataset(d, resolve)]
        if datasets:  # a collection of datasets (like shared/data); other folders are not labelled X-rays
            for d in subdirs:
                if d not in datasets:
                    resolve.notes.append(f"{d}: skipped: no class folders, label CSV or split lists inside "
                                         "(not a labelled chest X-ray dataset)")
            return [s for d in datasets for s in _discover(d, resolve)]
    return _from_class_folders(root, name, None, resolve)


def discover(root, *, aliases: dict[str, str] | None = None, classes=CANONICAL_CLASSES,
             notes: list[str] | None = None) -> list[Sample]:
    """Every labelled image under `root` (folder, CSV or split list), sorted by path.

    Raises CxrError(code=DATA) for unknown class names, empty folders and unlabelled data. Folders of a
    collection that hold no labelled X-rays (like `not-cxr/`) are left out and described in `notes`.
    """
    root = Path(root)
    resolve = _Resolver(aliases, tuple(classes))
    samples = sorted(_discover(root, resolve), key=lambda s: str(s.path))
    if notes is not None:
        notes.extend(resolve.notes)
    if not samples:
        raise CxrError(f"{root}: no labelled images found", code=ExitCode.DATA, reason="empty_folder")
    return samples


def discover_many(roots, *, aliases: dict[str, str] | None = None, classes=CANONICAL_CLASSES,
                  notes: list[str] | None = None) -> list[Sample]:
    """Samples of several datasets in one list; a file reached through two roots appears once."""
    seen, out = set(), []
    for root in roots:
        for sample in discover(root, aliases=aliases, classes=classes, notes=notes):
            key = sample.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(sample)
    return out


def class_counts(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """{dataset: {class: n}} plus a "total" entry."""
    counts: dict[str, dict[str, int]] = {}
    for s in samples:
        for key in (s.dataset, "total"):
            counts.setdefault(key, {})
            counts[key][s.label] = counts[key].get(s.label, 0) + 1
    return counts
