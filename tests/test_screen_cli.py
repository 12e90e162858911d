"""`cxr-edge screen` as a technician runs it: a real process, real images, a real SQLite log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from images import COVID_SAMPLE, NORMAL_SAMPLE, PNEUMONIA_SAMPLE, grey_sample, to_bits, write_dicom
from test_decode import bad_inputs

ROOT = Path(__file__).resolve().parent.parent
JSON_KEYS = {"file", "sha256", "decision", "abnormality", "probabilities", "top_class", "model", "latency_ms",
             "status", "reason_code", "notice"}


def cxr_edge(*args, env_home: Path | None = None) -> subprocess.CompletedProcess:
    import os
    env = dict(os.environ)
    if env_home is not None:
        env["CXR_EDGE_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_json_contract_and_decision(tiny_model, tmp_path):
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "--model", tiny_model, "--json", "--log", log, NORMAL_SAMPLE, PNEUMONIA_SAMPLE)
    assert run.returncode == 0, run.stderr
    rows = json_lines(run.stdout)
    assert len(rows) == 2
    for row in rows:
        assert JSON_KEYS <= set(row)
        probs = row["probabilities"]
        assert set(probs) == {"normal", "pneumonia", "covid-19"}
        assert abs(sum(probs.values()) - 1.0) < 1e-3
        assert row["abnormality"] == pytest.approx(1.0 - probs["normal"], abs=1e-5)
        assert row["top_class"] == max(probs, key=probs.get)
        assert row["decision"] == ("refer" if row["abnormality"] >= row["threshold"] else "normal")
        assert row["model"]["name"] == "test-tiny" and len(row["model"]["sha256"]) == 64
        assert "not a diagnosis" in row["notice"]
        assert row["latency_ms"] > 0


def test_threshold_override_flips_decision(tiny_model, tmp_path):
    low = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", "--threshold", "0",
                              NORMAL_SAMPLE).stdout)[0]
    high = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", "--threshold", "1",
                               NORMAL_SAMPLE).stdout)[0]
    assert low["decision"] == "refer" and low["threshold_source"] == "command line"
    assert high["decision"] == "normal" or high["abnormality"] == 1.0
    assert low["abnormality"] == high["abnormality"]


def test_int8_model_screens_a_3000px_16bit_image(tiny_int8_model, tmp_path):
    import cv2
    big = cv2.resize(grey_sample(COVID_SAMPLE), (3000, 3000), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "detector.png"), to_bits(big, 16))
    run = cxr_edge("screen", "-m", tiny_int8_model, "--json", "--no-log", tmp_path / "detector.png")
    assert run.returncode == 0, run.stderr
    row = json_lines(run.stdout)[0]
    assert row["image"] == {"kind": "png", "bits": 16, "width": 3000, "height": 3000}
    assert 0.0 <= row["abnormality"] <= 1.0


def test_bad_inputs_do_not_stop_the_batch(tiny_model, tmp_path):
    bad = bad_inputs(tmp_path)
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "-m", tiny_model, "--json", "--log", log, NORMAL_SAMPLE, *bad.values(),
                   PNEUMONIA_SAMPLE)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("cxr-edge: failed")]
    assert len(error_lines) == len(bad)
    for path in bad.values():
        assert sum(str(path) in line for line in error_lines) == 1
    rows = json_lines(run.stdout)
    assert [r["status"] for r in rows] == ["screened"] + ["failed"] * len(bad) + ["screened"]
    for row in rows[1:-1]:
        assert row["decision"] is None and row["abnormality"] is None and row["probabilities"] is None
        assert row["reason_code"]
    with sqlite3.connect(log) as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM exams ORDER BY id")]
    assert statuses == [r["status"] for r in rows]


def test_refused_dicom_is_logged_with_reason_code(tiny_model, tmp_path):
    lateral = write_dicom(tmp_path / "lat.dcm", to_bits(grey_sample(), 12), view="LL")
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "-m", tiny_model, "--json", "--log", log, lateral)
    assert run.returncode == 1
    row = json_lines(run.stdout)[0]
    assert (row["status"], row["reason_code"], row["decision"]) == ("refused", "lateral_view", None)
    with sqlite3.connect(log) as db:
        (status, code, sha) = db.execute("SELECT status, reason_code, sha256 FROM exams").fetchone()
    assert (status, code, sha) == ("refused", "lateral_view", row["sha256"])
    forced = cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", "--any-view", lateral)
    assert forced.returncode == 0 and json_lines(forced.stdout)[0]["status"] == "screened"


def test_review_log_rows_carry_model_identity(tiny_model, tmp_path):
    log = tmp_path / "log.sqlite"
    run = cxr_edge("screen", "-m", tiny_model, "--json", "--log", log, NORMAL_SAMPLE)
    out = json_lines(run.stdout)[0]
    with sqlite3.connect(log) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM exams").fetchone())
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    assert row["sha256"] == out["sha256"] and row["decision"] == out["decision"]
    assert row["abnormality"] == pytest.approx(out["abnormality"])
    assert json.loads(row["probabilities"]) == out["probabilities"]
    assert (row["model_name"], row["model_sha256"]) == ("test-tiny", out["model"]["sha256"])
    assert "not a diagnosis" in row["notice"] and row["source"] == "screen"


def test_default_log_location_and_no_log(tiny_model, tmp_path):
    home = tmp_path / "home"
    cxr_edge("screen", "-m", tiny_model, "--no-log", NORMAL_SAMPLE, env_home=home)
    assert not (home / "review.sqlite").exists()
    cxr_edge("screen", "-m", tiny_model, NORMAL_SAMPLE, env_home=home)
    assert (home / "review.sqlite").exists()


def test_table_output_names_model_and_notice(tiny_model):
    run = cxr_edge("screen", "-m", tiny_model, "--no-log", NORMAL_SAMPLE)
    assert run.returncode == 0
    assert "test-tiny" in run.stdout and "not a diagnosis" in run.stdout


@pytest.mark.parametrize("content,reason", [(b"", "not a TFLite model"), (b"hello world, not a model", "not a TFLite")])
def test_bad_model_file_is_one_line_exit_3(tmp_path, content, reason):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(content)
    run = cxr_edge("screen", "-m", bad, "--no-log", NORMAL_SAMPLE)
    assert run.returncode == 3
    assert run.stderr.strip().count("\n") == 0 and reason in run.stderr and str(bad) in run.stderr


def test_tflite_without_metadata_is_refused(tmp_path, tiny_model):
    from edge.tflite_file import read_metadata_entries
    import os
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras
    model = keras.Sequential([keras.layers.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert read_metadata_entries(plain.read_bytes()).get("cxr_edge_metadata") is None
    run = cxr_edge("screen", "-m", plain, "--no-log", NORMAL_SAMPLE)
    assert run.returncode == 3 and "no cxr-edge metadata" in run.stderr


def test_missing_edgetpu_delegate_is_a_clear_error(tiny_model):
    run = cxr_edge("screen", "-m", tiny_model, "--no-log", "--delegate", "edgetpu", NORMAL_SAMPLE)
    assert run.returncode == 4
    assert "Edge TPU delegate" in run.stderr and "Traceback" not in run.stderr


def test_folder_argument_screens_every_file(tiny_model, tmp_path):
    import shutil
    for sample in (NORMAL_SAMPLE, PNEUMONIA_SAMPLE):
        shutil.copy(sample, tmp_path / sample.name)
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    run = cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", tmp_path)
    assert run.returncode == 0 and len(json_lines(run.stdout)) == 2
