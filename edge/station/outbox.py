"""The outbox: DICOM result objects waiting to be sent to the PACS, kept in the review log (SQLite).

One row per (exam, kind, destination): the encoded object (SR or Secondary Capture) is built once,
stored with its SOP Instance UID and sent by a background worker. A row is marked `sent` only after
the PACS answered Success (or a Warning, which is still a store); until then it stays `pending`
with a wall-clock `next_attempt_at`, so a restart or a PACS offline for days keeps its place in the
queue. The object's bytes, hence its SOP Instance UID, never change between attempts: a PACS that
stored an object whose response was lost in a crash dedupes the re-send. After a Success the bytes
are dropped (the PACS has them); the row stays as the delivery record.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ..errors import CxrError, ExitCode
from ..review.log import ReviewLog, utc_now

KINDS = ("sr", "sc")
STATUSES = ("pending", "sent", "failed")
FIRST_DELAY = 5.0  # seconds before the first retry; doubles up to `max_delay`
MAX_DELAY = 600.0
MAX_REFUSALS = 5  # times the PACS may answer a failure status before the row is marked failed

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exam_id INTEGER NOT NULL REFERENCES exams (id),
    kind TEXT NOT NULL CHECK (kind IN ('sr', 'sc')),
    destination TEXT NOT NULL,
    sop_class_uid TEXT,
    sop_instance_uid TEXT,
    study_instance_uid TEXT,
    dataset BLOB,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    refusals INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    UNIQUE (exam_id, kind, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS outbox_state (
    destination TEXT PRIMARY KEY,
    forward_from INTEGER NOT NULL
);
"""

LIST_COLUMNS = ("id", "exam_id", "kind", "destination", "status", "attempts", "next_attempt_at", "last_error",
                "sop_instance_uid", "study_instance_uid", "created_at", "sent_at")


@dataclass
class Item:
    id: int
    exam_id: int
    kind: str
    destination: str
    sop_instance_uid: str
    dataset: bytes
    attempts: int
    refusals: int


def open_outbox(log: ReviewLog) -> ReviewLog:
    """Create the outbox tables in an open review log (idempotent)."""
    try:
        log.db.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise CxrError(f"{log.path}: cannot create the outbox tables ({exc})", code=ExitCode.STORAGE,
                       reason="log_unwritable") from None
    return log


def backoff(attempts: int, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> float:
    """Seconds to wait after `attempts` failed attempts: first, 2*first, 4*first ... capped."""
    return min(cap, first * (2 ** max(0, attempts - 1)))


def forward_from(log: ReviewLog, destination: str) -> int:
    """The first exam id to forward to this destination: fixed when forwarding to it first starts, so
    exams recorded before (with no destination configured) are not sent, and exams recorded while the
    station was down (after a crash) are."""
    with log.transaction() as db:
        row = db.execute("SELECT forward_from FROM outbox_state WHERE destination = ?", (destination,)).fetchone()
        if row is not None:
            return int(row[0])
        first = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM exams").fetchone()[0])
        db.execute("INSERT INTO outbox_state (destination, forward_from) VALUES (?, ?)", (destination, first))
        return first


def exams_to_build(log: ReviewLog, destination: str, first_id: int, limit: int = 16) -> list[dict]:
    """Screened DICOM exams from `first_id` on that have no outbox rows for this destination yet."""
    rows = log.db.execute(
        "SELECT e.*, h.moved_to FROM exams e LEFT JOIN watch_hashes h ON h.exam_id = e.id "
        "WHERE e.id >= ? AND e.status = 'screened' AND json_extract(e.image, '$.kind') = 'dicom' "
        "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.exam_id = e.id AND o.destination = ?) "
        "ORDER BY e.id LIMIT ?", (first_id, destination, limit)).fetchall()
    return [dict(r) for r in rows]


def enqueue(log: ReviewLog, exam_id: int, destination: str, objects: list[tuple[str, object]]) -> None:
    """Store built objects (kind, pydicom Dataset) as pending, in one transaction."""
    from pydicom.filebase import DicomBytesIO

    now = time.time()
    with log.transaction() as db:
        for kind, ds in objects:
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            db.execute("INSERT OR IGNORE INTO outbox (exam_id, kind, destination, sop_class_uid, sop_instance_uid, "
                       "study_instance_uid, dataset, status, next_attempt_at, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                       (exam_id, kind, destination, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                        str(ds.StudyInstanceUID), buffer.getvalue(), now, utc_now()))


def record_build_failure(log: ReviewLog, exam_id: int, destination: str, reason: str) -> None:
    """The results of this exam cannot be built (source file gone, unreadable): visible as failed."""
    with log.transaction() as db:
        for kind in KINDS:
            db.execute("INSERT OR IGNORE INTO outbox (exam_id, kind, destination, status, next_attempt_at, "
                       "last_error, created_at) VALUES (?, ?, ?, 'failed', ?, ?, ?)",
                       (exam_id, kind, destination, time.time(), reason, utc_now()))


def due(log: ReviewLog, destination: str, limit: int = 32) -> list[Item]:
    rows = log.db.execute(
        "SELECT id, exam_id, kind, destination, sop_instance_uid, dataset, attempts, refusals FROM outbox "
        "WHERE status = 'pending' AND destination = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        (destination, time.time(), limit)).fetchall()
    return [Item(*row) for row in rows]


def mark_sent(log: ReviewLog, item: Item) -> None:
    with log.transaction() as db:
        db.execute("UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1, dataset = NULL, "
                   "last_error = NULL WHERE id = ? AND status = 'pending'", (utc_now(), item.id))


def mark_unsent(log: ReviewLog, item: Item, error: str, *, refused: bool, first: float, cap: float) -> str:
    """One failed attempt. Unreachable PACS: retried for ever with capped back-off. A PACS that received
    the object and refused it: retried MAX_REFUSALS times, then failed. Returns the new status."""
    attempts = item.attempts + 1
    refusals = item.refusals + (1 if refused else 0)
    status = "failed" if refusals >= MAX_REFUSALS else "pending"
    with log.transaction() as db:
        db.execute("UPDATE outbox SET status = ?, attempts = ?, refusals = ?, next_attempt_at = ?, last_error = ? "
                   "WHERE id = ? AND status = 'pending'",
                   (status, attempts, refusals, time.time() + backoff(attempts, first, cap), error, item.id))
    return status


def listing(log: ReviewLog, status: str | None = None) -> list[dict]:
    where, params = ("WHERE status = ?", (status,)) if status else ("", ())
    return [dict(r) for r in log._read(f"SELECT {', '.join(LIST_COLUMNS)} FROM outbox {where} ORDER BY id", params)]


def retry_now(log: ReviewLog, ids: list[int] | None = None) -> int:
    """Failed rows that still hold their object become pending again, and every pending row is due now.
    Failed rows without an object (it could not be built) are removed, so the worker builds them again."""
    selector, params = ("AND id IN (%s)" % ",".join("?" * len(ids)), tuple(ids)) if ids else ("", ())
    with log.transaction() as db:
        changed = db.execute(f"UPDATE outbox SET status = 'pending', refusals = 0, next_attempt_at = ? "
                             f"WHERE status IN ('pending', 'failed') AND dataset IS NOT NULL {selector}",
                             (time.time(), *params)).rowcount
        changed += db.execute(f"DELETE FROM outbox WHERE status = 'failed' AND dataset IS NULL {selector}",
                              params).rowcount
    return changed
