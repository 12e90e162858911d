"""The watcher's side of the review log: exactly-once by content hash, duplicates, moves.

One transaction writes the exam row, its content hash (primary key: a second result for the
same bytes cannot be inserted), its thumbnail/heatmap and the "seen" cache entry. So after a
kill -9 or a power cut an exam is either fully recorded or not at all, and a restarted watcher
simply processes again whatever was not recorded.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..names import shown
from ..review.log import ReviewLog, utc_now

RESCREENABLE = ("internal_error", "unsupported_compression")  # causes fixed on the station's side


@dataclass
class KnownContent:
    exam_id: int
    file: str  # the file the exam was recorded from
    status: str
    moved_to: str | None


class WatchStore:
    def __init__(self, log: ReviewLog):
        self.log = log

    def seen(self, path: Path, size: int, mtime_ns: int) -> str | None:
        """The status (screened/quarantined) recorded for this exact file (path, size, mtime), if any:
        then it needs no reading, unless it is still to be moved."""
        row = self.log.db.execute("SELECT status FROM watch_seen WHERE path = ? AND size = ? AND mtime_ns = ?",
                                  (shown(path), size, mtime_ns)).fetchone()
        return row[0] if row else None

    def known(self, sha256: str, model_sha256s: list[str] = ()) -> KnownContent | None:
        """The exam this content was recorded as; with model_sha256s, also an exam `cxr-edge screen` recorded
        for the same image with one of these models (then this file is a duplicate of it, not a new exam)."""
        row = self.log.db.execute(
            "SELECT h.exam_id, e.file, e.status, h.moved_to FROM watch_hashes h JOIN exams e ON e.id = h.exam_id "
            "WHERE h.sha256 = ?", (sha256,)).fetchone()
        if row is None and model_sha256s:
            row = self.log.db.execute(
                "SELECT id, file, status, NULL FROM exams WHERE sha256 = ? AND model_sha256 IN "
                f"({', '.join('?' * len(model_sha256s))}) AND status = 'screened' ORDER BY id LIMIT 1",
                (sha256, *model_sha256s)).fetchone()
        return KnownContent(row[0], row[1], row[2], row[3]) if row else None

    def record_exam(self, row: dict, sha256: str, stat: tuple[Path, int, int],
                    images: tuple[bytes, bytes | None, str | None] | None = None) -> int | None:
        """Exam row + hash + images + seen, atomically. None when this content was recorded meanwhile."""
        try:
            with self.log.transaction() as db:
                if db.execute("SELECT 1 FROM watch_hashes WHERE sha256 = ?", (sha256,)).fetchone():
                    return None
                exam_id = self.log.record(row, connection=db)
                db.execute("INSERT INTO watch_hashes (sha256, exam_id) VALUES (?, ?)", (sha256, exam_id))
                if images is not None:
                    self.log.save_images(exam_id, *images, connection=db)
                self._seen(db, stat, sha256, row["status"])
                return exam_id
        except sqlite3.IntegrityError:
            return None

    def record_duplicate(self, known: KnownContent, path: Path, sha256: str, stat: tuple[Path, int, int]) -> bool:
        """Note the same content under another name. False when this name was already noted."""
        with self.log.transaction() as db:
            cursor = db.execute("INSERT OR IGNORE INTO watch_duplicates (exam_id, file, sha256, created_at) "
                                "VALUES (?, ?, ?, ?)", (known.exam_id, shown(path), sha256, utc_now()))
            self._seen(db, stat, sha256, known.status)
            return cursor.rowcount > 0

    def mark_seen(self, stat: tuple[Path, int, int], sha256: str, status: str) -> None:
        with self.log.transaction() as db:
            self._seen(db, stat, sha256, status)

    def note_move(self, sha256: str, source: Path, destination: Path) -> None:
        with self.log.transaction() as db:
            db.execute("UPDATE watch_hashes SET moved_to = ? WHERE sha256 = ? AND exam_id IN "
                       "(SELECT id FROM exams WHERE file = ?)", (shown(destination), sha256, shown(source)))
            db.execute("UPDATE watch_duplicates SET moved_to = ? WHERE sha256 = ? AND file = ?",
                       (shown(destination), sha256, shown(source)))
            db.execute("DELETE FROM watch_seen WHERE path = ?", (shown(source),))

    def forget_failed(self, reasons: tuple[str, ...] = RESCREENABLE) -> int:
        """`watch --rescreen-failed`: quarantines for these reasons no longer mark their content as done,
        so it is screened again (a new exam row; the old row stays as history). A quarantined file that
        was moved to --move-failed is moved back to where it was found. Returns how many were forgotten."""
        marks = ", ".join("?" for _ in reasons)
        rows = self.log.db.execute(
            f"SELECT h.sha256, e.file, h.moved_to FROM watch_hashes h JOIN exams e ON e.id = h.exam_id "
            f"WHERE e.status = 'quarantined' AND e.reason_code IN ({marks})", reasons).fetchall()
        with self.log.transaction() as db:
            for sha256, _, _ in rows:
                db.execute("DELETE FROM watch_hashes WHERE sha256 = ?", (sha256,))
                db.execute("DELETE FROM watch_seen WHERE sha256 = ?", (sha256,))
        for _, file, moved_to in rows:
            original, moved = Path(file), Path(moved_to) if moved_to else None
            if moved is not None and moved.is_file() and not original.exists() and original.parent.is_dir():
                shutil.move(moved, original)  # names shown escaped (not UTF-8) stay in --move-failed
        return len(rows)

    @staticmethod
    def _seen(db: sqlite3.Connection, stat: tuple[Path, int, int], sha256: str, status: str) -> None:
        path, size, mtime_ns = stat
        db.execute("INSERT OR REPLACE INTO watch_seen (path, size, mtime_ns, sha256, status) VALUES (?, ?, ?, ?, ?)",
                   (shown(path), size, mtime_ns, sha256, status))
