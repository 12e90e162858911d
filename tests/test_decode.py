"""Every input kind a station produces decodes to the same picture; bad inputs fail with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.decode import load_image
from edge.errors import CxrError, InputRefused
from edge.preprocess import PreprocessSpec, preprocess

from images import NORMAL_SAMPLE, grey_sample, to_bits, write_dicom

SPEC = PreprocessSpec(height=128, width=128)


def model_view(path, **kw) -> np.ndarray:
    return preprocess(load_image(path, **kw).pixels, SPEC)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return model_view(NORMAL_SAMPLE)


def close(a: np.ndarray, b: np.ndarray, tol: float = 0.02) -> bool:
    return float(np.abs(a - b).mean()) < tol


def test_png_8bit_grey(reference):
    image = load_image(NORMAL_SAMPLE)
    assert image.kind == "png" and image.bits == 8 and image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert reference.shape == (128, 128, 1)


def test_rgb_encoded_grey_png_matches_grey(tmp_path, reference):
    rgb = cv2.cvtColor(grey_sample(), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    assert close(model_view(tmp_path / "rgb.png"), reference, 1e-3)


def test_jpeg(tmp_path, reference):
    cv2.imwrite(str(tmp_path / "x.jpg"), grey_sample(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    image = load_image(tmp_path / "x.jpg")
    assert image.kind == "jpeg"
    assert close(preprocess(image.pixels, SPEC), reference)


def test_16bit_detector_png_3000px(tmp_path, reference):
    big = cv2.resize(grey_sample(), (3000, 3000), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "det.png"), to_bits(big, 16))
    image = load_image(tmp_path / "det.png")
    assert (image.bits, image.width, image.height) == (16, 3000, 3000)
    assert close(preprocess(image.pixels, SPEC), reference, 0.03)


def test_12bit_values_in_16bit_png_are_stretched(tmp_path, reference):
    cv2.imwrite(str(tmp_path / "12.png"), to_bits(grey_sample(), 12))
    # Divided by 65535 it would be nearly black; min-max keeps the picture.
    assert close(model_view(tmp_path / "12.png"), reference, 0.03)


def test_dicom_monochrome2_with_rescale(tmp_path, reference):
    raw = to_bits(grey_sample(), 12)
    path = write_dicom(tmp_path / "m2.dcm", raw, slope=2.0, intercept=-100.0)
    image = load_image(path)
    assert image.kind == "dicom" and image.bits == 12 and image.info["modality"] == "CR"
    assert close(preprocess(image.pixels, SPEC), reference, 0.03)


def test_dicom_monochrome1_is_inverted(tmp_path, reference):
    inverted = to_bits(255 - grey_sample(), 12)
    path = write_dicom(tmp_path / "m1.dcm", inverted, photometric="MONOCHROME1")
    assert close(model_view(path), reference, 0.03)


def test_dicom_window_is_applied(tmp_path):
    raw = to_bits(grey_sample(), 12)
    path = write_dicom(tmp_path / "win.dcm", raw, window=(1024, 512))
    pixels = load_image(path).pixels
    # Values below the window floor become black and above its top white: many saturated pixels.
    assert (pixels >= 0.999).mean() > 0.2 and (pixels <= 0.001).mean() > 0.005


def test_dicom_without_extension(tmp_path, reference):
    path = write_dicom(tmp_path / "IM000001", to_bits(grey_sample(), 12))
    assert load_image(path).kind == "dicom"


def pydicom_data_folder() -> Path:
    data_store = pytest.importorskip("data_store", reason="pydicom-data (test extra) not installed")
    return Path(data_store.__file__).parent / "data"


def test_pydicom_chest_cr_monochrome1_decodes_the_right_way_up():
    for name in ("RG1_UNCI.dcm", "RG1_J2KR.dcm"):  # PA chest, CR, MONOCHROME1, 15 bits stored
        image = load_image(pydicom_data_folder() / name)
        assert image.info["photometric"] == "MONOCHROME1" and image.info["modality"] == "CR"
        assert (image.width, image.height, image.bits) == (1841, 1955, 15)
        pixels = image.pixels
        h, w = pixels.shape
        # Right way up means lungs dark and spine/mediastinum bright, as in every PNG we train on.
        lungs = np.concatenate([pixels[h // 3:2 * h // 3, w // 5:2 * w // 5].ravel(),
                                pixels[h // 3:2 * h // 3, 3 * w // 5:4 * w // 5].ravel()])
        mediastinum = pixels[h // 3:2 * h // 3, 9 * w // 20:11 * w // 20]
        assert np.median(lungs) < np.median(mediastinum) - 0.1


def test_pydicom_extremity_cr_is_refused_as_not_chest():
    path = pydicom_data_folder() / "RG3_UNCI.dcm"  # a tibia, CR MONOCHROME1, 10 bits stored
    with pytest.raises(InputRefused) as info:
        load_image(path)
    assert info.value.reason == "not_chest"
    assert load_image(path, allow_any_view=True).bits == 10


@pytest.mark.parametrize("modality,view,reason", [
    ("CT", "PA", "unsupported_modality"),
    ("CR", "LL", "lateral_view"),
    ("DX", "LATERAL", "lateral_view"),
])
def test_refused_dicoms(tmp_path, modality, view, reason):
    path = write_dicom(tmp_path / "r.dcm", to_bits(grey_sample(), 12), modality=modality, view=view)
    with pytest.raises(InputRefused) as info:
        load_image(path)
    assert info.value.reason == reason and str(path) in str(info.value)
    assert load_image(path, allow_any_view=True).kind == "dicom"


def test_multiframe_dicom_refused(tmp_path):
    frames = np.stack([to_bits(grey_sample(), 12)] * 2)
    path = write_dicom(tmp_path / "mf.dcm", frames, frames=2)
    with pytest.raises(InputRefused) as info:
        load_image(path)
    assert info.value.reason == "multi_frame"


def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    png = NORMAL_SAMPLE.read_bytes()
    jpg = cv2.imencode(".jpg", grey_sample())[1].tobytes()
    files = {
        "not_found": tmp_path / "missing.png",
        "truncated": tmp_path / "truncated.png",
        "truncated_jpeg": tmp_path / "truncated.jpg",
        "not_an_image": tmp_path / "notes.png",
        "empty_file": tmp_path / "empty.png",
        "too_small": tmp_path / "one-pixel.png",
        "no_pixel_data": tmp_path / "nopixels.dcm",
    }
    files["truncated"].write_bytes(png[: len(png) // 2])
    files["truncated_jpeg"].write_bytes(jpg[: len(jpg) // 2])
    files["not_an_image"].write_text("patient list, not an image\n")
    files["empty_file"].write_bytes(b"")
    cv2.imwrite(str(files["too_small"]), np.zeros((1, 1), np.uint8))
    write_dicom(files["no_pixel_data"], to_bits(grey_sample(), 12), with_pixels=False)
    return files


def test_bad_inputs_raise_one_line_with_file_and_reason(tmp_path):
    for expected, path in bad_inputs(tmp_path).items():
        with pytest.raises(CxrError) as info:
            load_image(path)
        message = str(info.value)
        assert info.value.reason == expected.replace("truncated_jpeg", "truncated")
        assert str(path) in message and "\n" not in message


def test_sha256_is_of_the_file_bytes(tmp_path):
    import hashlib
    copy = shutil.copy(NORMAL_SAMPLE, tmp_path / "copy.png")
    assert load_image(copy).sha256 == hashlib.sha256(NORMAL_SAMPLE.read_bytes()).hexdigest()


def test_letterbox_keeps_aspect():
    wide = np.ones((100, 200), np.float32)
    out = preprocess(wide, PreprocessSpec(height=64, width=64, resize="letterbox"))
    assert out.shape == (64, 64, 1)
    assert out[0, 32, 0] == 0.0 and out[32, 32, 0] == 1.0  # black bars top and bottom


def test_dicom_with_malformed_number_tag_is_corrupt_not_a_crash(tmp_path):
    path = write_dicom(tmp_path / "bad.dcm", to_bits(grey_sample(), 12), frames=1, force_frames_tag=True)
    element = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) NumberOfFrames, explicit VR, 2 bytes
    data = path.read_bytes()
    assert data.count(element + b"1 ") == 1
    path.write_bytes(data.replace(element + b"1 ", element + b"xx"))  # what a broken exporter writes
    with pytest.raises(CxrError) as info:
        load_image(path)
    assert info.value.reason == "corrupt" and "NumberOfFrames" in str(info.value)
