"""Images for the input gate (edge/gate.py), decoded once into a small .npz cache.

Positives are frontal chest films from every source in ../shared/data; negatives are what a station or a user
may feed by mistake: CT slices (shared not-cxr/), the CT, MR, US, NM and non-chest CR files that pydicom ships,
photographs (scikit-image's sample images), rendered documents, heavy crops of chest films, and synthetic
textures. Whole sources are held out for evaluation (HELD_OUT_SOURCES); negative kinds are split by file.
Every image goes through edge.decode.load_image (the station's decoder), then to SIZE x SIZE grey uint8.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.decode import load_image
from edge.errors import CxrError

SIZE = 64
POSITIVE_SOURCES = ("kermany-pneumonia", "covid19-3class", "adult-nih", "tb-shenzhen", "tb-tbx11k",
                    "covid-hannover", "fullres")
HELD_OUT_SOURCES = ("covid19-3class", "covid-hannover", "tb-shenzhen", "fullres")  # never trained on
MAX_PER_SOURCE = 1500  # kermany alone has 5216 images of one hospital
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
                  "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
                  "moon", "page", "retina", "rocket", "text", "eagle", "human_mitosis", "skin", "shepp_logan_phantom")


@dataclass
class Item:
    pixels: np.ndarray  # SIZE x SIZE uint8
    kind: str  # "cxr" or a negative kind (ct, dicom-other, photo, document, crop, texture)
    source: str  # dataset folder, package file or generator name
    held_out: bool


def small(pixels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Decoded grey float [0, 1] -> size x size uint8 (area interpolation, the gate's own resize)."""
    out = cv2.resize(np.asarray(pixels, np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def held_out_name(name: str, fraction: float = 0.35) -> bool:
    """Stable file-level hold-out: True for about `fraction` of names."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def chest_films(data: Path, rng: np.random.Generator, crops_per_film: float = 0.3) -> list[Item]:
    items = []
    for source in POSITIVE_SOURCES:
        files = image_files(data / source)
        if len(files) > MAX_PER_SOURCE:
            files = [files[i] for i in sorted(rng.choice(len(files), MAX_PER_SOURCE, replace=False))]
        held = source in HELD_OUT_SOURCES
        for path in files:
            try:
                pixels = load_image(path).pixels
            except CxrError:
                continue
            items.append(Item(small(pixels), "cxr", source, held))
            if rng.random() < crops_per_film:
                items.append(Item(small(heavy_crop(pixels, rng)), "crop", source, held))
    return items


def heavy_crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A window of 15-35% of each side: part of a chest, not a usable frontal film (tight films stay positive)."""
    h, w = pixels.shape
    side = rng.uniform(0.15, 0.35)
    ch, cw = max(8, int(h * side)), max(8, int(w * side * rng.uniform(0.8, 1.25)))
    cw = min(cw, w)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return pixels[top:top + ch, left:left + cw]


def ct_slices(data: Path) -> list[Item]:
    items = []
    for path in image_files(data / "not-cxr"):
        try:
            items.append(Item(small(load_image(path).pixels), "ct", "not-cxr", held_out_name(path.name)))
        except CxrError:
            continue
    return items


def dicom_group(base: str) -> str:
    """pydicom ships one image in several encodings (RG3_UNCI, RG3_J2KR, ...): they are held out together."""
    return base.split("_")[0].split(".")[0]


def _dicom_frames(name: str, at_most: int = 3) -> tuple[list[np.ndarray], dict]:
    """Decoded grey frames of one DICOM file ([] when it cannot be read): single frames through the station's
    decoder, multi-frame files (MR, US, CT series) frame by frame with pydicom."""
    import pydicom

    try:
        image = load_image(name, allow_any_view=True)
        return [image.pixels], image.info
    except CxrError as exc:
        if exc.reason != "multi_frame":
            return [], {}
    except Exception:  # noqa: BLE001 - a decoder bug on an odd test file (e.g. 32-bit RGB): not a negative
        return [], {}
    try:
        ds = pydicom.dcmread(name)
        frames = np.asarray(ds.pixel_array, np.float32)
    except Exception:  # noqa: BLE001 - many test files are deliberately broken
        return [], {}
    picks = np.unique(np.linspace(0, len(frames) - 1, at_most).round().astype(int))
    out = []
    for frame in frames[picks]:
        grey = frame.mean(axis=-1) if frame.ndim == 3 else frame
        out.append((grey - grey.min()) / max(float(np.ptp(grey)), 1e-6))
    return out, {"modality": str(ds.get("Modality", "")), "body_part": str(ds.get("BodyPartExamined", ""))}


def dicom_files() -> tuple[list[Item], list[Item]]:
    """(negatives, chest CR positives) from the DICOM files of pydicom and pydicom-data."""
    import pydicom.data

    negatives, chests = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(pydicom.data.get_testdata_files()):
            frames, info = _dicom_frames(name)
            base = Path(name).name
            for pixels in frames:
                if np.ptp(pixels) == 0 or min(pixels.shape) < 32:
                    continue
                if info.get("modality") in ("CR", "DX") and info.get("body_part", "").upper() in ("CHEST", ""):
                    if min(pixels.shape) >= 256:  # real chest films; 32 px test files are not
                        chests.append(Item(small(pixels), "cxr", f"pydicom:{base}", True))
                    continue
                negatives.append(Item(small(pixels), "dicom-other", f"pydicom:{base}",
                                      held_out_name(dicom_group(base), 0.4)))
    return negatives, chests


def photos(rng: np.random.Generator, crops: int = 12) -> list[Item]:
    """scikit-image's sample photographs: the whole image and random crops of each."""
    try:
        from skimage import data as skdata
    except ImportError:
        return []
    items = []
    for name in SKIMAGE_IMAGES:
        try:
            image = np.asarray(getattr(skdata, name)(), dtype=np.float32)
        except Exception:  # noqa: BLE001 - some need a download that is not possible offline
            continue
        if image.ndim == 3:
            image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)
        image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
        held = held_out_name(name, 0.3)
        items.append(Item(small(image), "photo", f"skimage:{name}", held))
        for _ in range(crops):
            h, w = image.shape
            ch, cw = int(h * rng.uniform(0.3, 0.9)), int(w * rng.uniform(0.3, 0.9))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            items.append(Item(small(image[top:top + ch, left:left + cw]), "photo", f"skimage:{name}", held))
    return items


WORDS = ("REFERRAL", "Patient", "Name", "Date", "of", "birth", "Clinical", "history", "cough", "fever", "Chest",
         "X-ray", "please", "PA", "view", "Ward", "Signature", "Dr", "Hospital", "Report", "Findings", "No", "acute",
         "Impression", "ID", "2024", "Radiology", "request", "form", "Address", "Phone", "Age", "Sex", "M", "F")


def document(rng: np.random.Generator) -> np.ndarray:
    """A page of rendered text (a scanned form or report), paper-coloured, maybe with a logo box and lines."""
    h = int(rng.integers(600, 1100))
    w = int(h * rng.uniform(0.65, 0.8)) if rng.random() < 0.8 else int(h * rng.uniform(1.2, 1.5))
    page = np.full((h, w), int(rng.integers(200, 256)), np.uint8)
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                           cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    scale, ink = rng.uniform(0.5, 1.3), int(rng.integers(0, 90))
    y, step = int(rng.integers(30, 90)), int(rng.integers(22, 48))
    margin = int(rng.integers(20, 80))
    while y < h - 20:
        if rng.random() < 0.1:
            cv2.line(page, (margin, y), (w - margin, y), ink, 1)
        elif rng.random() < 0.05:
            cv2.rectangle(page, (margin, y - step), (margin + int(w * 0.3), y + step), ink, int(rng.integers(1, 3)))
        else:
            x = margin
            for word in rng.choice(WORDS, size=int(rng.integers(2, 10))):
                cv2.putText(page, str(word), (x, y), font, scale, ink, 1, cv2.LINE_AA)
                x += int(len(word) * 14 * scale) + 10
                if x > w - margin:
                    break
        y += step
    noise = rng.normal(0, rng.uniform(0.0, 0.04), page.shape)
    return np.clip(page / 255.0 + noise, 0, 1).astype(np.float32)


def texture(rng: np.random.Generator) -> np.ndarray:
    """Smooth random fields, gradients and blobs: nothing like a chest."""
    size = 128
    kind = rng.integers(0, 3)
    if kind == 0:
        field = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), rng.uniform(1, 12))
    elif kind == 1:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        field = np.cos(rng.uniform(0, 6) * xx + rng.uniform(0, 6) * yy + rng.uniform(0, 3))
    else:
        field = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(2, 12))):
            center = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(field, center, int(rng.integers(5, 40)), float(rng.random()), -1)
    field = field - field.min()
    return field / max(float(field.max()), 1e-6)


def synthetic(rng: np.random.Generator, documents: int, textures: int) -> list[Item]:
    items = [Item(small(document(rng)), "document", "rendered", i % 3 == 0) for i in range(documents)]
    items += [Item(small(texture(rng)), "texture", "generated", i % 3 == 0) for i in range(textures)]
    return items


def build_cache(data: Path, out: Path, seed: int = 0, progress=print) -> dict:
    """Decode everything once into out (.npz): pixels, kind, source, held_out."""
    rng = np.random.default_rng(seed)
    items = chest_films(data, rng)
    progress(f"chest films and crops: {len(items)}")
    items += ct_slices(data)
    negatives, chests = dicom_files()
    items += negatives + chests
    progress(f"+ CT slices and pydicom files: {len(items)}")
    items += photos(rng)
    items += synthetic(rng, documents=400, textures=300)
    progress(f"+ photos, documents, textures: {len(items)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, pixels=np.stack([i.pixels for i in items]), kind=np.array([i.kind for i in items]),
                        source=np.array([i.source for i in items]), held_out=np.array([i.held_out for i in items]))
    return summary(load_cache(out))


def load_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def summary(cache: dict[str, np.ndarray]) -> dict:
    out: dict[str, dict[str, int]] = {}
    for kind, held in zip(cache["kind"], cache["held_out"]):
        entry = out.setdefault(str(kind), {"train": 0, "held_out": 0})
        entry["held_out" if held else "train"] += 1
    return out
