"""Hostile and broken inputs (issue 9): refused from the header before decoding, refused for meaningless
pixels, or decoded with a documented correction; never a traceback, never a made-up picture."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from edge.decode import load_image
from edge.errors import CxrError
from edge.preprocess import PreprocessSpec, preprocess

from images import grey_sample, to_bits, write_dicom

SPEC = PreprocessSpec(height=128, width=128)


def reason_of(path: Path, **kw) -> str:
    with pytest.raises(CxrError) as info:
        load_image(path, **kw)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    return info.value.reason


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF header is patched to claim width x height (a decompression bomb)."""
    data = bytearray(cv2.imencode(".jpg", grey_sample())[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR (CRC included) for width x height and a little real IDAT data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    idat = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def edit_dicom(path: Path, **tags) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def chest_dicom(tmp_path: Path, name: str = "x.dcm", **kw) -> Path:
    return write_dicom(tmp_path / name, to_bits(grey_sample(), 12), **kw)


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(jpeg_with_size(30000, 30000)),
    lambda p: p.write_bytes(png_with_size(32000, 32000)),
    lambda p: p.write_bytes(png_with_size(60000, 60000)),
])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, make):
    path = tmp_path / "bomb.img"
    make(path)
    assert path.stat().st_size < 20000
    assert reason_of(path) == "too_large"


def test_dicom_bomb_refused_from_rows_and_columns(tmp_path):
    path = edit_dicom(chest_dicom(tmp_path), Rows=20000, Columns=20000)
    assert reason_of(path) == "too_large"


def test_symlink_to_a_device_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")  # reading it would never end
    assert reason_of(link) == "not_a_file"


def test_jpeg_cut_to_a_third_with_end_marker_appended_is_not_scored(tmp_path):
    jpg = cv2.imencode(".jpg", grey_sample())[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpg[: len(jpg) // 3] + b"\xff\xd9")
    assert reason_of(path) == "truncated"


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_intact_files_with_trailing_bytes_decode(tmp_path, ext):
    data = cv2.imencode(ext, grey_sample())[1].tobytes()
    path = tmp_path / f"trailing{ext}"
    path.write_bytes(data + bytes(range(256)) * 8)  # 2 KiB of junk after the end marker
    assert load_image(path).width == 224


@pytest.mark.parametrize("value", [0, 255])
def test_blank_and_saturated_8bit_png_refused(tmp_path, value):
    path = tmp_path / "blank.png"
    cv2.imwrite(str(path), np.full((256, 256), value, np.uint8))
    assert reason_of(path) == "low_quality"


def test_blank_16bit_png_refused(tmp_path):
    path = tmp_path / "blank16.png"
    cv2.imwrite(str(path), np.full((256, 256), 1000, np.uint16))
    assert reason_of(path) == "low_quality"


def test_one_hot_pixel_does_not_change_a_16bit_picture(tmp_path):
    clean = to_bits(grey_sample(), 12)
    hot = clean.copy()
    hot[10, 10] = 65535  # one saturated detector element
    cv2.imwrite(str(tmp_path / "clean.png"), clean)
    cv2.imwrite(str(tmp_path / "hot.png"), hot)
    a = preprocess(load_image(tmp_path / "clean.png").pixels, SPEC)
    b = preprocess(load_image(tmp_path / "hot.png").pixels, SPEC)
    assert float(np.abs(a - b).mean()) < 0.005


def test_one_hot_pixel_in_a_dicom_without_window(tmp_path):
    clean = to_bits(grey_sample(), 12)
    hot = clean.copy()
    hot[10, 10] = 65535
    a = load_image(write_dicom(tmp_path / "clean.dcm", clean, bits_stored=16)).pixels
    b = load_image(write_dicom(tmp_path / "hot.dcm", hot, bits_stored=16)).pixels
    assert float(np.abs(preprocess(a, SPEC) - preprocess(b, SPEC)).mean()) < 0.005


def float_dicom(tmp_path: Path, values: np.ndarray) -> Path:
    path = chest_dicom(tmp_path, "float.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.Rows, ds.Columns = values.shape
    ds.FloatPixelData = values.astype("<f4").tobytes()
    ds.save_as(path)
    return path


def test_float_dicom_with_nan_or_inf_is_refused(tmp_path):
    values = grey_sample().astype(np.float32)
    assert load_image(float_dicom(tmp_path, values)).width == 224  # finite floats decode
    one_inf = values.copy()
    one_inf[5, 5] = np.inf
    assert reason_of(float_dicom(tmp_path, one_inf)) == "bad_pixel_values"
    assert reason_of(float_dicom(tmp_path, np.full_like(values, np.nan))) == "bad_pixel_values"


@pytest.mark.parametrize("slope", ["NaN", "inf", "0"])
def test_meaningless_rescale_slope_is_refused(tmp_path, slope):
    path = edit_dicom(chest_dicom(tmp_path), RescaleSlope=slope)
    assert reason_of(path) == "bad_pixel_values"


@pytest.mark.parametrize("center,width", [("1024", "0"), ("1024", "-50"), ("NaN", "512"), ("1024", "NaN")])
def test_unusable_window_is_ignored_and_said_so(tmp_path, center, width):
    path = edit_dicom(chest_dicom(tmp_path), WindowCenter=center, WindowWidth=width)
    image = load_image(path)
    assert image.info["voi"].startswith("ignored")
    reference = preprocess(load_image(chest_dicom(tmp_path, "plain.dcm")).pixels, SPEC)
    assert float(np.abs(preprocess(image.pixels, SPEC) - reference).mean()) < 0.005


@pytest.mark.parametrize("descriptor,bits", [((4096, 0, 16), 16), ((256, 0, 40), 40)])
def test_broken_voi_lut_is_ignored(tmp_path, descriptor, bits):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = chest_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = list(descriptor)  # 4096 entries announced (or 40-bit entries) ...
    item.LUTData = np.arange(16, dtype="<u2").tobytes()  # ... but only 16 present
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    image = load_image(path)
    assert image.info["voi"].startswith("ignored") and image.width == 224


def test_monochrome2_with_three_samples_is_read_as_grey(tmp_path):
    path = chest_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    grey = to_bits(grey_sample(), 12)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = np.ascontiguousarray(np.stack([grey] * 3, axis=-1)).tobytes()
    ds.save_as(path)
    image = load_image(path)
    assert "3 samples" in image.info["voi"]
    reference = preprocess(load_image(chest_dicom(tmp_path, "plain.dcm")).pixels, SPEC)
    assert float(np.abs(preprocess(image.pixels, SPEC) - reference).mean()) < 0.01


def test_32bit_rgb_dicom_decodes(tmp_path):
    path = chest_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    grey = to_bits(grey_sample(), 12).astype(np.uint32) * 65536
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.ascontiguousarray(np.stack([grey] * 3, axis=-1)).astype("<u4").tobytes()
    ds.save_as(path)
    assert load_image(path).width == 224


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEG-LL.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "RG1_J2KR.dcm"])
def test_compressed_transfer_syntaxes_decode(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom/pydicom-data install")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    image = load_image(path, allow_any_view=True)
    assert image.kind == "dicom" and image.pixels.max() > image.pixels.min()


def test_transfer_syntax_without_decoder_is_unsupported_compression(tmp_path):
    path = chest_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no image decoder anywhere
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(path, enforce_file_format=True)
    assert reason_of(path) == "unsupported_compression"


def test_long_decoder_reasons_are_kept_whole(tmp_path):
    path = chest_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless ...
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])  # ... with garbage as its codestream
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CxrError) as info:
        load_image(path)
    assert info.value.reason == "corrupt"
    assert str(info.value).endswith(")") and len(str(info.value).split("cannot be decoded (", 1)[1]) > 160
