"""What `cxr-edge screen` screens: files as given, and the images inside folders."""

from __future__ import annotations

from pathlib import Path
from typing import List

from .decode import sniff_kind
from .errors import CxrError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")


def _looks_like_an_image(path: Path) -> bool:
    """Inside a folder: an image name, or the bytes of one (extension-less DICOMs). README.md, labels.csv,
    notes.txt are not screened; a broken file with an image name is, and is reported."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            sniff_kind(path, handle.read(132))
        return True
    except (OSError, CxrError):
        return False


def expand_inputs(paths: List[Path]) -> tuple[List[Path], List[Path]]:
    """(files to screen, files skipped): files as given; folders become every non-hidden file below them
    that is an image by name or by its bytes, sorted; the other files of a folder are skipped."""
    out: List[Path] = []
    skipped: List[Path] = []
    for path in paths:
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                (out if _looks_like_an_image(found) else skipped).append(found)
        else:
            out.append(path)
    return out, skipped
