"""Writers for test inputs, all made from the real sample radiographs in models/samples."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "models" / "samples"
NORMAL_SAMPLE = SAMPLES / "normal-child.png"
PNEUMONIA_SAMPLE = SAMPLES / "pneumonia-child.png"
COVID_SAMPLE = SAMPLES / "covid-adult.png"


def grey_sample(path: Path = NORMAL_SAMPLE) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def write_dicom(path: Path, pixels: np.ndarray, *, modality: str = "CR", photometric: str = "MONOCHROME2",
                bits_stored: int = 12, view: str = "PA", body_part: str = "CHEST", slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, with_pixels: bool = True,
                frames: int = 1, force_frames_tag: bool = False, tags: dict | None = None) -> Path:
    """A real DICOM file written with pydicom, explicit VR little endian, unsigned 16-bit pixels.
    `tags`: more attributes by keyword (PatientAge="004Y", ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.ViewPosition = view
    ds.BodyPartExamined = body_part
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1 or force_frames_tag:
        ds.NumberOfFrames = frames
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def to_bits(grey8: np.ndarray, bits: int) -> np.ndarray:
    return (grey8.astype(np.float64) / 255.0 * (2 ** bits - 1)).round().astype(np.uint16)


def aged_dicoms(folder: Path) -> dict[str, Path]:
    """A normal film as four DICOMs that differ only in the patient's age: a child (PatientAge 004Y), an adult
    (birth date to study date: 44 y), a 15-year-old (cxr-default's first year) and one with no age."""
    pixels = to_bits(grey_sample(NORMAL_SAMPLE), 12)
    return {name: write_dicom(folder / f"{name}.dcm", pixels, tags=tags) for name, tags in {
        "child": {"PatientAge": "004Y"}, "adult": {"PatientBirthDate": "19800115", "StudyDate": "20240114"},
        "teen": {"PatientAge": "015Y"}, "unknown": {}}.items()}
