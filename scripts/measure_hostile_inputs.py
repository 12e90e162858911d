"""Measure what hostile inputs cost (issue 9): decompression bombs and the largest accepted images.

For each input, in a fresh process: the time `edge.decode.load_image` takes to decode or refuse it,
and the peak resident memory (ru_maxrss) of a whole `cxr-edge screen --no-log` run on it.
Nothing is asserted; the numbers go into the report. Usage:

    PYTHONPATH=. python scripts/measure_hostile_inputs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "models" / "samples" / "normal-child.png"


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(path: Path, side: int, full_data: bool) -> None:
    """A real PNG of side x side black 8-bit pixels (full_data) or only its first rows."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    parts = [compressor.compress(row) for _ in range(side if full_data else 16)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_bomb(path: Path, side: int) -> None:
    data = bytearray(cv2.imencode(".jpg", cv2.imread(str(SAMPLE), cv2.IMREAD_GRAYSCALE))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))


def rle_segment(n_bytes: int) -> bytes:
    """PackBits for n_bytes zero bytes: runs of 128 (header -127, value 0)."""
    full, rest = divmod(n_bytes, 128)
    out = b"\x81\x00" * full
    if rest:
        out += bytes([(257 - rest) % 256, 0])
    return out


def dicom(path: Path, pixels: np.ndarray | None, *, rows: int = 0, cols: int = 0, rle: bool = False,
          window: tuple[float, float] | None = None) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless if rle else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.PatientID = "CR", "PA", "CHEST", "MEASURE"
    ds.Rows, ds.Columns = (rows, cols) if pixels is None else pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -100.0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rle:  # two segments (high and low bytes), both all zeros
        n = ds.Rows * ds.Columns
        header = struct.pack("<16I", 2, 64, 64 + len(rle_segment(n)), *([0] * 13))
        ds.PixelData = encapsulate([header + rle_segment(n) + rle_segment(n)])
    else:
        ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_inputs(folder: Path) -> dict[str, Path]:
    grey = cv2.imread(str(SAMPLE), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, (6000, 6000), interpolation=cv2.INTER_LINEAR)
    big16 = (big.astype(np.uint16) * 16)
    files = {
        "JPEG bomb 30000x30000 (header)": folder / "bomb.jpg",
        "PNG bomb 32000x32000 (full zlib data)": folder / "bomb32k.png",
        "PNG 60000x60000 (header)": folder / "bomb60k.png",
        "DICOM RLE bomb 20000x20000": folder / "bomb-rle.dcm",
        "largest accepted: JPEG 6000x6000": folder / "big.jpg",
        "largest accepted: PNG 16-bit 6000x6000": folder / "big16.png",
        "largest accepted: PNG 16-bit RGB 6000x6000": folder / "big16rgb.png",
        "largest accepted: DICOM 6000x6000 rescale+window": folder / "big.dcm",
        "largest accepted: DICOM 6000x6000 no window": folder / "big-nowin.dcm",
        "baseline: 224x224 PNG": SAMPLE,
    }
    jpeg_bomb(files["JPEG bomb 30000x30000 (header)"], 30000)
    png_bomb(files["PNG bomb 32000x32000 (full zlib data)"], 32000, True)
    png_bomb(files["PNG 60000x60000 (header)"], 60000, False)
    dicom(files["DICOM RLE bomb 20000x20000"], None, rows=20000, cols=20000, rle=True)
    cv2.imwrite(str(files["largest accepted: JPEG 6000x6000"]), big)
    cv2.imwrite(str(files["largest accepted: PNG 16-bit 6000x6000"]), big16)
    cv2.imwrite(str(files["largest accepted: PNG 16-bit RGB 6000x6000"]), cv2.merge([big16] * 3))
    dicom(files["largest accepted: DICOM 6000x6000 rescale+window"], big16, window=(2000.0, 3000.0))
    dicom(files["largest accepted: DICOM 6000x6000 no window"], big16)
    return files


PROBE = """
import json, sys, time
import pydicom.pixels  # imported once per process (the watcher keeps it): not part of an image's cost
from edge.decode import load_image
from edge.errors import CxrError
start = time.perf_counter()
try:
    image = load_image(sys.argv[1])
    outcome = f"decoded {image.width}x{image.height}"
except CxrError as exc:
    outcome = f"refused: {exc.reason}"
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome}))
"""


WRAPPER = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(run.returncode)
print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}")
"""


def measure(path: Path) -> dict:
    """load_image time in one process; peak RSS of a whole `cxr-edge screen` run (its own wrapper, so
    ru_maxrss is that run's alone)."""
    import os
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env,
                           timeout=600)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    wrapped = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "edge.cli", "screen", "--no-log",
                              "--json", str(path)], capture_output=True, text=True, env=env, timeout=600)
    peak_kib, code, last = wrapped.stdout.strip().splitlines()[-3:]
    row = json.loads(last)
    result.update(screen_exit=int(code), screen_status=row.get("status"), screen_reason=row.get("reason_code"),
                  peak_rss_mib=round(int(peak_kib) / 1024), file_bytes=path.stat().st_size)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the inputs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = make_inputs(folder)
        for name, path in files.items():
            result = measure(path)
            print(f"{name}: {result['outcome']} in {result['seconds']:.3f} s (load_image); screen exit "
                  f"{result['screen_exit']} {result['screen_status']} {result['screen_reason'] or ''}; peak RSS "
                  f"{result['peak_rss_mib']} MiB; file {result['file_bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
