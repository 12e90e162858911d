"""`cxr-train` as a user meets it: an existing run is never silently replaced, and the Python example in
docs/training.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "tests" / "data" / "cxr-mini"


def cxr_train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "from train.cli import main; main()", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_fit_refuses_an_out_folder_that_holds_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.md").write_text("an earlier run's report\n")
    run = cxr_train("fit", str(MINI), "--out", str(out), "--epochs", "1")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"cxr-train: error: {out} already holds files (report.md")
    assert "--resume" in run.stderr and "--overwrite" in run.stderr
    assert (out / "report.md").read_text() == "an earlier run's report\n" and sorted(os.listdir(out)) == ["report.md"]


@pytest.mark.slow
def test_the_python_example_in_docs_training_runs(tmp_path):
    text = (ROOT / "docs" / "training.md").read_text()
    code = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "cxr-mini").symlink_to(MINI)  # the example's relative data path
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code + "print('OK', result.model_path.is_file())\n"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # verbatim, then a check
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK True" in run.stdout


def test_pretrain_names_a_folder_that_is_not_a_run(tmp_path):
    run = cxr_train("pretrain", str(tmp_path), "--out", str(tmp_path / "ssl"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr == (f"cxr-train: error: {tmp_path}: not a finished `cxr-train fit` run (no model.meta.json, "
                          "metrics.json, splits.csv)\n")
    assert not (tmp_path / "ssl").exists()
