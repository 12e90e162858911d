"""`cxr-edge eval` and `cxr-edge calibrate` on real labelled images (tests/data/cxr-mini)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from test_screen_cli import cxr_edge, json_lines
from images import NORMAL_SAMPLE

MINI = Path(__file__).resolve().parent / "data" / "cxr-mini"


def test_eval_json_has_every_metric(tiny_model):
    run = cxr_edge("eval", MINI, "-m", tiny_model, "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    n_files = sum(1 for p in MINI.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert report["n"] == n_files
    assert set(report["per_class"]) == {"normal", "pneumonia", "covid-19"}
    for metrics in report["per_class"].values():
        assert {"precision", "recall", "f1", "support"} <= set(metrics)
    assert sum(map(sum, report["confusion"])) == report["n"]
    screening = report["screening"]
    assert {"auc", "sensitivity", "specificity", "threshold"} <= set(screening)
    assert screening["tp"] + screening["fn"] == screening["n_abnormal"]
    assert report["model"]["name"] == "test-tiny" and "not a diagnosis" in report["notice"]


def test_eval_on_two_class_data_still_gives_screening_metrics(tiny_model, tmp_path):
    for folder in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(MINI / folder, tmp_path / folder)
    report = json.loads(cxr_edge("eval", tmp_path, "-m", tiny_model, "--json").stdout)
    assert report["per_class"]["covid-19"]["support"] == 0
    assert report["screening"]["n_normal"] > 0 and report["screening"]["n_abnormal"] > 0
    assert report["screening"]["auc"] is not None


def test_unknown_folder_lists_known_aliases(tiny_model, tmp_path):
    (tmp_path / "Lung_Opacity").mkdir()
    shutil.copy(NORMAL_SAMPLE, tmp_path / "Lung_Opacity" / "a.png")
    run = cxr_edge("eval", tmp_path, "-m", tiny_model)
    assert run.returncode == 6
    assert "Lung_Opacity" in run.stderr and "viral pneumonia->pneumonia" in run.stderr
    mapped = cxr_edge("eval", tmp_path, "-m", tiny_model, "--alias", "Lung_Opacity=pneumonia", "--json")
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["n"] == 1


def test_calibrate_is_tied_to_the_model_hash(tiny_model, tiny_int8_model, tmp_path):
    run = cxr_edge("calibrate", MINI, "-m", tiny_model, "--sensitivity", "0.9", "--json", "--force")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["sensitivity"] >= 0.9 and record["target_sensitivity"] == 0.9
    assert "too uncertain" in run.stderr and record["forced"]  # 24 images are far too few, and it says so
    stored = json.loads(Path(record["stored_in"]).read_text())
    assert list(stored) == [record["model"]["sha256"]]

    same = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert same["threshold_source"] == "site calibration"
    assert same["threshold"] == pytest.approx(record["threshold"], abs=1e-6)
    other = json_lines(cxr_edge("screen", "-m", tiny_int8_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert other["threshold_source"] == "model metadata"


def test_calibrate_dry_run_stores_nothing(tiny_model):
    record = json.loads(cxr_edge("calibrate", MINI, "-m", tiny_model, "--dry-run", "--json").stdout)
    assert record["stored_in"] is None
    screen = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert screen["threshold_source"] == "model metadata"


def test_calibrate_needs_both_classes(tiny_model, tmp_path):
    shutil.copytree(MINI / "NORMAL", tmp_path / "NORMAL")
    run = cxr_edge("calibrate", tmp_path, "-m", tiny_model)
    assert run.returncode == 6 and "no abnormal" in run.stderr


def test_eval_one_split_of_a_train_run_csv(tiny_model, tmp_path, monkeypatch):
    rows = ["path,dataset,label,split"]
    files = sorted(p for p in MINI.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for i, path in enumerate(files):
        rows.append(f"{path.relative_to(MINI.parent)},mini,{path.parent.name},{'test' if i % 3 == 0 else 'train'}")
    csv_file = tmp_path / "run" / "splits.csv"
    csv_file.parent.mkdir()
    csv_file.write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(MINI.parent)  # cxr-train writes paths relative to where it ran
    import subprocess, sys
    run = subprocess.run([sys.executable, "-m", "edge.cli", "eval", str(csv_file), "--split", "test", "-m",
                          str(tiny_model), "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["n"] == len(range(0, len(files), 3))
    none = subprocess.run([sys.executable, "-m", "edge.cli", "eval", str(csv_file), "--split", "val", "-m",
                           str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert none.returncode == 6 and "no image of split 'val'" in none.stderr


def test_calibrate_does_not_store_an_uncertain_threshold_without_force(tiny_model):
    run = cxr_edge("calibrate", MINI, "-m", tiny_model, "--json")
    assert run.returncode == 7, run.stderr  # 24 images: shown, not stored
    record = json.loads(run.stdout)
    assert record["stored_in"] is None and not record["forced"] and record["warnings"]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("cxr-edge: warning:")]
    assert len(warnings) == 1 and len(run.stderr.splitlines()) == 1, run.stderr  # once, one line
    human = cxr_edge("calibrate", MINI, "-m", tiny_model)
    assert human.returncode == 7 and "Not stored" in human.stdout and "--force" in human.stdout
    screen = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert screen["threshold_source"] == "model metadata"


def test_thresholds_list_and_remove(tiny_model, tiny_int8_model):
    assert "no site thresholds" in cxr_edge("thresholds", "list").stdout
    for model in (tiny_model, tiny_int8_model):
        assert cxr_edge("calibrate", MINI, "-m", model, "--force").returncode == 0
    listed = json_lines(cxr_edge("thresholds", "list", "--json").stdout)
    assert len(listed) == 2 and all(row["valid"] and row["record"]["forced"] for row in listed)
    human = cxr_edge("thresholds", "list").stdout
    assert "test-tiny 0.0.0: threshold" in human and "--force although too uncertain" in human

    removed = cxr_edge("thresholds", "remove", "--model", tiny_model)
    assert removed.returncode == 0 and "1 removed" in removed.stdout, removed.stderr
    screen = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert screen["threshold_source"] == "model metadata"
    other = listed[0]["model_sha256"] if listed[0]["model_sha256"] != screen["model"]["sha256"] \
        else listed[1]["model_sha256"]
    assert cxr_edge("thresholds", "remove", other[:10]).returncode == 0
    assert "no site thresholds" in cxr_edge("thresholds", "list").stdout
    missing = cxr_edge("thresholds", "remove", other[:10])
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "matches none" in missing.stderr


@pytest.mark.parametrize("content, why", [
    ('{{"{sha}": {{"threshold": 1.5}}}}', "not a number in [0, 1]"),
    ('{{"{sha}": {{"threshold": NaN}}}}', "not a number in [0, 1]"),
    ('{{"{sha}": {{"threshold": "0.5"}}}}', "is not a number"),
    ('{{"{sha}": 0.5}}', "not an object"),
    ('[0.5]', "one JSON object"),
    ('{{"{sha}": {{"thresh', "unreadable"),
])
def test_an_invalid_site_threshold_is_one_clear_error_never_a_silent_normal(tiny_model, content, why):
    sha = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]["model"]
    path = Path(os.environ["CXR_EDGE_HOME"]) / "thresholds.json"
    path.write_text(content.format(sha=sha["sha256"]))
    for command in (("screen", "-m", tiny_model, "--no-log", NORMAL_SAMPLE), ("eval", MINI, "-m", tiny_model)):
        run = cxr_edge(*command)
        assert run.returncode == 5 and run.stdout == "", (run.stdout, run.stderr)
        assert run.stderr.startswith(f"cxr-edge: error: {path}") and run.stderr.count("\n") == 1, run.stderr
        assert why in run.stderr
    listed = cxr_edge("thresholds", "list", "--json")
    if "unreadable" in why or "one JSON object" in why:
        assert listed.returncode == 5
    else:
        (row,) = [json.loads(line, parse_constant=pytest.fail) for line in listed.stdout.splitlines()]
        assert not row["valid"] and why in row["invalid_reason"]
        assert cxr_edge("thresholds", "remove", sha["sha256"][:12]).returncode == 0
        assert cxr_edge("screen", "-m", tiny_model, "--no-log", NORMAL_SAMPLE).returncode == 0


def test_a_failed_input_shows_the_threshold_that_would_apply_with_its_source(tiny_model):
    stored = json.loads(cxr_edge("calibrate", MINI, "-m", tiny_model, "--force", "--json").stdout)
    run = cxr_edge("screen", "-m", tiny_model, "--no-log", "nonexistent.png")
    assert run.returncode == 1
    assert f"threshold {stored['threshold']:.3f} from site calibration" in " ".join(run.stdout.split())


def test_eval_warns_once_on_a_small_sample_and_says_parentheses(tiny_model):
    run = cxr_edge("eval", MINI, "-m", tiny_model, "--json")
    report = json.loads(run.stdout)
    n_abnormal, n_normal = report["screening"]["n_abnormal"], report["screening"]["n_normal"]
    assert n_normal < 30 and report["warnings"] == [
        f"only {n_abnormal} abnormal and {n_normal} normal images (want at least 30 of each): these metrics and "
        "their intervals are too uncertain to judge or compare models"]
    assert run.stderr.count("cxr-edge: warning:") == 1
    human = cxr_edge("eval", MINI, "-m", tiny_model)
    assert "95% intervals in parentheses" in " ".join(human.stdout.split()) and "brackets" not in human.stdout
    assert human.stderr.count("cxr-edge: warning: only") == 1


def station_log(path: Path, model_path: Path, review_normals: float = 1.0) -> dict:
    """A real review log: 250 normal and 250 abnormal films screened by `model_path` at 0.3, every referred one
    reviewed and `review_normals` of those called normal (every k-th), each verdict saying what the film was;
    plus exams of another model and a refusal, which calibration must leave out."""
    import numpy as np

    from edge.review.log import ReviewLog
    from edge.review.verdicts import append_verdict
    from edge.runtime import TFLiteModel

    model = TFLiteModel(model_path)
    rng = np.random.default_rng(0)
    truth = np.array([False] * 250 + [True] * 250)
    scores = np.where(truth, rng.beta(5, 2, 500), rng.beta(2, 5, 500))
    step = round(1 / review_normals)
    called_normal = 0
    with ReviewLog(path) as log:
        log.remember_model(model)
        for i, (abnormal, score) in enumerate(zip(truth, scores)):
            decision = "refer" if score >= 0.3 else "normal"
            row = {"source": "watch", "file": f"exam-{i}.png", "sha256": f"{i:064x}", "status": "screened",
                   "abnormality": float(score), "decision": decision, "top_class": "pneumonia",
                   "probabilities": {"normal": 1 - float(score), "pneumonia": float(score), "covid-19": 0.0},
                   "threshold": 0.3, "threshold_source": "model metadata", "model_name": model.metadata.name,
                   "model_version": model.metadata.version, "model_sha256": model.sha256}
            exam_id = log.record(row)
            called_normal += decision == "normal"
            if decision == "refer" or (called_normal - 1) % step == 0:
                agree = (decision == "refer") == bool(abnormal)
                append_verdict(log, exam_id, "agree" if agree else "disagree", None, "Dr R")
        for i in range(5):  # another model's exams, reviewed: never mixed into this model's threshold
            other = log.record({**row, "sha256": f"{1000 + i:064x}", "model_sha256": "f" * 64, "abnormality": 0.99})
            append_verdict(log, other, "disagree", None, "Dr R")
        log.record({"source": "watch", "file": "lateral.png", "status": "refused", "reason_code": "lateral_view",
                    "reason": "lateral view", "model_name": model.metadata.name,
                    "model_version": model.metadata.version, "model_sha256": model.sha256})
    return {"truth": truth, "scores": scores}


def test_calibrate_from_review_labels_films_with_the_doctors_verdicts(tiny_model, tmp_path):
    import numpy as np

    log = tmp_path / "station.sqlite"
    made = station_log(log, tiny_model)
    run = cxr_edge("calibrate", "--from-review", "--log", log, "-m", tiny_model, "--sensitivity", "0.9", "--json")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    abnormal = np.sort(made["scores"][made["truth"]])[::-1]
    assert (record["n_abnormal"], record["n_normal"]) == (250, 250)
    assert record["threshold"] == pytest.approx(abnormal[224])  # the 225th (0.9 x 250) highest abnormal score
    normal = made["scores"][~made["truth"]]
    assert record["specificity"] == pytest.approx(np.mean(normal < record["threshold"]))
    assert record["review"]["refer"]["share"] == 1.0 and record["review"]["normal"]["share"] == 1.0
    assert "doctors' verdicts on 500 of 500 exams" in record["data"][0] and "not a diagnosis" in record["notice"]
    screen = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert screen["threshold_source"] == "site calibration"
    assert screen["threshold"] == pytest.approx(record["threshold"], abs=1e-6)


def test_calibrate_from_review_refuses_a_threshold_biased_by_unreviewed_normals(tiny_model, tmp_path):
    log = tmp_path / "station.sqlite"
    station_log(log, tiny_model, review_normals=0.2)
    run = cxr_edge("calibrate", "--from-review", "--log", log, "-m", tiny_model, "--sensitivity", "0.9", "--json")
    assert run.returncode == 7, run.stderr
    record = json.loads(run.stdout)
    assert record["stored_in"] is None and record["review"]["normal"]["share"] < 0.25
    assert "verification bias" in run.stderr and len(run.stderr.splitlines()) == 1
    screen = json_lines(cxr_edge("screen", "-m", tiny_model, "--json", "--no-log", NORMAL_SAMPLE).stdout)[0]
    assert screen["threshold_source"] == "model metadata"


def test_calibrate_from_review_usage_and_empty_logs(tiny_model, tiny_int8_model, tmp_path):
    log = tmp_path / "station.sqlite"
    station_log(log, tiny_model)
    both = cxr_edge("calibrate", MINI, "--from-review", "--log", log, "-m", tiny_model)
    neither = cxr_edge("calibrate", "-m", tiny_model)
    since_with_folder = cxr_edge("calibrate", MINI, "--since", "7d", "-m", tiny_model)
    for run in (both, neither, since_with_folder):
        assert run.returncode == 2 and "one of the two" in run.stderr and len(run.stderr.splitlines()) == 1
    other = cxr_edge("calibrate", "--from-review", "--log", log, "-m", tiny_int8_model)
    assert other.returncode == 6 and "no exam was screened by this model file" in other.stderr
    assert "505 were screened by other models" in other.stderr
    later = cxr_edge("calibrate", "--from-review", "--log", log, "-m", tiny_model, "--since", "2999-01-01")
    assert later.returncode == 6 and "since 2999-01-01" in later.stderr
    missing = cxr_edge("calibrate", "--from-review", "--log", tmp_path / "none.sqlite", "-m", tiny_model)
    assert missing.returncode == 5 and "no review log here" in missing.stderr
