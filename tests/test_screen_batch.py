"""`cxr-edge screen FOLDER` as a technician uses it: non-image files skipped, a summary line, file
names that stay whole at 80 columns, and the README quick start that leaves the review log alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from images import NORMAL_SAMPLE, PNEUMONIA_SAMPLE, grey_sample, to_bits, write_dicom
from test_screen_cli import json_lines

ROOT = Path(__file__).resolve().parent.parent


def screen(*args, columns: int = 80, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "screen", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def station_folder(root: Path) -> Path:
    """What a real export folder holds: images (one an extension-less DICOM, one broken), and paperwork."""
    folder = root / "export-from-the-modality-2026-11-24" / "ward-b"
    folder.mkdir(parents=True)
    shutil.copy(NORMAL_SAMPLE, folder / "a-rather-long-exam-name-IM-0001-0002-normal.png")
    shutil.copy(PNEUMONIA_SAMPLE, folder / "b-rather-long-exam-name-IM-0003-0004-pneumonia.png")
    write_dicom(folder / "IM000005", to_bits(grey_sample(), 12))
    (folder / "c-broken.png").write_bytes(PNEUMONIA_SAMPLE.read_bytes()[:300])
    (root / "README.md").write_text("# exams of 24 November\n")
    (root / "labels.csv").write_text("file,label\nIM000005,normal\n")
    return root


def test_folder_skips_non_images_and_ends_with_a_summary(tiny_model, tmp_path):
    root = station_folder(tmp_path)
    run = screen("-m", tiny_model, "--no-log", "--json", root)
    rows = json_lines(run.stdout)
    assert sorted(Path(r["file"]).name for r in rows) == sorted(
        ["a-rather-long-exam-name-IM-0001-0002-normal.png", "b-rather-long-exam-name-IM-0003-0004-pneumonia.png",
         "IM000005", "c-broken.png"])  # README.md and labels.csv are not screened as failed images
    assert run.returncode == 1  # the broken PNG (an image by name) is reported, the rest screened
    assert "skipped 2 file(s) in the folder(s) that are not images: README.md, labels.csv" in run.stderr
    refer = sum(r["decision"] == "refer" for r in rows)
    normal = sum(r["decision"] == "normal" for r in rows)
    assert refer + normal == 3
    assert f"{refer} refer / {normal} normal / 1 not screened (2 non-image file(s) skipped)" in run.stderr


def test_file_names_stay_whole_at_80_columns(tiny_model, tmp_path):
    root = station_folder(tmp_path)
    run = screen("-m", tiny_model, "--no-log", root, columns=80)
    for name in ("a-rather-long-exam-name-IM-0001-0002-normal.png", "IM000005", "c-broken.png"):
        assert any(line.rstrip().endswith(name) for line in run.stdout.splitlines()), (name, run.stdout)
    assert re.search(r"^\d+ refer / \d+ normal / 1 not screened", run.stdout, re.M), run.stdout
    wide = screen("-m", tiny_model, "--no-log", ".", columns=250, cwd=root)  # room for the whole table
    assert "Probabilities" in wide.stdout and "a-rather-long-exam-name-IM-0001-0002-normal.png" in wide.stdout


def test_readme_quick_start_does_not_write_the_review_log(tmp_path):
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"## Quick start.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    command = line.split("&& cxr-edge ", 1)[1].split()
    assert command[0] == "screen" and "--no-log" in command, line
    home = tmp_path / "home"
    env = {**os.environ, "CXR_EDGE_HOME": str(home), "COLUMNS": "80"}
    run = subprocess.run([sys.executable, "-m", "edge.cli", *command], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert run.returncode == 0 and "refer" in run.stdout, run.stderr
    assert not (home / "review.sqlite").exists()


def test_table_says_when_the_lung_crop_found_no_lungs():
    from rich.console import Console

    from edge.decision import Decision
    from edge.output import _print_image_notes
    from edge.screening import ScreenResult

    decision = Decision(decision="refer", abnormality=0.7, probabilities={"normal": 0.3, "pneumonia": 0.7},
                        top_class="pneumonia", threshold=0.5)
    found = ScreenResult("a.png", "screened", {}, decision=decision, crop={"crop": "lungs", "box": [1, 9, 1, 9]})
    lost = ScreenResult("b.png", "screened", {}, decision=decision, crop={"crop": "lungs_not_found",
                                                                          "box": [0, 10, 0, 10]})
    console = Console(record=True, width=200)
    _print_image_notes(console, [found, lost])
    text = console.export_text()
    assert "b.png: the lung segmenter found no lungs" in text and "a.png" not in text
