"""The input gate (edge/gate.py) with the shipped models/cxr-gate.tflite, on real images, through the real CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from images import COVID_SAMPLE, NORMAL_SAMPLE, PNEUMONIA_SAMPLE, grey_sample

ROOT = Path(__file__).resolve().parent.parent
GATE = ROOT / "models" / "cxr-gate.tflite"
DEFAULT_MODEL = ROOT / "models" / "cxr-default.tflite"
SAMPLES = (NORMAL_SAMPLE, PNEUMONIA_SAMPLE, COVID_SAMPLE)
MINI = sorted((ROOT / "tests" / "data" / "cxr-mini").rglob("*.png")) + \
    sorted((ROOT / "tests" / "data" / "cxr-mini").rglob("*.jp*g"))


def cxr_edge(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


def screen_json(*paths, extra=()) -> list[dict]:
    run = cxr_edge("screen", "--json", "--no-log", *extra, *paths)
    assert run.returncode in (0, 1), run.stderr
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def pydicom_ct_png(tmp_path: Path) -> Path:
    """pydicom's CT slice, exported as an 8-bit PNG as a user would (so no DICOM tag can stop it)."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / np.ptp(pixels) * 255
    path = tmp_path / "ct-slice.png"
    cv2.imwrite(str(path), cv2.resize(pixels.astype(np.uint8), (512, 512), interpolation=cv2.INTER_CUBIC))
    return path


def test_gate_ships_with_its_own_identity():
    from edge.gate import CLASSES, Gate
    from edge.metadata import file_sha256

    gate = Gate(GATE)
    assert gate.model.metadata.task == "gate" and tuple(gate.model.metadata.classes) == CLASSES
    assert gate.identity["name"] == "cxr-gate" and gate.identity["sha256"] == file_sha256(GATE)
    assert gate.model.metadata.quantization == "int8"
    assert gate.model.metadata.metrics, "held-out measurements travel inside the file"


def test_real_frontal_films_pass_and_json_and_log_carry_the_gate(tmp_path):
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "--json", "--log", log, *SAMPLES, *MINI)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == len(SAMPLES) + len(MINI)
    for row in rows:
        assert row["status"] == "screened"
        gate = row["gate"]
        assert gate["verdict"] == "pass" and 0.5 <= gate["score"] <= 1.0
        assert gate["model_name"] == "cxr-gate" and len(gate["model_sha256"]) == 64
    with sqlite3.connect(log) as db:
        logged = [json.loads(g) for (g,) in db.execute("SELECT gate FROM exams ORDER BY id")]
    assert [g["score"] for g in logged] == [r["gate"]["score"] for r in rows]


def test_ct_slice_png_is_refused_and_any_view_overrides(tmp_path):
    ct = pydicom_ct_png(tmp_path)
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "--json", "--log", log, ct)
    assert run.returncode == 1
    row = json.loads(run.stdout)
    assert row["status"] == "refused" and row["reason_code"] == "not_chest_xray"
    assert row["abnormality"] is None and row["probabilities"] is None  # never a made-up score
    assert row["gate"]["scores"]["not_cxr"] > 0.5
    assert run.stderr.count("\n") == 1 and str(ct) in run.stderr and "--any-view" in run.stderr
    with sqlite3.connect(log) as db:
        status, code, gate = db.execute("SELECT status, reason_code, gate FROM exams").fetchone()
    assert (status, code) == ("refused", "not_chest_xray") and json.loads(gate)["verdict"] == "refused"
    overridden = screen_json(ct, extra=("--any-view",))[0]
    assert overridden["status"] == "screened" and overridden["gate"]["verdict"] == "overridden"


@pytest.mark.parametrize("turn", ["rotated_90", "rotated_180", "rotated_270", "inverted"])
def test_turned_and_inverted_films_are_handled(tmp_path, turn):
    files, upright = [], {}
    for sample in SAMPLES:
        grey = grey_sample(sample)
        turned = 255 - grey if turn == "inverted" else np.rot90(grey, int(turn.split("_")[1]) // 90)
        files.append(tmp_path / f"{turn}-{sample.name}")
        cv2.imwrite(str(files[-1]), np.ascontiguousarray(turned))
    upright = {r["file"]: r["abnormality"] for r in screen_json(*SAMPLES)}
    for sample, row in zip(SAMPLES, screen_json(*files)):
        if row["status"] == "refused":
            assert row["reason_code"] == ("inverted" if turn == "inverted" else "rotated")
        else:
            assert row["gate"]["verdict"] == "corrected" and turn in row["gate"]["corrected"]
            assert abs(row["abnormality"] - upright[str(sample)]) <= 0.10


def test_low_quality_images_are_refused(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((512, 512), 128, np.uint8))
    white = tmp_path / "burnt.png"
    grey = grey_sample().astype(np.float32)
    cv2.imwrite(str(white), np.clip(grey * 4, 0, 255).astype(np.uint8))
    rows = screen_json(blank, white)
    assert [(r["status"], r["reason_code"]) for r in rows] == [("refused", "low_quality")] * 2


def test_document_is_refused(tmp_path):
    page = np.full((1100, 850), 235, np.uint8)
    for i, line in enumerate(["RADIOLOGY REFERRAL", "Patient: Jane Doe", "Date of birth: 1970-01-01",
                              "Clinical history: cough, fever for 2 weeks", "Request: chest X-ray PA",
                              "Signature: Dr Smith"] * 3):
        cv2.putText(page, line, (60, 90 + 55 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 20, 2, cv2.LINE_AA)
    path = tmp_path / "referral.jpg"
    cv2.imwrite(str(path), page)
    row = screen_json(path)[0]
    assert (row["status"], row["reason_code"]) == ("refused", "not_chest_xray")


def test_eval_reports_how_many_images_the_gate_refused(tmp_path):
    data = tmp_path / "data"
    for label, sample in (("NORMAL", NORMAL_SAMPLE), ("PNEUMONIA", PNEUMONIA_SAMPLE)):
        (data / label).mkdir(parents=True)
        cv2.imwrite(str(data / label / sample.name), grey_sample(sample))
    ct = pydicom_ct_png(tmp_path)
    ct.rename(data / "NORMAL" / ct.name)
    run = cxr_edge("eval", "--json", data)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["n"] == 2
    assert report["gate"]["checked"] == 3 and report["gate"]["refused"] == 1
    assert report["gate"]["reasons"] == {"not_chest_xray": 1}
    assert "ct-slice.png: not a frontal chest radiograph" in run.stderr
    everything = json.loads(cxr_edge("eval", "--json", "--any-view", data).stdout)
    assert everything["n"] == 3 and everything["gate"]["refused"] == 0


def test_a_pinned_gate_must_match(tmp_path):
    import shutil

    from converters.tflite_metadata import embed_metadata
    from edge.metadata import read_model_file

    data, meta = read_model_file(DEFAULT_MODEL)
    meta.gate = {"file": "cxr-gate.tflite", "sha256": "0" * 64}
    (tmp_path / "model.tflite").write_bytes(embed_metadata(data, meta))
    shutil.copy(GATE, tmp_path / "cxr-gate.tflite")
    run = cxr_edge("screen", "--no-log", "-m", tmp_path / "model.tflite", NORMAL_SAMPLE)
    assert run.returncode == 3 and "gate sha256" in run.stderr and "Traceback" not in run.stderr


def test_gate_runs_without_tensorflow():
    probe = ("import sys\nfrom edge.runtime import TFLiteModel\nfrom edge.screening import screen_file\n"
             f"r = screen_file({str(NORMAL_SAMPLE)!r}, TFLiteModel({str(DEFAULT_MODEL)!r}), 0.5)\n"
             "assert r.gate['verdict'] == 'pass', r.gate\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_held_out_hospitals_pass_and_ct_slices_are_refused(shared_data):
    from train.gate_data import HELD_OUT_SOURCES, held_out_name, image_files

    films = [f for source in HELD_OUT_SOURCES for f in image_files(shared_data / source)[:15]]
    rows = screen_json(*films)
    assert sum(r["status"] == "refused" for r in rows) <= 1, [r["reason"] for r in rows if r["status"] != "screened"]
    ct = [p for p in image_files(shared_data / "not-cxr") if held_out_name(p.name)][:40]
    refused = [r["reason_code"] for r in screen_json(*ct)]
    assert refused.count("not_chest_xray") >= 38, refused


def test_watch_quarantines_what_the_gate_refuses_and_logs_its_score(tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "review.sqlite"
    inbox.mkdir()
    ct = pydicom_ct_png(tmp_path)
    ct.rename(inbox / ct.name)
    cv2.imwrite(str(inbox / "turned.png"), np.ascontiguousarray(np.rot90(grey_sample(), 2)))
    run = cxr_edge("watch", inbox, "--once", "--log", log, "--retries", "1")
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(log) as db:
        rows = {Path(f).name: (s, c, json.loads(g)) for f, s, c, g in
                db.execute("SELECT file, status, reason_code, gate FROM exams")}
    status, code, gate = rows["ct-slice.png"]
    assert (status, code, gate["verdict"]) == ("quarantined", "not_chest_xray", "refused")
    status, code, gate = rows["turned.png"]
    if status == "screened":
        assert gate["verdict"] == "corrected" and gate["corrected"] == ["rotated_180"]
    else:
        assert code == "rotated"
    assert gate["model_name"] == "cxr-gate"
