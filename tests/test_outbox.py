"""The outbox's bookkeeping on a real SQLite review log: back-off, refusals, retry, the forwarding start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge.errors import CxrError
from edge.review.log import ReviewLog
from edge.station import outbox
from edge.station.forwarder import parse_destination

ROOT = Path(__file__).resolve().parent.parent


def tiny_object() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    return ds


def exam(log: ReviewLog) -> int:
    return log.record({"source": "listen", "file": "x.dcm", "status": "screened", "image": {"kind": "dicom"}})


def test_backoff_doubles_and_is_capped():
    assert [outbox.backoff(n, 5, 600) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert outbox.backoff(50, 5, 600) == 600


def test_forwarding_starts_after_the_exams_already_logged(tmp_path):
    log = outbox.open_outbox(ReviewLog(tmp_path / "review.sqlite"))
    old = exam(log)
    first = outbox.forward_from(log, "PACS@h:104")
    new = exam(log)
    assert first == old + 1 and outbox.forward_from(log, "PACS@h:104") == first  # fixed once
    assert [e["id"] for e in outbox.exams_to_build(log, "PACS@h:104", first)] == [new]
    assert outbox.forward_from(log, "OTHER@h:104") == new + 1


def test_unreachable_stays_pending_refusals_fail_and_retry_requeues(tmp_path):
    log = outbox.open_outbox(ReviewLog(tmp_path / "review.sqlite"))
    exam_id = exam(log)
    outbox.enqueue(log, exam_id, "PACS@h:104", [("sr", tiny_object()), ("sc", tiny_object())])
    outbox.enqueue(log, exam_id, "PACS@h:104", [("sr", tiny_object())])  # built again: ignored, first kept
    sr, sc = outbox.due(log, "PACS@h:104")
    for _ in range(3 * outbox.MAX_REFUSALS):  # offline for a long time: never gives up
        item = next(i for i in outbox.listing(log) if i["kind"] == "sr")
        sr.attempts = item["attempts"]
        assert outbox.mark_unsent(log, sr, "PACS unreachable", refused=False, first=1, cap=8) == "pending"
    row = next(i for i in outbox.listing(log) if i["kind"] == "sr")
    assert row["attempts"] == 3 * outbox.MAX_REFUSALS and row["next_attempt_at"] > time.time() + 6
    assert outbox.due(log, "PACS@h:104") == [sc]
    for n in range(outbox.MAX_REFUSALS):
        sc.refusals = n
        status = outbox.mark_unsent(log, sc, "PACS answered 0xA700", refused=True, first=1, cap=8)
    assert status == "failed"
    assert outbox.retry_now(log) == 2 and {i.kind for i in outbox.due(log, "PACS@h:104")} == {"sr", "sc"}
    outbox.mark_sent(log, sr)
    sent = next(i for i in outbox.listing(log) if i["kind"] == "sr")
    assert sent["status"] == "sent" and sent["sent_at"]
    assert log.db.execute("SELECT dataset FROM outbox WHERE id = ?", (sr.id,)).fetchone()[0] is None
    outbox.mark_unsent(log, sr, "late", refused=False, first=1, cap=8)  # a sent row never goes back
    assert next(i for i in outbox.listing(log) if i["kind"] == "sr")["status"] == "sent"


def test_build_failures_are_listed_and_rebuilt_on_retry(tmp_path):
    log = outbox.open_outbox(ReviewLog(tmp_path / "review.sqlite"))
    exam_id = exam(log)
    outbox.record_build_failure(log, exam_id, "PACS@h:104", "source file x.dcm is gone")
    assert {r["status"] for r in outbox.listing(log)} == {"failed"}
    assert outbox.exams_to_build(log, "PACS@h:104", 1) == []
    outbox.retry_now(log)
    assert [e["id"] for e in outbox.exams_to_build(log, "PACS@h:104", 1)] == [exam_id]


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:x",
                                  "A_VERY_LONG_AE_TITLE@host:104", "A\\B@host:104", "  @host:104"])
def test_bad_destinations_are_one_line_errors(text):
    with pytest.raises(CxrError, match="expected AE@host:port"):
        parse_destination(text)
    assert str(parse_destination("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"


def test_cli_outbox_and_listen_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
    missing = run("outbox", "list", "--log", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 5 and "no review log here" in missing.stderr
    bad = run("listen", "--forward", "PACS", "--log", str(tmp_path / "r.sqlite"))
    assert bad.returncode == 2 and "expected AE@host:port" in bad.stderr and "Traceback" not in bad.stderr
    bad_ae = run("listen", "--ae-title", "THIS_IS_TOO_LONG_", "--log", str(tmp_path / "r.sqlite"))
    assert bad_ae.returncode == 2 and "1 to 16 printable ASCII" in bad_ae.stderr
    ReviewLog(tmp_path / "r.sqlite").close()
    empty = run("outbox", "list", "--log", str(tmp_path / "r.sqlite"))
    assert empty.returncode == 0 and "0 pending, 0 sent, 0 failed" in empty.stdout
