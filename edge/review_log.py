"""The local review log: one SQLite row per screened (or refused) image, for remote doctor review.

WAL journal and synchronous=FULL: a row that `record` returned is on disk, and a power cut
mid-write leaves the previous state, never a half row.
"""

from __future__ import annotations

import json
import sqlite3
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
"""

COLUMNS = ("created_at", "source", "file", "sha256", "status", "reason_code", "reason", "decision",
           "abnormality", "top_class", "probabilities", "threshold", "threshold_source", "latency_ms",
           "image", "model_name", "model_version", "model_sha256", "notice")
JSON_COLUMNS = ("probabilities", "image")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
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
