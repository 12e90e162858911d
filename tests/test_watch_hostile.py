"""`cxr-edge watch` against an unlucky or hostile station (issue 9): stalled writers, special and
unreadable files, odd names, a folder removed and recreated, unwritable move targets, re-screening.
Real processes, real files, a real SQLite log; conditions are polled with a deadline, never timed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_screen_hostile import without_read_override
from test_watch import DEADLINE, ROOT, SAMPLES, rows, stop, wait_for

GOOD = SAMPLES / "normal-child.png"
STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_watcher_left_behind():
    """A failing test must not leave its watcher running (one that hangs would ignore SIGTERM)."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def start(folder: Path, log: Path, model: Path, out: Path, *extra: str, preexec=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge.cli", "watch", str(folder), "--model", str(model), "--log", str(log),
           "--settle", "0.3", "--retry-delay", "0.5", *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=preexec)
    STARTED.append(process)
    return process


def output(out: Path) -> str:
    return out.read_bytes().decode("utf-8", "replace") if out.exists() else ""


def finished(process: subprocess.Popen, timeout: float = DEADLINE) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"watcher did not exit within {timeout:.0f} s")


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_a_writer_that_stalls_mid_file_is_waited_for(tiny_model, tmp_path, mode):
    inbox, log, out = tmp_path / "inbox", tmp_path / "log.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    # inotify: the file is open for writing (no IN_CLOSE_WRITE yet), so it is not read, however short
    # --incomplete-wait is. Polling cannot see that: the default --incomplete-wait (30 s) covers the stall.
    extra = ("--incomplete-wait", "1") if mode == "inotify" else ("--poll", "--poll-interval", "0.2")
    watcher = start(inbox, log, tiny_model, out, "--move-failed", str(tmp_path / "failed"), *extra)
    wait_for(lambda: "watching" in output(out), "the watcher to start", watcher)
    data = GOOD.read_bytes()
    target = inbox / "stalled.png"
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(6)  # the station's writer stalls with the file open
        handle.write(data[len(data) // 2:])
    exams = wait_for(lambda: rows(log), "the exam to be recorded", watcher)
    assert stop(watcher) == 0
    assert [(r["file"], r["status"]) for r in exams] == [(str(target), "screened")], output(out)


def test_special_unreadable_and_oddly_named_files_never_stop_or_hang_the_watcher(tiny_model, tmp_path):
    inbox, log, out = tmp_path / "inbox", tmp_path / "log.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe.png")
    (inbox / "zero.dcm").symlink_to("/dev/zero")
    secret = Path(shutil.copy(SAMPLES / "covid-adult.png", inbox / "secret.png"))
    secret.chmod(0)
    latin1 = os.fsdecode(bytes(inbox) + b"/M\xfcller.png")
    shutil.copy(GOOD, latin1)
    forged = inbox / "a.png\nFORGED exam 99: normal\x1b[2J.png"
    shutil.copy(SAMPLES / "pneumonia-child.png", forged)
    watcher = start(inbox, log, tiny_model, out, "--once", preexec=without_read_override())
    code = finished(watcher)
    if code == 97:
        pytest.skip("cannot drop root's file-read override here (no CAP_SETPCAP)")
    text = output(out)
    assert code == 0, text
    assert "Traceback" not in text and "\x1b" not in text and "FORGED" not in text.replace("\\nFORGED", "")
    exams = rows(log)
    assert sorted((r["file"], r["status"]) for r in exams) == sorted([
        (str(inbox) + "/M\\xfcller.png", "screened"),
        (str(inbox) + "/a.png\\nFORGED exam 99: normal\\x1b[2J.png", "screened")])
    for name, reason in (("pipe.png", "not_a_file"), ("zero.dcm", "not_a_file"), ("secret.png", "unreadable")):
        lines = [line for line in text.splitlines() if name in line]
        assert len(lines) == 1 and f"skipped ({reason})" in lines[0], text  # warned once, never twice


def test_sigterm_is_honoured_with_special_files_in_the_folder(tiny_model, tmp_path):
    inbox, log, out = tmp_path / "inbox", tmp_path / "log.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe.png")
    (inbox / "zero.png").symlink_to("/dev/zero")
    watcher = start(inbox, log, tiny_model, out, "--rescan", "1")
    wait_for(lambda: output(out).count("skipped (not_a_file)") == 2, "both special files reported", watcher)
    shutil.copy(GOOD, inbox / "good.png")
    wait_for(lambda: rows(log), "the good file to be screened", watcher)
    watcher.send_signal(signal.SIGTERM)
    assert finished(watcher, 30) == 0
    assert "SIGTERM received" in output(out)


def test_folder_removed_and_recreated_is_watched_again(tiny_model, tmp_path):
    inbox, log, out = tmp_path / "inbox", tmp_path / "log.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    watcher = start(inbox, log, tiny_model, out, "--rescan", "600")  # only events can find the new file
    wait_for(lambda: "watching" in output(out), "the watcher to start", watcher)
    shutil.rmtree(inbox)
    wait_for(lambda: "is gone" in output(out), "the watcher to notice the folder is gone", watcher)
    inbox.mkdir()
    wait_for(lambda: "re-armed" in output(out), "events to be re-armed", watcher)
    shutil.copy(GOOD, inbox / "after.png")
    exams = wait_for(lambda: rows(log), "the new file to be screened from an event", watcher, timeout=60)
    assert stop(watcher) == 0
    assert exams[0]["file"] == str(inbox / "after.png") and exams[0]["status"] == "screened"


def test_unwritable_move_target_is_refused_at_start_in_one_line(tiny_model, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    done.chmod(0o555)
    out = tmp_path / "watch.out"
    watcher = start(inbox, tmp_path / "log.sqlite", tiny_model, out, "--once", "--move-done", str(done),
                    preexec=without_read_override())
    code = finished(watcher)
    if code == 97:
        pytest.skip("cannot drop root's file-read override here (no CAP_SETPCAP)")
    text = output(out)
    assert code == 5, text
    assert [line for line in text.splitlines() if "error:" in line] == [
        f"cxr-edge: error: {done}: files cannot be moved here (Permission denied); fix the folder's permissions "
        "or mount, or choose another --move-done/--move-failed"]


def test_move_target_that_becomes_unwritable_is_reported_and_not_retried_forever(tiny_model, tmp_path):
    inbox, done, log, out = tmp_path / "inbox", tmp_path / "done", tmp_path / "log.sqlite", tmp_path / "watch.out"
    inbox.mkdir()
    watcher = start(inbox, log, tiny_model, out, "--move-done", str(done), "--rescan", "1",
                    preexec=without_read_override())
    wait_for(lambda: "watching" in output(out) or watcher.poll() is not None, "the watcher to start")
    if watcher.poll() == 97:
        pytest.skip("cannot drop root's file-read override here (no CAP_SETPCAP)")
    done.chmod(0o555)  # e.g. the share was remounted read-only
    shutil.copy(GOOD, inbox / "exam.png")
    wait_for(lambda: "left in place" in output(out), "the watcher to give up moving", watcher)
    time.sleep(3)  # three more --rescan periods: a watcher that retried forever would warn again meanwhile
    assert stop(watcher) == 0
    text = output(out)
    assert "exam 1: " in text  # the result is reported although the move failed
    assert text.count("cannot be moved to") == 3, text  # --retries (3) attempts, then left alone
    assert [r["status"] for r in rows(log)] == ["screened"]
    assert (inbox / "exam.png").exists()


def test_partial_copies_in_move_targets_are_removed_at_start(tiny_model, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    (done / "sub").mkdir(parents=True)
    partial = done / "sub" / ".exam.png.cxr-edge-copy"
    partial.write_bytes(GOOD.read_bytes()[:100])  # left by a watcher killed while copying across filesystems
    watcher = start(inbox, tmp_path / "log.sqlite", tiny_model, tmp_path / "watch.out", "--once",
                    "--move-done", str(done))
    assert finished(watcher) == 0
    assert not partial.exists()


def test_rescreen_failed_screens_fixable_quarantines_again(tiny_model, tmp_path):
    import pydicom

    from images import grey_sample, to_bits, write_dicom

    inbox, failed, log, out = tmp_path / "inbox", tmp_path / "failed", tmp_path / "log.sqlite", tmp_path / "w.out"
    inbox.mkdir()
    path = write_dicom(inbox / "exam.dcm", to_bits(grey_sample(), 12))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # no decoder for it on this station
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(path, enforce_file_format=True)
    common = ("--once", "--move-failed", str(failed), "--incomplete-wait", "0")
    assert finished(start(inbox, log, tiny_model, out, *common)) == 0
    assert [(r["status"], r["reason_code"]) for r in rows(log)] == [("quarantined", "unsupported_compression")]
    assert (failed / "exam.dcm").exists() and not path.exists()
    assert finished(start(inbox, log, tiny_model, out, *common)) == 0
    assert len(rows(log)) == 1  # without the option, a quarantine is final
    assert finished(start(inbox, log, tiny_model, out, *common, "--rescreen-failed")) == 0
    assert "1 quarantined exams will be screened again" in output(out)
    exams = rows(log)
    assert [(r["file"], r["reason_code"]) for r in exams] == [(str(path), "unsupported_compression")] * 2
    assert (failed / "exam.dcm").exists()  # screened again (still no decoder) and moved back to failed


def test_fatal_disk_full_is_written_to_the_log_file(tiny_model, tmp_path):
    import resource

    import cv2

    from test_watch import burst_image

    inbox, log, log_file, out = tmp_path / "inbox", tmp_path / "log.sqlite", tmp_path / "w.log", tmp_path / "w.out"
    inbox.mkdir()
    for index in range(80):
        cv2.imwrite(str(inbox / f"exam-{index:03d}.png"), burst_image(index))
    limit = 256 * 1024  # the review log's file may not grow beyond this: a full disk, for this process only

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    code = finished(start(inbox, log, tiny_model, out, "--once", "--log-file", str(log_file), preexec=small_disk))
    text = output(out)
    assert code == 5, text
    assert "Traceback" not in text
    errors = [line for line in log_file.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "stopping:" in errors[0] and "cannot write to review log" in errors[0], errors
    assert sum("error:" in line for line in text.splitlines()) == 1  # on stderr once, not twice


def test_retry_back_off_is_capped(tmp_path):
    from edge.station.files import Pending

    pending = Pending(settle=0.5)
    path = tmp_path / "exam.png"
    for _ in range(100):  # a file that fails for days: the wait between attempts stops growing
        pending.retry(path, "same-bytes", delay=1.0, max_delay=30.0)
    wait = pending.entries[path].not_before - time.monotonic()
    assert 29.0 < wait <= 30.0
