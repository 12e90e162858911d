"""Ages: a DICOM header's patient age against the ages a model states it is for (edge/patient_age.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydicom.dataset import Dataset

from edge.errors import CxrError
from edge.metadata import ModelMetadata
from edge.patient_age import dicom_age_years
from images import aged_dicoms


@pytest.mark.parametrize("tags, years", [
    ({"PatientAge": "034Y"}, 34.0), ({"PatientAge": "018M"}, 1.5), ({"PatientAge": "026W"}, 0.5),
    ({"PatientAge": "010D"}, 0.03), ({"PatientBirthDate": "20200301", "StudyDate": "20250301"}, 5.0),
    ({"PatientBirthDate": "20200301", "AcquisitionDate": "20210301"}, 1.0),
    ({"PatientAge": "old", "PatientBirthDate": "2020"}, None), ({"PatientBirthDate": "20200301"}, None),
    ({"PatientBirthDate": "20250301", "StudyDate": "20200301"}, None), ({}, None)])
def test_age_is_read_from_patient_age_else_birth_and_study_dates(tags, years):
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    assert dicom_age_years(ds) == years


@pytest.mark.parametrize("ages", [[15], [None, None], ["15", None], [-1, 15], [True, None], "adults"])
def test_a_malformed_age_range_in_the_metadata_is_refused(ages):
    meta = {"name": "m", "version": "1", "classes": ["normal", "pneumonia"], "threshold": 0.5,
            "preprocessing": {"height": 64, "width": 64}, "ages": ages}
    with pytest.raises(CxrError, match="ages must be"):
        ModelMetadata.from_dict(meta)


def _screen(*args: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--no-log", "--json", *args],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout.splitlines()[0]), done.stderr


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return aged_dicoms(tmp_path_factory.mktemp("ages"))


def test_the_default_model_refuses_a_child_by_the_dicom_age_and_says_which_model_to_use(films):
    code, row, err = _screen(str(films["child"]))
    assert code == 1 and row["status"] == "refused" and row["reason_code"] == "age_out_of_range"
    assert row["abnormality"] is None and row["image"]["patient_age"] == 4.0
    assert "aged 4 y" in row["reason"] and "-m cxr-pediatric" in row["reason"] and "15 and over" in row["reason"]
    code, row, _ = _screen("--any-view", str(films["child"]))
    assert code == 0 and row["status"] == "screened" and row["abnormality"] is not None


def test_each_bundled_model_screens_its_own_ages_and_films_without_an_age(films):
    assert _screen("-m", "cxr-pediatric", str(films["child"]))[1]["status"] == "screened"
    code, row, _ = _screen("-m", "cxr-pediatric", str(films["adult"]))
    assert code == 1 and row["reason_code"] == "age_out_of_range" and "-m cxr-default" in row["reason"]
    assert _screen(str(films["adult"]))[1]["image"]["patient_age"] == 44.0
    for model in ("cxr-default", "cxr-pediatric"):
        code, row, _ = _screen("-m", model, str(films["unknown"]))
        assert code == 0 and row["status"] == "screened" and row["image"]["patient_age"] is None
