"""Moving originals after a crash: the destination is recorded before the source disappears.

test_watch.py's burst test once found an exam with no recorded destination after kill -9 and
restart: the old order (link, unlink the source, then record the destination) left a window in
which a kill lost the destination for good, since the restarted watcher no longer saw the source.
These tests pin the order deterministically, without racing a kill against the watcher.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from edge.station.move import move_into

from test_watch import MINI, rows, sha, start_watcher, stop, wait_for


class Killed(Exception):
    """Stands for a kill -9 at the moment the destination is being recorded."""


def test_destination_is_complete_and_source_still_there_when_it_is_recorded(tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    source = inbox / "sub" / "exam.jpg"
    source.parent.mkdir(parents=True)
    shutil.copy(MINI / "NORMAL" / "IM-0467-0001-0002.jpg", source)
    digest = sha(source)
    seen = []

    def record(destination):
        seen.append((destination, source.exists(), sha(destination)))

    moved = move_into(source, inbox, done, on_placed=record)
    assert seen == [(done / "sub" / "exam.jpg", True, digest)]
    assert moved == done / "sub" / "exam.jpg" and not source.exists() and sha(moved) == digest


def test_a_kill_while_recording_keeps_the_source_and_the_redo_reuses_the_copy(tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    source = inbox / "exam.jpg"
    inbox.mkdir()
    shutil.copy(MINI / "NORMAL" / "IM-0467-0001-0002.jpg", source)

    def killed(destination):
        raise Killed

    with pytest.raises(Killed):
        move_into(source, inbox, done, on_placed=killed)
    assert source.exists() and (done / "exam.jpg").exists()  # nothing lost, nothing recorded yet
    recorded = []
    moved = move_into(source, inbox, done, on_placed=recorded.append)
    assert recorded == [moved] == [done / "exam.jpg"]  # the finished copy is reused, no exam-1.jpg
    assert sorted(os.listdir(done)) == ["exam.jpg"] and not source.exists()


def test_restart_finishes_an_interrupted_move_and_records_where_it_went(tiny_model, tmp_path):
    """The state a kill leaves between copying and recording: result recorded, source still in the
    inbox, a complete copy already at the destination. The restarted watcher records that copy."""
    inbox, done, log, out = tmp_path / "inbox", tmp_path / "done", tmp_path / "review.sqlite", tmp_path / "w.out"
    source = inbox / "exam.jpg"
    inbox.mkdir()
    shutil.copy(MINI / "PNEUMONIA" / "person1031_virus_1723.jpg", source)
    watcher = start_watcher(inbox, log, tiny_model, out)  # no --move-done yet: recorded, not moved
    wait_for(lambda: rows(log), "the exam", watcher)
    assert stop(watcher, signal.SIGINT) == 0
    done.mkdir()
    os.link(source, done / "exam.jpg")

    watcher = start_watcher(inbox, log, tiny_model, out, "--move-done", str(done))
    wait_for(lambda: not source.exists() and rows(log, "SELECT moved_to FROM watch_hashes WHERE moved_to IS NOT NULL"),
             "the move to finish", watcher)
    assert stop(watcher, signal.SIGINT) == 0
    (exam,) = rows(log)
    (hashed,) = rows(log, "SELECT * FROM watch_hashes")
    assert hashed["moved_to"] == str(done / "exam.jpg") and hashed["sha256"] == exam["sha256"]
    assert sorted(os.listdir(done)) == ["exam.jpg"] and sha(done / "exam.jpg") == exam["sha256"]
