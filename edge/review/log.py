"""The local review log: one SQLite row per screened (or refused) image, for remote doctor review.

WAL journal and synchronous=FULL: a row that `record` returned is on disk, and a power cut
mid-write leaves the previous state, never a half row.

Besides `exams`, the log holds what the watcher needs to process each exam exactly once
(`watch_hashes`: one row per content hash, written in the same transaction as the exam row;
`watch_duplicates`: the same content seen again under another name; `watch_seen`: a cache of
files already handled, so a rescan does not re-read them) and `review_images`: the film as read
(grey JPEG, long side <= 1024 px) and its heatmap (RGBA WebP) per screened exam, written in the same
transaction as the exam row, so `cxr-edge review export` works after the originals are moved
(`exam_images`, the 96-256 px thumbnails of older versions, is still read for old exams).

`verdicts` is append-only (SQLite triggers refuse UPDATE and DELETE): every doctor's verdict is
kept with its reviewer and time, the latest one is shown; `models` keeps the metadata of every
model that screened into this log (intended use, known limitations, validation metrics); `bundles` remembers what each exported
bundle held, so an imported verdicts file can be checked; `station` holds this log's station id.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CxrError, ExitCode
from ..names import one_line

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
    gate TEXT,
    crop TEXT,
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
CREATE TABLE IF NOT EXISTS review_images (
    exam_id INTEGER PRIMARY KEY REFERENCES exams (id),
    film BLOB NOT NULL,
    heatmap BLOB,
    heatmap_note TEXT
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exam_id INTEGER NOT NULL REFERENCES exams (id),
    image_sha256 TEXT,
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree')),
    note TEXT,
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    source TEXT NOT NULL,
    bundle_id TEXT,
    key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS verdicts_exam ON verdicts (exam_id);
CREATE TRIGGER IF NOT EXISTS verdicts_append_only_update BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS verdicts_append_only_delete BEFORE DELETE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END;
CREATE TABLE IF NOT EXISTS bundles (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    exams TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    metadata TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS station (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- verdicts typed before the verdicts table existed (one per exam, in the exams row) become its first rows
INSERT OR IGNORE INTO verdicts (exam_id, image_sha256, verdict, note, reviewer, decided_at, recorded_at, source, key)
    SELECT id, sha256, verdict, verdict_note, 'station', verdict_at, verdict_at, 'station', 'legacy:' || id
    FROM exams WHERE verdict IS NOT NULL AND verdict_at IS NOT NULL;
INSERT OR IGNORE INTO station (key, value) VALUES ('station_id', lower(hex(randomblob(16))));
"""

COLUMNS = ("created_at", "source", "file", "sha256", "status", "reason_code", "reason", "decision",
           "abnormality", "top_class", "probabilities", "threshold", "threshold_source", "latency_ms",
           "image", "model_name", "model_version", "model_sha256", "gate", "crop", "notice")
JSON_COLUMNS = ("probabilities", "image", "gate", "crop")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewLog:
    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool | None = False):
        """readonly: open with SQLite's mode=ro. None (commands that only read, like `review list`): read-write
        when allowed, so an older log gets its new tables, else read-only (a log on a read-only medium)."""
        self.path = Path(path)
        if readonly is None:
            readonly = not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        if (readonly or not create) and not self.path.is_file():
            raise CxrError(f"{self.path}: no review log here (nothing screened yet, or another --log?)",
                           code=ExitCode.STORAGE, reason="log_missing")
        try:
            if readonly and self._open_readonly():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self._check_integrity()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            _add_late_columns(self.db)
        except (OSError, sqlite3.Error) as exc:
            raise CxrError(f"{self.path}: review log cannot be opened ({one_line(exc)})", code=ExitCode.STORAGE,
                           reason="log_unwritable") from None

    def _open_readonly(self) -> bool:
        """SQLite mode=ro; False (closed again) when the log is from an older version and needs its new
        tables added first, which the read-write open does."""
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        try:
            self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # A WAL log in a folder we may not write (a read-only copy) cannot get its -shm file. Without a
            # -wal file beside it everything is in the main file, which SQLite can then read as immutable.
            if Path(f"{self.path}-wal").exists():
                raise
            self.db.close()
            self.db = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self._check_integrity()
        present = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)) <= present:
            return True
        self.db.close()
        return False

    def _check_integrity(self) -> None:
        """PRAGMA quick_check at every start: a damaged log stops the station loudly instead of taking
        results that `review list/export` could not give back."""
        try:
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.OperationalError:  # locked, read-only, cannot open: not damage; said by the caller
            raise
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
            problems = [str(exc)]
        if problems != ["ok"]:
            self.db.close()
            raise CxrError(f"{self.path}: review log is damaged ({one_line('; '.join(problems))[:300]}); move it "
                           "aside and restore a backup (a new empty log is started if none is there)",
                           code=ExitCode.STORAGE, reason="log_damaged")

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
        rows = self.query("id = ?", (int(exam_id),)) if 0 < int(exam_id) < 2 ** 63 else []
        if not rows:
            raise CxrError(f"{self.path}: no exam with id {exam_id} in the review log", code=ExitCode.USAGE,
                           reason="unknown_exam")
        return rows[0]

    @property
    def station_id(self) -> str:
        """A random id made when this log was created: it names the station in bundles and verdict files."""
        return self._read("SELECT value FROM station WHERE key = 'station_id'")[0]["value"]

    def remember_model(self, model) -> None:
        """Keep the metadata of a model (a TFLiteModel) that screens into this log, once per sha256."""
        try:
            self.db.execute("INSERT OR IGNORE INTO models (sha256, name, version, metadata, first_seen) "
                            "VALUES (?, ?, ?, ?, ?)", (model.sha256, model.metadata.name, model.metadata.version,
                                                       model.metadata.to_json(), utc_now()))
        except sqlite3.Error as exc:
            raise self._write_error(exc) from None

    def model_metadata(self, sha256: str) -> dict | None:
        rows = self._read("SELECT metadata FROM models WHERE sha256 = ?", (sha256,))
        return json.loads(rows[0]["metadata"]) if rows else None

    def save_images(self, exam_id: int, film: bytes, heatmap: bytes | None, heatmap_note: str | None,
                    *, connection: sqlite3.Connection | None = None) -> None:
        """The exam's review images (edge.review.images.ReviewImages), inside the caller's transaction."""
        (connection or self.db).execute(
            "INSERT OR REPLACE INTO review_images (exam_id, film, heatmap, heatmap_note) VALUES (?, ?, ?, ?)",
            (exam_id, film, heatmap, heatmap_note))

    def images(self, exam_id: int) -> dict | None:
        """{film, heatmap, heatmap_note} of one exam, or None. Exams logged by older versions have only the
        model-input thumbnail (and a heatmap blended into it): shown as the film, without an overlay."""
        row = self._read("SELECT film, heatmap, heatmap_note FROM review_images WHERE exam_id = ?", (int(exam_id),))
        if row:
            return dict(row[0])
        old = self._read("SELECT thumbnail FROM exam_images WHERE exam_id = ?", (int(exam_id),))
        if old:
            return {"film": old[0]["thumbnail"], "heatmap": None,
                    "heatmap_note": "logged by an older cxr-edge, which kept only the model's small input"}
        return None

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


def _add_late_columns(db: sqlite3.Connection) -> None:
    """Logs written before these columns existed get them: `gate` (JSON: the input gate's verdict, scores and
    identity) and `crop` (JSON: what the model's crop did, {"crop": none|borders|lungs|lungs_not_found, "box"})."""
    present = {row[1] for row in db.execute("PRAGMA table_info(exams)")}
    for column in ("gate", "crop"):
        if column not in present:
            db.execute(f"ALTER TABLE exams ADD COLUMN {column} TEXT")


def decode_row(row: sqlite3.Row) -> dict:
    data = dict(row)
    for key in JSON_COLUMNS:
        if data.get(key):
            data[key] = json.loads(data[key])
    return data
