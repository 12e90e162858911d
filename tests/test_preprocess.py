"""edge.preprocess: the crops and contrast normalisations that keep a model from reading a source's look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.decode import load_image
from edge.errors import CxrError, ExitCode
from edge.lungs import box_from_mask
from edge.preprocess import PreprocessSpec, border_box, preprocess, preprocess_info

NORMAL = sorted((Path(__file__).parent / "data" / "cxr-mini" / "NORMAL").glob("*.jpg"))[0]


def _film() -> np.ndarray:
    return load_image(NORMAL).pixels


def test_border_crop_removes_padding_and_collimation_but_keeps_the_film():
    film = _film()
    h, w = film.shape
    padded = np.zeros((h + 60, w + 100), np.float32)  # black letterbox bars left/right, white strip at the top
    padded[:20] = 1.0
    padded[40:40 + h, 50:50 + w] = film
    top, bottom, left, right = border_box(padded)
    assert abs(left - 50) <= 4 and abs((padded.shape[1] - right) - 50) <= 4
    assert 20 <= top <= 44 and bottom >= 40 + h - 4
    spec = PreprocessSpec(64, 64, crop="borders")
    np.testing.assert_allclose(preprocess(padded, spec), preprocess(film, spec), atol=0.08)


def test_border_crop_never_cuts_more_than_a_quarter_of_a_side():
    dark = np.zeros((200, 200), np.float32)
    dark[:, 190:] = np.linspace(0, 1, 10)[None, :]  # content only in the last 10 columns
    top, bottom, left, right = border_box(dark)
    assert top <= 50 and left <= 50 and 200 - bottom <= 50 and 200 - right <= 50
    assert (bottom - top) * (right - left) >= 100 * 100


def test_clahe_and_equalize_give_the_same_look_to_a_washed_out_copy():
    film = _film()
    washed = 0.35 + 0.3 * film  # a low-contrast, grey copy of the same film
    plain = PreprocessSpec(64, 64)
    raw_gap = np.abs(preprocess(film, plain) - preprocess(washed, plain)).mean()
    for how, factor in (("equalize", 0.5), ("clahe", 0.75)):  # CLAHE's clip limit leaves some of the gap
        spec = PreprocessSpec(64, 64, normalize=how)
        a, b = preprocess(film, spec), preprocess(washed, spec)
        assert np.abs(a - b).mean() < factor * raw_gap, how
        assert b.std() > 1.5 * preprocess(washed, plain).std()


def test_margin_crops_each_side():
    film = np.zeros((100, 100), np.float32)
    film[:10, :] = 1.0  # text strip at the top edge
    film[45:55, 45:55] = 0.5
    out = preprocess(film, PreprocessSpec(80, 80, margin=0.1, interpolation="linear"))
    assert out[:4].max() < 0.5  # the strip is gone


def test_spec_is_validated():
    for bad in ({"crop": "face"}, {"normalize": "gamma"}, {"margin": 0.5}, {"crop": "lungs"}):
        with pytest.raises(CxrError) as err:
            PreprocessSpec(64, 64, **bad).validate()
        assert err.value.code == ExitCode.MODEL
    assert PreprocessSpec.from_dict({"height": 32, "width": 32}).crop == "none"  # old model files still load


def test_lung_box_from_a_mask_and_implausible_masks():
    mask = np.zeros((128, 128), np.float32)
    mask[30:100, 20:55] = 1.0
    mask[30:105, 70:108] = 1.0
    top, bottom, left, right = box_from_mask(mask)
    assert 0.15 < top < 30 / 128 and bottom > 104 / 128 and left < 20 / 128 and right > 107 / 128
    assert box_from_mask(np.zeros((128, 128))) is None
    speck = np.zeros((128, 128))
    speck[60:66, 60:66] = 1
    assert box_from_mask(speck) is None  # too small to be lungs
    assert box_from_mask(np.ones((128, 128))) is None  # everything is not lungs either


def test_lung_crop_needs_its_registered_segmenter():
    spec = PreprocessSpec(64, 64, crop="lungs", lungs="0" * 64)
    with pytest.raises(CxrError, match="not loaded"):
        preprocess_info(_film(), spec)
