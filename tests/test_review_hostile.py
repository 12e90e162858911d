"""The review log against damage and odd arguments (issue 9): checked at every start, read-only where only
read, and one-line errors for values out of range."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import CxrError
from edge.review.log import ReviewLog

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "models" / "samples" / "normal-child.png"


def cli(*args, home: Path, preexec=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CXR_EDGE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120, preexec_fn=preexec)


def filled_log(path: Path, n: int = 60) -> Path:
    with ReviewLog(path) as log:
        for i in range(n):
            log.record({"source": "screen", "file": f"/station/exam-{i:04d}.png" * 8, "status": "failed",
                        "reason_code": "corrupt", "reason": "x" * 400, "sha256": f"{i:064x}"})
    return path


def damage(path: Path, pages: int = 3) -> None:
    """Overwrite the last pages' contents, as a failing SD card does; SQLite still opens and appends."""
    data = bytearray(path.read_bytes())
    last = len(data) // 4096
    for page in range(last - pages, last):
        data[page * 4096 + 100:page * 4096 + 4000] = b"\xaa" * 3900
    path.write_bytes(bytes(data))


def test_a_damaged_log_stops_the_station_loudly(tiny_model, tmp_path):
    log = filled_log(tmp_path / "review.sqlite")
    damage(log)
    for args in (("screen", "-m", tiny_model, "--log", log, SAMPLE), ("review", "list", "--log", log)):
        run = cli(*args, home=tmp_path)
        assert run.returncode == 5, run.stdout + run.stderr
        assert "Traceback" not in run.stderr and "review log is damaged" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_read_only_commands_open_the_log_read_only(tmp_path):
    log = filled_log(tmp_path / "review.sqlite", 2)
    with ReviewLog(log, readonly=True) as review_log:
        assert len(review_log.query()) == 2
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            review_log.db.execute("DELETE FROM exams")
    with pytest.raises(CxrError) as info:
        ReviewLog(tmp_path / "missing.sqlite", readonly=True)
    assert info.value.reason == "log_missing" and not (tmp_path / "missing.sqlite").exists()


def test_review_list_reads_a_log_it_may_not_write(tmp_path):
    from test_screen_hostile import without_read_override

    folder = tmp_path / "copy-from-the-station"
    folder.mkdir()
    log = filled_log(folder / "review.sqlite", 2)
    log.chmod(0o444)
    folder.chmod(0o555)  # a read-only copy: no -wal/-shm can be created beside it
    run = cli("review", "list", "--json", "--log", log, home=tmp_path, preexec=without_read_override())
    folder.chmod(0o755)
    if run.returncode == 97:
        pytest.skip("cannot drop root's file-read override here (no CAP_SETPCAP)")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2


@pytest.mark.parametrize("args", [
    ("review", "list", "--since", "99999999999w"),
    ("review", "list", "--since", "0001-01-01"),
    ("review", "export", "OUT", "--since", "99999999999w"),
    ("review", "verdict", "99999999999999999999", "agree"),
])
def test_out_of_range_arguments_are_one_line_errors(tmp_path, args):
    log = filled_log(tmp_path / "review.sqlite", 2)
    args = tuple(str(tmp_path / "bundle") if a == "OUT" else a for a in args)
    run = cli(*args, "--log", log, home=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
