"""`cxr-edge watch` as a real process: slow writers, temp-name renames, corrupt files, a 300-file burst,
kill -9 and restart. The SQLite log is polled with a deadline; no test asserts a speed."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "models" / "samples"
MINI = ROOT / "tests" / "data" / "cxr-mini"
DEADLINE = 90.0  # seconds; generous for a loaded 2-core CI machine


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_watcher(folder: Path, log: Path, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge.cli", "watch", str(folder), "--model", str(model), "--log", str(log),
           "--settle", "0.3", "--retry-delay", "0.5", "--rescan", "3", "--incomplete-wait", "1", *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as handle:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def rows(log: Path, sql: str = "SELECT * FROM exams ORDER BY id") -> list[dict]:
    if not log.exists():
        return []
    db = sqlite3.connect(f"file:{log}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        db.close()


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"watcher exited with {process.returncode} while waiting for {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(timeout=30)


def slow_write(source: Path, target: Path, chunks: int = 6, pause: float = 0.5) -> None:
    """Like a station writing over a slow link: open, write a chunk, close, pause."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(data), step):
        with open(target, "ab") as handle:
            handle.write(data[start:start + step])
        time.sleep(pause)


def write_then_rename(source: Path, target: Path, pause: float = 0.5) -> None:
    temporary = target.with_name(target.name + ".part")
    slow_write(source, temporary, chunks=3, pause=pause)
    time.sleep(pause)  # a temporary name that sits still longer than --settle is still not read
    os.rename(temporary, target)


def burst_image(index: int) -> np.ndarray:
    """A small radiograph-like image, different for every index (its content hash is unique)."""
    base = cv2.resize(cv2.imread(str(SAMPLES / "normal-child.png"), cv2.IMREAD_GRAYSCALE), (256, 256))
    rng = np.random.default_rng(index)
    noise = rng.integers(-6, 7, base.shape)
    return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


def ct_dicom() -> Path:
    from pydicom.data import get_testdata_file
    return Path(get_testdata_file("CT_small.dcm"))


def odd_dicom(path: Path) -> Path:
    """A DICOM whose NumberOfFrames is not a number: pydicom raises a plain ValueError on it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from images import write_dicom

    write_dicom(path, np.zeros((2, 64, 64), np.uint16), frames=2)
    data = path.read_bytes()
    tag = b"\x28\x00\x08\x00IS\x02\x002 "
    assert data.count(tag) == 1
    path.write_bytes(data.replace(tag, b"\x28\x00\x08\x00IS\x02\x00x "))
    return path


def cr_dicom() -> Path | None:
    try:
        from pydicom.data import get_testdata_file
        path = get_testdata_file("RG1_UNCI.dcm")
    except Exception:
        return None
    return Path(path) if path else None


def assert_exactly_once(log: Path, good: dict[str, str], bad: dict[str, tuple]) -> list[dict]:
    """good: file -> sha256; bad: file -> (sha256, reason_code or a tuple of acceptable ones). One row each."""
    exams = rows(log)
    by_file = {}
    for row in exams:
        assert row["file"] not in by_file, f"two rows for {row['file']}"
        by_file[row["file"]] = row
    assert set(by_file) == set(good) | set(bad), (
        f"unexpected rows {sorted(set(by_file) - set(good) - set(bad))}, "
        f"missing {sorted((set(good) | set(bad)) - set(by_file))}")
    for file, digest in good.items():
        row = by_file[file]
        assert row["status"] == "screened", (file, row["status"], row["reason"])
        assert row["sha256"] == digest
        assert row["decision"] in ("refer", "normal") and 0.0 <= row["abnormality"] <= 1.0
        assert row["model_sha256"] and row["notice"] == "screening aid, not a diagnosis"
    for file, (digest, reason) in bad.items():
        row = by_file[file]
        assert row["status"] == "quarantined" and row["decision"] is None, (file, row)
        assert row["reason_code"] in (reason if isinstance(reason, tuple) else (reason,)), (file, row["reason"])
        assert row["sha256"] == digest and row["reason"]
    hashes = [r["sha256"] for r in exams]
    assert len(hashes) == len(set(hashes))
    assert len(rows(log, "SELECT * FROM watch_hashes")) == len(exams)
    assert rows(log, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    return exams


def test_watch_writers_corrupt_files_duplicates_and_clean_stop(tiny_model, tmp_path):
    inbox, log, out = tmp_path / "inbox", tmp_path / "review.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    # Backlog written while the watcher was down.
    backlog = [inbox / "backlog-1.jpg", inbox / "backlog-2.jpg"]
    shutil.copy(MINI / "NORMAL" / "IM-0646-0001.jpg", backlog[0])
    shutil.copy(MINI / "Covid" / "045.jpg", backlog[1])
    truncated = inbox / "truncated.jpg"
    truncated.write_bytes((MINI / "PNEUMONIA" / "person442_virus_900.jpg").read_bytes()[:3000])

    watcher = start_watcher(inbox, log, tiny_model, out, "--log-file", str(tmp_path / "watch.log"))
    wait_for(lambda: len(rows(log)) >= 2, "the backlog", watcher)

    slow, renamed = inbox / "sub" / "slow.png", inbox / "renamed.png"
    writers = [threading.Thread(target=slow_write, args=(SAMPLES / "covid-adult.png", slow)),
               threading.Thread(target=write_then_rename, args=(SAMPLES / "pneumonia-child.png", renamed))]
    dicom = cr_dicom()
    slow_dicom = inbox / "station" / "cr-exam"  # DICOM files often have no extension
    if dicom is not None:
        writers.append(threading.Thread(target=slow_write, args=(dicom, slow_dicom, 8, 0.4)))
    for writer in writers:
        writer.start()
    (inbox / "random.png").write_bytes(np.random.default_rng(1).bytes(5000))
    (inbox / "notes.txt").write_text("exam notes, not an image\n")
    (inbox / "empty.png").write_bytes(b"")
    shutil.copy(ct_dicom(), inbox / "ct.dcm")
    odd_dicom(tmp_path / "odd.dcm")
    shutil.copy(tmp_path / "odd.dcm", inbox / "odd.dcm")
    shutil.copy(backlog[0], inbox / "same-exam-again.jpg")  # the same exam written twice
    shutil.copy(SAMPLES / "normal-child.png", inbox / ".hidden.png")
    shutil.copy(SAMPLES / "normal-child.png", inbox / "still-copying.png.tmp")
    for writer in writers:
        writer.join()

    good = {str(p): sha(p) for p in [*backlog, slow, renamed] + ([slow_dicom] if dicom else [])}
    bad = {str(truncated): (sha(truncated), "truncated"),
           str(inbox / "random.png"): (sha(inbox / "random.png"), "not_an_image"),
           str(inbox / "notes.txt"): (sha(inbox / "notes.txt"), "not_an_image"),
           str(inbox / "empty.png"): (hashlib.sha256(b"").hexdigest(), "empty_file"),
           str(inbox / "ct.dcm"): (sha(inbox / "ct.dcm"), "unsupported_modality"),
           # an exception the decoder does not expect is caught, retried and quarantined, not fatal
           str(inbox / "odd.dcm"): (sha(inbox / "odd.dcm"), ("internal_error", "corrupt"))}
    wait_for(lambda: len(rows(log)) >= len(good) + len(bad)
             and rows(log, "SELECT * FROM watch_duplicates"), "every file", watcher)
    assert stop(watcher, signal.SIGTERM) == 0
    assert_exactly_once(log, good, bad)

    duplicates = rows(log, "SELECT d.file, e.file AS original FROM watch_duplicates d JOIN exams e ON e.id = d.exam_id")
    assert duplicates == [{"file": str(inbox / "same-exam-again.jpg"), "original": str(backlog[0])}]
    if dicom is not None:
        row = next(r for r in rows(log) if r["file"] == str(slow_dicom))
        assert '"kind": "dicom"' in row["image"] and '"photometric": "MONOCHROME1"' in row["image"]
    # Originals untouched; the failing reason is visible in the operator's log.
    assert sha(backlog[0]) == good[str(backlog[0])] and truncated.exists()
    text = out.read_text()
    assert "quarantined (truncated)" in text and "throughput" in text and "SIGTERM" in text
    log_file = (tmp_path / "watch.log").read_text()
    assert "quarantined (unsupported_modality)" in log_file and "duplicate of exam" in log_file

    # A restart finds nothing new: exactly once across restarts.
    restarted = start_watcher(inbox, log, tiny_model, out, "--once")
    assert restarted.wait(timeout=DEADLINE) == 0
    assert_exactly_once(log, good, bad)


def test_watch_burst_kill9_restart_moves_each_file_once(tiny_model, tmp_path):
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    log, out = tmp_path / "review.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    moves = ("--move-done", str(done), "--move-failed", str(failed), "--queue-size", "8")
    watcher = start_watcher(inbox, log, tiny_model, out, *moves)
    wait_for(lambda: out.exists() and "watching" in out.read_text(), "the start line", watcher)

    good, bad = {}, {}
    for i in range(300):
        folder = inbox / f"batch-{i % 3}"
        folder.mkdir(exist_ok=True)
        path = folder / f"exam-{i:03d}.png"
        ok, data = cv2.imencode(".png", burst_image(i))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data.tobytes())
        os.rename(tmp, path)
        good[str(path)] = hashlib.sha256(data.tobytes()).hexdigest()
        if i % 100 == 50:  # corrupt files in the middle of the burst
            broken = folder / f"broken-{i}.png"
            broken.write_bytes(data.tobytes()[: len(data) // 2])
            bad[str(broken)] = (hashlib.sha256(data.tobytes()[: len(data) // 2]).hexdigest(), "truncated")

    wait_for(lambda: len(rows(log)) >= 20, "the burst to start", watcher)
    watcher.send_signal(signal.SIGKILL)
    watcher.wait(timeout=30)
    recorded_at_kill = len(rows(log))
    assert recorded_at_kill < len(good) + len(bad), "the kill came after the burst was done"

    watcher = start_watcher(inbox, log, tiny_model, out, *moves)
    wait_for(lambda: len(rows(log)) >= len(good) + len(bad) and not any(inbox.rglob("*.png")),
             "every file recorded and moved", watcher)
    assert stop(watcher, signal.SIGINT) == 0
    exams = assert_exactly_once(log, good, bad)

    # Moved only after being recorded, unmodified, each to one place.
    moved = {r["sha256"]: r["moved_to"] for r in rows(log, "SELECT * FROM watch_hashes")}
    for row in exams:
        destination = Path(moved[row["sha256"]])
        root = done if row["status"] == "screened" else failed
        assert root in destination.parents and sha(destination) == row["sha256"]
    assert sorted(p.name for p in done.rglob("*.png")) == sorted(Path(f).name for f in good)
    assert sorted(p.name for p in failed.rglob("*.png")) == sorted(Path(f).name for f in bad)
    summary = out.read_text()
    assert "images/s" in summary and "SIGINT" in summary
    print(f"\nburst: {recorded_at_kill} of {len(good) + len(bad)} recorded when killed; "
          f"{summary.strip().splitlines()[-1]}")


def test_watch_poll_mode_sees_new_files(tiny_model, tmp_path):
    inbox, log, out = tmp_path / "share", tmp_path / "review.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    watcher = start_watcher(inbox, log, tiny_model, out, "--poll", "--poll-interval", "0.3", "--rescan", "600")
    wait_for(lambda: out.exists() and "polling" in out.read_text(), "the start line", watcher)
    time.sleep(0.5)  # past the start-up scan, so only the polling observer can find the file
    target = inbox / "deep" / "er" / "exam.jpg"
    target.parent.mkdir(parents=True)
    shutil.copy(MINI / "PNEUMONIA" / "person1031_virus_1723.jpg", target)
    wait_for(lambda: rows(log), "the polled file", watcher)
    assert stop(watcher) == 0
    assert [r["file"] for r in rows(log)] == [str(target)]


def test_watch_live_status_on_a_terminal(tiny_model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(MINI / "NORMAL" / "IM-0467-0001-0002.jpg", inbox / "a.jpg")
    (inbox / "b.png").write_bytes(b"not a png")
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "watch", str(inbox), "--model", str(tiny_model), "--log",
         str(tmp_path / "log.sqlite"), "--once", "--retry-delay", "0.1", "--settle", "0.1"],
        stdout=slave, stderr=slave, cwd=ROOT, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], DEADLINE)
        if not ready:
            process.kill()
            pytest.fail("no output from the watcher on a terminal")
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=30) == 0
    text = output.decode("utf-8", "replace")
    for label in ("screened", "referred", "failed (quarantined)", "queue", "throughput"):
        assert label in text
    assert "\x1b[" in text  # rich drew the live panel with terminal codes


def test_watch_refuses_a_missing_folder(tiny_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "edge.cli", "watch", str(tmp_path / "nope"), "--model",
                             str(tiny_model), "--log", str(tmp_path / "log.sqlite")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "watch folder does not exist" in result.stderr
