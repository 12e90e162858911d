"""`cxr-edge screen` and the review log: one exam per image and model, recorded with its review images.

The same image (sha256 of the file's bytes) screened again with the same model (sha256 of the
.tflite file) is not a new exam: `screen` shows the earlier result, marked as already screened,
and adds no row. Another model (a new version) is a new exam: its result is what is being
compared. Images that were refused or could not be read are not exams: trying again logs the
attempt again (an operator may retry with --any-view, or after fixing the file).
`--no-log` neither reads nor writes the log: every image is screened afresh and nothing is kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from ..decision import Decision
from ..decode_header import read_regular_file
from ..errors import CxrError
from ..names import shown
from .log import ReviewLog
from ..screening import ScreenResult


def read_for_screening(path: Path) -> tuple[bytes | None, str | None]:
    """(the file's bytes, their sha256), read once for both the log lookup and the screening; (None, None)
    when it cannot be read (screen_file then reads it itself and says why, in one line)."""
    try:
        data = read_regular_file(path)
    except CxrError:
        return None, None
    return data, hashlib.sha256(data).hexdigest()


def earlier_result(log: ReviewLog, path: Path, sha256: str | None, model) -> tuple[ScreenResult, dict] | None:
    """(the earlier result as a ScreenResult, its exam row) when the image with this sha256 was screened with
    this model."""
    if sha256 is None:
        return None
    rows = log.query("sha256 = ? AND model_sha256 = ? AND status = 'screened'", (sha256, model.sha256))
    if not rows:
        return None
    row = rows[0]
    decision = Decision(row["decision"], row["abnormality"], row["top_class"], row["probabilities"], row["threshold"])
    result = ScreenResult(shown(path), "screened", model.identity, sha256=sha256, decision=decision,
                          latency_ms=row["latency_ms"] or 0.0, image=row["image"] or {},
                          threshold_source=row["threshold_source"] or "", gate=row.get("gate"),
                          crop=row.get("crop"))
    return result, row


def record_result(log: ReviewLog, result: ScreenResult, source: str) -> int:
    """The result row and its review images (film, heatmap) in one transaction; returns the exam id."""
    with log.transaction() as db:
        exam_id = log.record(result.to_log_row(source), connection=db)
        if result.ok and result.review_images is not None:
            log.save_images(exam_id, *result.review_images, connection=db)
    return exam_id


def marked(result: ScreenResult, row: dict) -> ScreenResult:
    """The earlier result, labelled for the table as already screened."""
    return replace(result, file=f"{result.file} (already screened: exam {row['id']}, "
                                f"{row['created_at'][:16].replace('T', ' ')} UTC)")


def json_record(result: ScreenResult, exam_id: int | None, earlier: dict | None) -> dict:
    """`screen --json` line: the result, its exam id in the log, and whether it was screened before."""
    return {**result.to_json(), "exam_id": exam_id, "already_screened": earlier is not None,
            "screened_at": earlier["created_at"] if earlier else None}
