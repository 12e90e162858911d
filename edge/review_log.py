"""The local review log: one SQLite row per screened (or refused) image, for remote doctor review.

WAL journal and synchronous=FULL: a row that `record` returned is on disk, and a power cut
mid-write leaves the previous state, never a half row.

Besides `exams`, the log holds what the watcher needs to process each exam exactly once
(`watch_hashes`: one row per content hash, written in the same transaction as the exam row;
`watch_duplicates`: the same content seen again under another name; `watch_seen`: a cache of
files already handled, so a rescan does not re-read them) and `exam_images`: a small thumbnail
and heatmap per screened exam, so `cxr-edge review export` works after the originals are moved.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import CxrError, ExitCode

NOTICE = "screening aid, not a diagnosis"
STATUSES = ("screened", "refused", "failed", "quarantined")

SCHEMA = """
CREATE TABLE IF NOT EXISTS exams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL CHECK (status IN ('screened', 'refused', 'failed', 'quarantined')),
    reason_code TEXT,
    reason TEXT,
    decision TEXT CHECK (decision IS NULL OR decision IN ('refer', 'normal')),
    abnormality REAL,
    top_class TEXT,
    probabilities TEXT,
    threshold REAL,
    threshold_source TEXT,
    latency_ms REAL,
    image TEXT,
    model_name TEXT,
    model_version TEXT,
    model_sha256 TEXT,
    notice TEXT NOT NULL,
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('agree', 'disagree')),
    verdict_note TEXT,
    verdict_at TEXT
);
CREATE INDEX IF NOT EXISTS exams_sha256 ON exams (sha256);
CREATE INDEX IF NOT EXISTS exams_created ON exams (created_at);
CREATE TABLE IF NOT EXISTS watch_hashes (
    sha256 TEXT PRIMARY KEY,
    exam_id INTEGER NOT NULL UNIQUE REFERENCES exams (id),
    moved_to TEXT
);
CREATE TABLE IF NOT EXISTS watch_duplicates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exam_id INTEGER NOT NULL REFERENCES exams (id),
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    moved_to TEXT,
    UNIQUE (file, sha256)
);
CREATE TABLE IF NOT EXISTS watch_seen (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exam_images (
    exam_id INTEGER PRIMARY KEY REFERENCES exams (id),
    thumbnail BLOB NOT NULL,
    heatmap BLOB,
    heatmap_note TEXT
);
"""

COLUMNS = ("created_at", "source", "file", "sha256", "status", "reason_code", "reason", "decision",
           "abnormality", "top_class", "probabilities", "threshold", "threshold_source", "latency_ms",
           "image", "model_name", "model_version", "model_sha256", "notice")
JSON_COLUMNS = ("probabilities", "image")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewLog:
    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CxrError(f"{self.path}: no review log here (nothing screened yet, or another --log?)",
                           code=ExitCode.STORAGE, reason="log_missing")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CxrError(f"{self.path}: review log cannot be opened ({exc})", code=ExitCode.STORAGE,
                           reason="log_unwritable") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ReviewLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record(self, row: dict, *, connection: sqlite3.Connection | None = None) -> int:
        """Insert one exam row (keys from COLUMNS; JSON columns may be dicts). Returns its id."""
        values = {**row}
        values.setdefault("created_at", utc_now())
        values.setdefault("notice", NOTICE)
        for key in JSON_COLUMNS:
            if values.get(key) is not None and not isinstance(values[key], str):
                values[key] = json.dumps(values[key], sort_keys=True)
        names = [c for c in COLUMNS if c in values]
        sql = f"INSERT INTO exams ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        try:
            cursor = (connection or self.db).execute(sql, [values[c] for c in names])
        except sqlite3.Error as exc:
            raise CxrError(f"{self.path}: cannot write to review log ({exc})", code=ExitCode.STORAGE,
                           reason="log_unwritable") from None
        return int(cursor.lastrowid)

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: everything inside lands together or not at all."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from None
        try:
            yield self.db
        except BaseException:
            self._rollback()
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._write_error(exc) from None

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            self.db.execute("ROLLBACK")

    def _write_error(self, exc: Exception) -> CxrError:
        return CxrError(f"{self.path}: cannot write to review log ({exc})", code=ExitCode.STORAGE,
                        reason="log_unwritable")

    def exam(self, exam_id: int) -> dict:
        rows = self.query("id = ?", (int(exam_id),))
        if not rows:
            raise CxrError(f"{self.path}: no exam with id {exam_id} in the review log", code=ExitCode.USAGE,
                           reason="unknown_exam")
        return rows[0]

    def set_verdict(self, exam_id: int, verdict: str, note: str | None = None) -> dict:
        """Record a doctor's verdict on the model's output of one screened exam; returns the row."""
        exam = self.exam(exam_id)
        if exam["status"] != "screened":
            raise CxrError(f"exam {exam_id} was not screened ({exam['status']}: {exam['reason_code']}); "
                           "there is no model output to agree or disagree with", code=ExitCode.USAGE,
                           reason="not_screened")
        if verdict not in ("agree", "disagree"):
            raise CxrError(f"verdict must be agree or disagree, not {verdict!r}", code=ExitCode.USAGE,
                           reason="bad_option")
        try:
            self.db.execute("UPDATE exams SET verdict = ?, verdict_note = ?, verdict_at = ? WHERE id = ?",
                            (verdict, note, utc_now(), int(exam_id)))
        except sqlite3.Error as exc:
            raise self._write_error(exc) from None
        return self.exam(exam_id)

    def save_images(self, exam_id: int, thumbnail: bytes, heatmap: bytes | None, heatmap_note: str | None,
                    *, connection: sqlite3.Connection | None = None) -> None:
        (connection or self.db).execute(
            "INSERT OR REPLACE INTO exam_images (exam_id, thumbnail, heatmap, heatmap_note) VALUES (?, ?, ?, ?)",
            (exam_id, thumbnail, heatmap, heatmap_note))

    def images(self, exam_id: int) -> dict | None:
        row = self._read("SELECT thumbnail, heatmap, heatmap_note FROM exam_images WHERE exam_id = ?",
                         (int(exam_id),))
        return dict(row[0]) if row else None

    def duplicates(self, exam_id: int) -> list[str]:
        return [r["file"] for r in self._read("SELECT file FROM watch_duplicates WHERE exam_id = ? ORDER BY id",
                                              (int(exam_id),))]

    def moved_to(self, exam_id: int) -> str | None:
        rows = self._read("SELECT moved_to FROM watch_hashes WHERE exam_id = ?", (int(exam_id),))
        return rows[0]["moved_to"] if rows else None

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CxrError(f"{self.path}: cannot read review log ({exc})", code=ExitCode.STORAGE,
                           reason="log_unreadable") from None

    def query(self, where: str = "1=1", params: tuple = (), order: str = "id") -> list[dict]:
        try:
            rows = self.db.execute(f"SELECT * FROM exams WHERE {where} ORDER BY {order}", params).fetchall()
        except sqlite3.Error as exc:
            raise CxrError(f"{self.path}: cannot read review log ({exc})", code=ExitCode.STORAGE,
                           reason="log_unreadable") from None
        return [decode_row(row) for row in rows]


def decode_row(row: sqlite3.Row) -> dict:
    data = dict(row)
    for key in JSON_COLUMNS:
        if data.get(key):
            data[key] = json.loads(data[key])
    return data
