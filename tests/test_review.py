"""`cxr-edge review list/verdict/export` on a log written by a real watcher with a real two-output
(probabilities + class activation map) TFLite model; review images from `screen` with the bundled model."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from review_station import (SAMPLES, build_cam_tflite, cli, export, listed, make_station,
                            watch_once)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory):
    return build_cam_tflite(tmp_path_factory.mktemp("cam") / "cam.tflite")


@pytest.fixture(scope="module")
def station(cam_model, tmp_path_factory):
    return make_station(tmp_path_factory.mktemp("station"), cam_model)


def test_review_list_json_has_one_record_per_exam(station):
    exams = listed(station["log"])
    assert len(exams) == len(station["files"]) + 1
    for exam in exams:
        for key in ("id", "file", "sha256", "status", "decision", "abnormality", "reason", "model", "notice",
                    "verdicts"):
            assert key in exam
        if exam["file"] == station["garbage"]:
            assert exam["status"] == "quarantined" and exam["decision"] is None
            assert exam["reason_code"] == "corrupt" and "PNG" in exam["reason"]
        else:
            assert exam["status"] == "screened"
            assert exam["decision"] == station["files"][exam["file"]]
            assert exam["sha256"] == station["hashes"][exam["file"]]
            assert set(exam["probabilities"]) == {"normal", "pneumonia", "covid-19"}
            assert exam["moved_to"] and Path(exam["moved_to"]).exists()
        assert exam["model"]["name"] == "test-cam" and len(exam["model"]["sha256"]) == 64
    referred = listed(station["log"], "--referred")
    assert {e["file"] for e in referred} == {f for f, d in station["files"].items() if d == "refer"}
    assert len(listed(station["log"], "--since", "1h")) == len(exams)
    assert listed(station["log"], "--since", "2999-01-01") == []
    table = cli("review", "list", "--log", str(station["log"])).stdout
    assert "quarantined" in table and "screening aid, not a diagnosis" in table.lower()


def test_review_verdicts_are_appended_never_overwritten(station):
    log = station["log"]
    exam = listed(log, "--referred")[0]
    first = cli("review", "verdict", str(exam["id"]), "disagree", "--note", "old scar, no pneumonia",
                "--reviewer", "Dr A", "--log", str(log))
    assert f"exam {exam['id']}: disagree" in first.stdout and "Dr A" in first.stdout
    cli("review", "verdict", str(exam["id"]), "agree", "--note", "RLL consolidation after all", "--reviewer", "Dr B",
        "--log", str(log))
    again = next(e for e in listed(log) if e["id"] == exam["id"])
    assert again["verdict"] == "agree" and again["verdict_note"] == "RLL consolidation after all"
    assert again["verdict_by"] == "Dr B" and again["verdict_at"]
    assert [(v["verdict"], v["note"], v["reviewer"]) for v in again["verdicts"]] == [
        ("disagree", "old scar, no pneumonia", "Dr A"), ("agree", "RLL consolidation after all", "Dr B")]
    assert again["decision"] == exam["decision"] and again["abnormality"] == exam["abnormality"]
    with sqlite3.connect(log) as db:  # the table itself refuses to lose a verdict
        for sql in ("DELETE FROM verdicts", "UPDATE verdicts SET verdict = 'agree'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    quarantined = next(e["id"] for e in listed(log) if e["status"] == "quarantined")
    for args, message in [(["999999", "agree"], "no exam with id 999999"),
                          (["1", "maybe"], "agree or disagree"),
                          ([str(quarantined), "agree"], "was not screened")]:
        bad = cli("review", "verdict", *args, "--log", str(log), check=False)
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_review_export_is_self_contained_escaped_and_names_no_file(station, tmp_path):
    referred = [e for e in listed(station["log"]) if e["decision"] == "refer"]
    cli("review", "verdict", str(referred[-1]["id"]), "agree", "--note", "<script>alert(1)</script> & more",
        "--log", str(station["log"]))
    out = tmp_path / "bundle"
    summary = export(station["log"], out)
    page = (out / "index.html").read_text()
    for exam in referred:
        assert f'id="exam-{exam["id"]}"' in page and exam["sha256"] in page
        assert f'name="verdict-{exam["id"]}" value="agree"' in page
    normals = [e for e in listed(station["log"]) if e["decision"] == "normal"]
    assert normals and all(f'id="exam-{e["id"]}"' not in page for e in normals)
    assert page.count('class="film-img"') == len(referred) and page.count('class="heat"') == len(referred)
    assert page.count("untrained test network: its scores mean nothing") == len(referred) + 1  # per exam + model
    assert "Screening aid, not a diagnosis" in page and "test-cam" in page
    assert "threshold 0.000 (command line)" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "corrupt" in page  # the file that was not screened, and its reason
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page), "the page refers to an outside file"
    assert "<script src" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<svg" in page
    records_text = (out / "records.jsonl").read_text()
    records = [json.loads(line) for line in records_text.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(e["id"] for e in listed(station["log"]))
    assert len({r["bundle_id"] for r in records}) == 1 and all("file" not in r for r in records)
    for file in [*station["files"], station["garbage"]]:  # file names can carry a patient's name
        name = Path(file).name
        assert name not in page and html.escape(name) not in page and name not in records_text
    size = sum(p.stat().st_size for p in out.iterdir())
    assert "KiB" in summary
    print(f"\nbundle: {size} bytes for {len(referred)} referred exams ({size // len(referred)} bytes each)")


def test_review_export_without_heatmap_says_so(tiny_model, tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "log.sqlite"
    inbox.mkdir()
    shutil.copy(SAMPLES / "pneumonia-child.png", inbox / "a.png")
    watch_once(inbox, tiny_model, log, "--threshold", "0.0")
    cli("review", "export", str(tmp_path / "bundle"), "--log", str(log))
    page = (tmp_path / "bundle" / "index.html").read_text()
    assert 'class="film-img"' in page and 'class="heat"' not in page
    assert "No heatmap available: this model has no &#x27;cam&#x27; output" in page


def test_heatmap_follows_the_abnormal_class_maps():
    from edge.preprocess import PreprocessSpec
    from edge.review.images import abnormal_map, heatmap_webp, onto_film

    cam = np.zeros((8, 8, 3), np.float32)
    cam[2, 5, 1] = 4.0  # pneumonia evidence at one place
    cam[6, 1, 0] = 4.0  # normal evidence elsewhere must not light up
    heat = abnormal_map(cam, [0.2, 0.7, 0.1], normal_index=0)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (2, 5) and heat[6, 1] == 0.0
    assert abnormal_map(np.zeros((8, 8, 3)), [0.2, 0.7, 0.1], 0) is None
    sharp = np.zeros((8, 8), np.float32)
    sharp[2, 5] = 1.0
    # stretch: the map covers the whole film, whatever its aspect
    film = np.zeros((400, 800), np.float32)
    over = onto_film(sharp, PreprocessSpec(height=64, width=64), film)
    row, col = np.unravel_index(np.argmax(over), over.shape)  # cell (2, 5) of 8x8: centre at 24.5, 109.5
    assert over.shape == (80, 160) and abs(row - 24.5) <= 1 and abs(col - 109.5) <= 1
    # letterbox: a 400x800 film sat in rows 16-47 of the 64x64 input; the padding is cut off
    sharp = np.zeros((8, 8), np.float32)
    sharp[3, 5] = 1.0  # input row 24-31 = film rows (24-16)/32 -> 25-50% of the film's height
    over = onto_film(sharp, PreprocessSpec(height=64, width=64, resize="letterbox"), film)
    row, col = np.unravel_index(np.argmax(over), over.shape)
    assert over.shape == (80, 160) and 20 <= row <= 40 and 100 <= col <= 120
    # a margin: the model saw the middle 80% of the film, so the map covers only that
    margin = SimpleNamespace(height=64, width=64, resize="stretch", crop="none", margin=0.1)
    inside = onto_film(np.ones((8, 8), np.float32), margin, film)
    assert inside[:8].max() == 0 and inside[:, :16].max() == 0 and inside[8:72, 16:144].min() > 0.99
    picture = cv2.imdecode(np.frombuffer(heatmap_webp(over), np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (80, 160, 4)
    assert picture[row, col, 3] > 120 and picture[0, 0, 3] < 10  # opaque where the evidence is, clear elsewhere
    assert picture[row, col, 2] > picture[row, col, 0] + 60  # red where the pneumonia map is high (BGR)


def stored_images(log, exam_id: int) -> dict:
    with sqlite3.connect(log) as db:
        film, heatmap, note = db.execute("SELECT film, heatmap, heatmap_note FROM review_images WHERE exam_id = ?",
                                         (exam_id,)).fetchone()
    return {"film": cv2.imdecode(np.frombuffer(film, np.uint8), cv2.IMREAD_UNCHANGED),
            "heatmap": None if heatmap is None else cv2.imdecode(np.frombuffer(heatmap, np.uint8),
                                                                 cv2.IMREAD_UNCHANGED),
            "note": note, "film_bytes": len(film)}


@pytest.fixture
def big_png(tmp_path):
    grey = cv2.imread(str(SAMPLES / "pneumonia-child.png"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, (1600, 1300), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), big)
    return path, big


def test_screen_stores_film_and_heatmap_and_knows_an_image_it_has_seen(big_png, tmp_path):
    path, big = big_png
    log = tmp_path / "log.sqlite"
    first = json.loads(cli("screen", str(path), "--json", "--log", str(log)).stdout)
    assert first["already_screened"] is False and first["exam_id"] == 1
    assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # the bytes read once, for both
    images = stored_images(log, 1)
    film = images["film"]
    assert film.ndim == 2 and film.shape == (832, 1024)  # grey, long side 1024, aspect kept
    expected = cv2.resize(big, (1024, 832), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(film.astype(int) - expected).mean() < 3  # the film as read, not the 96 px model input
    assert images["heatmap"] is not None and images["heatmap"].shape[2] == 4, images["note"]
    assert images["heatmap"].shape[:2] == (130, 160) and "class activation map" in images["note"]
    # the same bytes again (another name) with the same model: not a new exam
    copy = tmp_path / "copy.png"
    shutil.copy(path, copy)
    again = cli("screen", str(copy), "--json", "--log", str(log))
    record = json.loads(again.stdout)
    assert record["already_screened"] is True and record["exam_id"] == 1
    assert record["abnormality"] == first["abnormality"] and record["screened_at"]
    # the earlier exam's input gate and lung crop come back with it, as the first screening reported them
    assert first["crop"]["crop"] == "lungs" and first["gate"]["verdict"]
    assert (record["crop"], record["gate"]) == (first["crop"], first["gate"])
    assert "already screened as exam 1" in again.stderr
    table = cli("screen", str(path), "--log", str(log))
    from edge.metadata import read_model_file
    from edge.paths import default_model_path

    shipped_threshold = read_model_file(default_model_path())[1].threshold
    assert "already screened as exam 1" in table.stderr and f"{shipped_threshold:.3f}" in table.stdout
    assert [e["id"] for e in listed(log)] == [1] and listed(log)[0]["crop"] == first["crop"]
    # --no-log neither reads nor writes the log: screened afresh, nothing added
    fresh = json.loads(cli("screen", str(path), "--json", "--no-log", "--log", str(log)).stdout)
    assert fresh["already_screened"] is False and fresh["exam_id"] is None
    assert [e["id"] for e in listed(log)] == [1]
    page_dir = tmp_path / "bundle"
    cli("screen", str(SAMPLES / "covid-adult.png"), "--log", str(log))  # the bundled model refers it
    export(log, page_dir, "--all")
    page = (page_dir / "index.html").read_text()
    assert page.count('class="film-img"') == 2 and 'class="heat"' in page
    assert "No heatmap available" not in page
    limitation = read_model_file(default_model_path())[1].training_data["known_limitations"][0]
    assert html.escape(limitation[:60]) in page  # the model's known limitations
    assert "cxr-default" in page and "model metadata" in page
    # what the model read: the gate's verdict and the lung crop, for the doctor
    assert f"input gate: {html.escape(first['gate']['verdict'])}" in page
    assert page.count("the model read the lung fields") + page.count("lung fields were not found") == 2


def test_dicom_film_is_pixels_only_no_tag_burnt_in(tmp_path):
    from images import grey_sample, to_bits, write_dicom
    import pydicom

    pixels = to_bits(cv2.resize(grey_sample(), (1200, 1000), interpolation=cv2.INTER_CUBIC), 12)
    path = write_dicom(tmp_path / "exam.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "PID-778899", "19800101"
    ds.save_as(path)
    log = tmp_path / "log.sqlite"
    cli("screen", str(path), "--log", str(log))
    film = stored_images(log, 1)["film"]
    from edge.decode import load_image
    decoded = load_image(path).pixels
    expected = cv2.resize(decoded, (1024, 853), interpolation=cv2.INTER_AREA) * 255
    assert film.shape == (853, 1024) and np.abs(film - expected).mean() < 3  # only the pixels
    out = tmp_path / "bundle"
    export(log, out, "--all")
    text = (out / "index.html").read_text() + (out / "records.jsonl").read_text()
    text = re.sub(r"data:[a-z/]+;base64,[A-Za-z0-9+/=]+", "", text)  # pictures' base64 may spell "DOE" by chance
    for identifier in ("DOE", "JANE", "PID-778899", "19800101", "exam.dcm"):
        assert identifier not in text


def test_watch_knows_an_image_that_screen_recorded_with_the_same_model(cam_model, tiny_model, tmp_path):
    log, inbox = tmp_path / "log.sqlite", tmp_path / "inbox"
    inbox.mkdir()
    cli("screen", str(SAMPLES / "covid-adult.png"), "--model", str(cam_model), "--log", str(log))
    shutil.copy(SAMPLES / "covid-adult.png", inbox / "again.png")
    watch_once(inbox, cam_model, log)
    exams = listed(log)
    assert len(exams) == 1 and exams[0]["source"] == "screen"
    assert exams[0]["duplicates"] == [str(inbox / "again.png")]
    shutil.copy(SAMPLES / "covid-adult.png", inbox / "third.png")
    watch_once(inbox, tiny_model, log)  # another model: its result is a new exam
    assert [e["model"]["name"] for e in listed(log)] == ["test-cam", "test-tiny"]
