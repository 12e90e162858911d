"""`cxr-edge review import` (validation, idempotence) and `cxr-edge review stats` (band, drift, agreement)
on real SQLite logs, with the bundled model (which has validation metrics and a CAM output)."""

from __future__ import annotations

import json
from pathlib import Path
import sqlite3

import numpy as np
import pytest

from review_station import SAMPLES, bundle_data, cli, export, listed


@pytest.fixture
def screened(tmp_path):
    log = tmp_path / "station.sqlite"
    # a threshold between the normal sample and the two abnormal ones (the bundled model's own refers most
    # normal films): the bundle then holds the referred exams and not the normal one
    cli("screen", *(str(SAMPLES / n) for n in ("covid-adult.png", "normal-child.png", "pneumonia-child.png")),
        "--log", str(log), "--threshold", "0.35")
    out = tmp_path / "bundle"
    export(log, out)
    return log, out


def verdict(data: dict, exam_id: int, **changes) -> dict:
    entry = {"bundle_id": data["bundle_id"], "station_id": data["station_id"], "exam_id": exam_id,
             "image_sha256": data["exams"].get(str(exam_id)), "verdict": "agree", "note": None,
             "reviewer": "Dr Test", "time": "2026-01-05T10:00:00.000Z"}
    return {**entry, **changes}


def write_file(path, data: dict, entries: list[dict]):
    path.write_text(json.dumps({"format": "cxr-edge-verdicts", "version": 1, "bundle_id": data["bundle_id"],
                                "station_id": data["station_id"], "verdicts": entries}))
    return path


def test_import_refuses_what_it_cannot_check_and_keeps_the_rest(screened, tmp_path):
    log, out = screened
    data = bundle_data(out)
    exams = {e["file"].rsplit("/", 1)[-1]: e for e in listed(log)}
    covid, normal = exams["covid-adult.png"]["id"], exams["normal-child.png"]["id"]
    assert str(covid) in data["exams"] and str(normal) not in data["exams"]  # only referred exams are in it
    entries = [verdict(data, covid, note="bilateral opacities"),
               verdict(data, covid, image_sha256="0" * 64, time="2026-01-05T10:01:00Z"),
               verdict(data, normal, image_sha256=exams["normal-child.png"]["sha256"]),
               verdict(data, covid, station_id="another-station"),
               verdict(data, covid, bundle_id="f" * 32),
               verdict(data, covid, verdict="maybe"),
               verdict(data, covid, reviewer="  "),
               verdict(data, covid, time="yesterday")]
    path = write_file(tmp_path / "verdicts.json", data, entries)
    result = cli("review", "import", str(path), "--log", str(log), check=False)
    assert result.returncode == 1
    assert "1 verdicts imported, 0 already present, 7 refused" in result.stdout
    reasons = result.stderr.strip().splitlines()
    assert len(reasons) == 7 and all("refused" in line for line in reasons)
    for expected in ("the exam changed", f"exam {normal} was not in bundle", "for station 'another-station'",
                     "was not exported from this log", "is not agree or disagree", "no reviewer name",
                     "not an ISO date/time"):
        assert sum(expected in line for line in reasons) == 1, expected
    again = cli("review", "import", str(path), "--log", str(log), check=False)
    assert "0 verdicts imported, 1 already present, 7 refused" in again.stdout
    record = next(e for e in listed(log) if e["id"] == covid)
    assert [(v["verdict"], v["note"], v["reviewer"], v["source"]) for v in record["verdicts"]] == [
        ("agree", "bilateral opacities", "Dr Test", "import")]
    # a later verdict from the doctor is added, the earlier one kept; the latest (by the doctor's time) is shown
    later = write_file(tmp_path / "later.json", data,
                       [verdict(data, covid, verdict="disagree", note="on second look: normal",
                                time="2026-01-06T09:00:00+01:00")])
    cli("review", "import", str(later), "--log", str(log))
    record = next(e for e in listed(log) if e["id"] == covid)
    assert len(record["verdicts"]) == 2 and record["verdict"] == "disagree"
    assert record["verdict_at"].startswith("2026-01-06T08:00:00")


def test_import_at_another_station_or_of_a_bad_file_is_refused(screened, tmp_path):
    log, out = screened
    data = bundle_data(out)
    covid = int(next(iter(data["exams"])))
    path = write_file(tmp_path / "verdicts.json", data, [verdict(data, covid)])
    other = tmp_path / "other.sqlite"  # another station: same images, its own log and station id
    cli("screen", str(SAMPLES / "covid-adult.png"), "--log", str(other))
    result = cli("review", "import", str(path), "--log", str(other), check=False)
    assert result.returncode == 1 and "not this one" in result.stderr
    assert listed(other)[0]["verdicts"] == []
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for file, message in [(bad, "not a verdicts file"), (tmp_path / "missing.json", "verdicts file not found")]:
        result = cli("review", "import", str(file), "--log", str(log), check=False)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def build_programme(log_path) -> dict[str, list[int]]:
    """Three periods with the bundled model: two alike (Mon 5 and Tue 6 Jan 2026), then a shifted one
    (Tue 13 Jan: every exam referred with scores near 1). Returns the exam ids per day."""
    from edge.paths import default_model_path
    from edge.review.log import ReviewLog
    from edge.runtime import TFLiteModel

    # A real model file with the threshold and validation refer rate these periods were designed around
    # (the bundled model's own numbers change with every release).
    from converters.tflite_metadata import embed_metadata
    from edge.metadata import read_model_file

    data, meta = read_model_file(default_model_path())
    meta.threshold = 0.677
    meta.metrics = {"val_tflite_screening": {"threshold": 0.677, "refer_rate": 0.7181, "n": 816}}
    meta.gate = {}
    pinned = Path(log_path).parent / "programme-model.tflite"
    pinned.write_bytes(embed_metadata(data, meta))
    model = TFLiteModel(pinned)
    threshold = model.metadata.threshold
    ids: dict[str, list[int]] = {}
    with ReviewLog(log_path) as log:
        log.remember_model(model)
        days = {"2026-01-05": np.linspace(0.01, 0.99, 40), "2026-01-06": np.linspace(0.02, 0.98, 40),
                "2026-01-13": np.linspace(0.95, 0.999, 40)}
        for day, scores in days.items():
            for i, score in enumerate(scores):
                row = {"created_at": f"{day}T08:{i:02d}:00.000+00:00", "source": "screen", "file": f"{day}-{i}.png",
                       "sha256": f"{day}-{i}", "status": "screened", "abnormality": float(score),
                       "decision": "refer" if score >= threshold else "normal", "top_class": "pneumonia",
                       "probabilities": {"normal": 1 - float(score), "pneumonia": float(score), "covid-19": 0.0},
                       "threshold": threshold, "threshold_source": "model metadata",
                       "model_name": model.metadata.name, "model_version": model.metadata.version,
                       "model_sha256": model.sha256}
                ids.setdefault(day, []).append(log.record(row))
        for reason in ("lateral_view", "lateral_view", "corrupt"):
            log.record({"created_at": "2026-01-06T09:00:00.000+00:00", "source": "watch", "file": "x.dcm",
                        "status": "quarantined", "reason_code": reason, "reason": reason,
                        "model_name": model.metadata.name, "model_version": model.metadata.version,
                        "model_sha256": model.sha256})
    return ids


def test_stats_band_drift_refusals_and_agreement(tmp_path):
    log = tmp_path / "log.sqlite"
    ids = build_programme(log)
    first = ids["2026-01-05"]  # linspace(0.01, 0.99, 40): index 27 on are referred at the threshold 0.677
    for exam_id, word in [(first[-1], "agree"), (first[-2], "agree"), (first[-3], "agree"), (first[-4], "disagree"),
                          (first[0], "agree"), (first[1], "agree"), (first[2], "disagree")]:
        cli("review", "verdict", str(exam_id), word, "--reviewer", "Dr S", "--log", str(log))
    stats = json.loads(cli("review", "stats", "--json", "--log", str(log)).stdout)
    assert stats["expected_referral_rate"]["rate"] == pytest.approx(0.7181, abs=1e-4)
    assert "val_tflite_screening" in stats["expected_referral_rate"]["source"]
    days = {p["period"]: p for p in stats["periods"]}
    assert list(days) == ["2026-01-05", "2026-01-06", "2026-01-13"]
    assert days["2026-01-06"]["exams"] == 43 and days["2026-01-06"]["screened"] == 40
    assert days["2026-01-06"]["refusals"] == {"lateral_view": 2, "corrupt": 1}
    # 13 of 40 referred on the first days: far below Binomial(40, 0.718); all 40 on the 13th: above it
    assert days["2026-01-05"]["referred"] == 13 and days["2026-01-05"]["referral_alert"]
    assert days["2026-01-13"]["referred"] == 40 and days["2026-01-13"]["referral_alert"]
    lo, hi = days["2026-01-13"]["band"]
    assert 0.4 < lo < 0.718 < hi < 1.0
    drift = {d["period"]: d for d in stats["score_drift"]["periods"]}
    assert stats["score_drift"]["baseline"] == "2026-01-05"
    assert not drift["2026-01-06"]["alert"] and drift["2026-01-06"]["ks_p"] > 0.5
    assert drift["2026-01-13"]["alert"] and drift["2026-01-13"]["ks_p"] < 1e-6 and drift["2026-01-13"]["psi"] > 1
    a = stats["agreement"]
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (3, 1, 2, 1)
    assert a["sensitivity"] == pytest.approx(0.75) and a["specificity"] == pytest.approx(2 / 3)
    assert any("2026-01-13: score distribution shifted" in x for x in stats["alerts"])
    weeks = json.loads(cli("review", "stats", "--json", "--by", "week", "--log", str(log)).stdout)
    assert [p["period"] for p in weeks["periods"]] == ["2026-W02", "2026-W03"]
    assert weeks["periods"][0]["screened"] == 80
    since = json.loads(cli("review", "stats", "--json", "--since", "2026-01-10T00:00+00:00", "--log",
                           str(log)).stdout)
    assert [p["period"] for p in since["periods"]] == ["2026-01-13"] and since["score_drift"]["periods"] == []
    text = cli("review", "stats", "--log", str(log)).stdout
    assert "ALERT" in text and "screening aid, not a diagnosis" in text.lower()
    bad = cli("review", "stats", "--by", "month", "--log", str(log), check=False)
    assert bad.returncode == 2 and "--by must be day or week" in bad.stderr


def test_bundle_plots_the_programme(tmp_path):
    log = tmp_path / "log.sqlite"
    build_programme(log)
    out = tmp_path / "bundle"
    export(log, out)
    page = (out / "index.html").read_text()
    assert page.count('<svg class="chart"') == 2
    assert page.count('class="rate alert"') == 3 and page.count('class="band"') == 3  # every day outside its band
    assert page.count('class="bin"') == 20  # baseline and latest histograms, 10 bins each
    assert "score distribution shifted" in page and "lateral_view 2" in page
    with sqlite3.connect(log) as db:
        assert db.execute("SELECT COUNT(*) FROM bundles").fetchone()[0] == 1


def test_a_log_from_an_older_version_keeps_its_verdict_and_thumbnail(tmp_path):
    """Older versions kept one verdict in the exams row and a small thumbnail in exam_images."""
    import cv2

    from edge.review.log import ReviewLog

    log_path = tmp_path / "old.sqlite"
    thumbnail = cv2.imencode(".jpg", np.full((96, 96), 128, np.uint8))[1].tobytes()
    with ReviewLog(log_path) as log:
        exam_id = log.record({"source": "watch", "file": "/in/a.png", "sha256": "ab" * 32, "status": "screened",
                              "decision": "refer", "abnormality": 0.9, "threshold": 0.5, "model_sha256": "cd" * 32,
                              "model_name": "old", "model_version": "0.1", "probabilities": {"normal": 0.1}})
        log.db.execute("UPDATE exams SET verdict = 'disagree', verdict_note = 'scar', "
                       "verdict_at = '2025-01-01T00:00:00.000+00:00' WHERE id = ?", (exam_id,))
        log.db.execute("INSERT INTO exam_images (exam_id, thumbnail) VALUES (?, ?)", (exam_id, thumbnail))
    for _ in range(2):  # reopening carries the verdict over once
        exam = listed(log_path)[0]
        assert [(v["verdict"], v["note"], v["source"]) for v in exam["verdicts"]] == [("disagree", "scar", "station")]
    out = tmp_path / "bundle"
    export(log_path, out)
    page = (out / "index.html").read_text()
    assert page.count('class="film-img"') == 1 and "kept only the model&#x27;s small input" in page
    assert "not in this log" in page  # no model metadata kept by the old version: says so


def test_a_log_without_the_gate_and_crop_columns_gets_them(tmp_path):
    from edge.review.log import ReviewLog

    log_path = tmp_path / "old.sqlite"
    with ReviewLog(log_path) as log:
        log.record({"source": "screen", "file": "/in/a.png", "status": "screened", "model_name": "old"})
    with sqlite3.connect(log_path) as db:  # as a version before the input gate and the lung crop wrote it
        db.execute("ALTER TABLE exams DROP COLUMN gate")
        db.execute("ALTER TABLE exams DROP COLUMN crop")
    with ReviewLog(log_path) as log:
        crop = {"crop": "lungs_not_found", "box": [0, 10, 0, 12]}
        exam_id = log.record({"source": "screen", "file": "/in/b.png", "status": "screened", "model_name": "new",
                              "gate": {"verdict": "chest_xray"}, "crop": crop})
        rows = {row["id"]: row for row in log.query("1 = 1")}
    assert rows[exam_id]["crop"] == crop and rows[exam_id]["gate"] == {"verdict": "chest_xray"}
    assert rows[1]["crop"] is None and rows[1]["file"] == "/in/a.png"
