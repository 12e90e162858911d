"""`cxr-train study` and `cxr-train compare` on real (downscaled) chest X-rays: two sources, one held out,
two baseline presets trained for a tiny budget, converted to int8, timed with LiteRT, compared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ExitCode

MINI = Path(__file__).parent / "data" / "cxr-mini"
PRESETS = ["dense", "single-conv"]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "train.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("cxr-train: error:")]


def _two_sources(root: Path) -> Path:
    """src-a: six images per class; src-b (held out): the other two per class."""
    for cls in ("NORMAL", "PNEUMONIA", "Covid"):
        files = sorted((MINI / cls).glob("*.jpg"))
        for name, chosen in (("src-a", files[:6]), ("src-b", files[6:])):
            (root / name / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, root / name / cls / f.name)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    _two_sources(root / "data")
    config = {"data": ["data"], "out": "study", "presets": PRESETS,
              "fit": {"input_size": 32, "epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "val_fraction": 0.3,
                      "test_fraction": 0.2, "hold_out": ["src-b"], "gradcam_per_kind": 1, "seed": 1},
              "quantize": {"calibration_size": 8}, "latency_runs": 5, "latency_threads": 1}
    (root / "study.json").write_text(json.dumps(config))
    proc = _cli("study", root / "study.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, proc


@pytest.mark.slow
def test_study_trains_converts_times_and_compares(study):
    root, proc = study
    out = root / "study"
    for name in ("study.md", "study.json", "study.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "study.json").read_text())
    assert [r["preset"] for r in result["rows"]] == PRESETS and not result["mixed_fields"]
    assert result["protocol"]["hold_out"] == ["src-b"] and result["protocol"]["input_size"] == 32
    for row in result["rows"]:
        metrics = json.loads((out / row["preset"] / "metrics.json").read_text())
        n_train = sum(metrics["data"]["splits"]["train"].values())
        # seen = the training split scored in inference mode (all of it: fewer than 1000 images)
        assert row["seen"]["n"] == metrics["seen"]["n"] == n_train == metrics["training"]["seen"]["of"]
        assert row["test"]["n"] == metrics["test"]["n"] > 0
        assert row["external"]["src-b"]["n"] == 6  # two per class, never trained on
        assert row["parameters"] == metrics["training"]["parameters"] > 0
        assert row["epochs_run"] == 1 == row["epochs_budget"]
        int8 = row["int8"]
        assert int8["quantization"] == "int8"
        assert int8["bytes"] == (out / row["preset"] / "model-int8.tflite").stat().st_size
        assert int8["latency_ms"] > 0 and int8["latency"]["runs"] == 5
        assert row["test_auc_per_ms"] == pytest.approx(row["test"]["auc"] / int8["latency_ms"])
        # a 4-abnormal / 2-normal validation split cannot choose a threshold: the run says so
        assert any("validation split holds" in w for w in metrics["data"]["warnings"])
        assert "validation split holds" in (out / row["preset"] / "report.md").read_text()
    table = (out / "study.md").read_text()
    assert "held-out src-b AUC / sens / spec" in table and "seen AUC / sens / spec" in table
    assert all(f"| {p} | {p} |" in table for p in PRESETS) and "screening aid, not a diagnosis" in table


@pytest.mark.slow
def test_study_continues_without_training_again(study):
    root, _ = study
    before = (root / "study" / "dense" / "model.keras").stat().st_mtime_ns
    proc = _cli("study", root / "study.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("finished run found, not trained again") == len(PRESETS)
    assert "converting to int8" not in proc.stdout
    assert (root / "study" / "dense" / "model.keras").stat().st_mtime_ns == before


@pytest.mark.slow
def test_compare_refuses_mixed_protocols_and_names_the_field(study, tmp_path):
    root, _ = study
    dense, other = root / "study" / "dense", tmp_path / "other"
    shutil.copytree(root / "study" / "single-conv", other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["training"]["config"]["input_size"] = 64
    (other / "metrics.json").write_text(json.dumps(metrics))
    proc = _cli("compare", dense, other)
    assert proc.returncode == ExitCode.USAGE
    assert len(_error_lines(proc)) == 1 and "input_size differs" in proc.stderr and "--allow-mixed" in proc.stderr

    proc = _cli("compare", dense, other, "--allow-mixed", "--json", "--runs", "2", "--threads", "1",
                "--tflite", f"other={dense / 'model-int8.tflite'}")
    assert proc.returncode == 0, proc.stderr[-1500:]
    result = json.loads(proc.stdout)
    assert result["mixed_fields"] == ["input_size"]
    # the int8 file given for "other" was converted from dense's model: refused, and said why
    assert result["rows"][1]["int8"] is None and "converted from another model" in result["rows"][1]["int8_note"]
    assert result["rows"][0]["int8"]["bytes"] > 0


@pytest.mark.slow
def test_compare_writes_markdown_json_and_plot(study, tmp_path):
    root, _ = study
    runs = [root / "study" / p for p in PRESETS]
    proc = _cli("compare", *runs, "--out", tmp_path / "cmp.md", "--runs", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (tmp_path / "cmp.md").read_text().startswith("| run | preset | parameters |")
    assert json.loads((tmp_path / "cmp.json").read_text())["rows"][0]["preset"] == "dense"
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_study_refuse_bad_input_in_one_line(tmp_path):
    proc = _cli("compare", tmp_path)
    assert proc.returncode == ExitCode.USAGE and len(_error_lines(proc)) == 1 and "no metrics.json" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": ["x"], "out": "o", "presets": ["small-cnn", "vgg17"], "fit": {"epoch": 2}}))
    proc = _cli("study", bad)
    assert proc.returncode == ExitCode.USAGE and len(_error_lines(proc)) == 1
    assert "fit.epoch is not a FitConfig field" in proc.stderr and "unknown preset 'vgg17'" in proc.stderr
