"""Doctors' verdicts: appended, never overwritten, and imported from a bundle's verdicts file.

Every verdict is a row of the append-only `verdicts` table (edge.review.log): exam id, the sha256
of the image judged, agree/disagree with the model's decision, a finding or note, the reviewer,
when it was given and when it reached this log. The one shown in list/export/stats is the latest
by the doctor's time (ties: the later recorded); the others stay.

A verdicts file (saved from a bundle's page) is imported only where it can be checked:
its station id is this log's, its bundle id names a bundle exported from this log, the exam was
in that bundle, and the image sha256 is the one the exam has here and had in the bundle. Each
verdict that fails is refused with its reason; the others are imported. Importing a file twice adds
nothing: each verdict has a key (sha256 of its content) that the table keeps unique.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CxrError, ExitCode
from .log import ReviewLog, utc_now

FORMAT = "cxr-edge-verdicts"
VERDICTS = ("agree", "disagree")
MAX_NOTE = 2000
MAX_REVIEWER = 200


def says_abnormal(exam: dict) -> bool:
    """What an exam's latest verdict says the film was: abnormal = referred and agreed, or called normal and
    disagreed (`review stats` and `calibrate --from-review` read it the same way)."""
    return (exam["decision"] == "refer") == (exam["verdict"] == "agree")


def verdict_key(entry: dict) -> str:
    fields = {k: entry.get(k) for k in ("bundle_id", "exam_id", "image_sha256", "verdict", "note", "reviewer",
                                         "time")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def _insert(log: ReviewLog, db: sqlite3.Connection, entry: dict, source: str) -> bool:
    cursor = db.execute(
        "INSERT OR IGNORE INTO verdicts (exam_id, image_sha256, verdict, note, reviewer, decided_at, recorded_at, "
        "source, bundle_id, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry["exam_id"], entry["image_sha256"], entry["verdict"], entry.get("note") or None, entry["reviewer"],
         _parse_time(entry["time"]) or entry["time"], utc_now(), source, entry.get("bundle_id"), verdict_key(entry)))
    return cursor.rowcount > 0


def append_verdict(log: ReviewLog, exam_id: int, verdict: str, note: str | None, reviewer: str) -> dict:
    """`cxr-edge review verdict` at the station: one more verdict for a screened exam. Returns the exam row."""
    exam = log.exam(exam_id)
    if exam["status"] != "screened":
        raise CxrError(f"exam {exam_id} was not screened ({exam['status']}: {exam['reason_code']}); "
                       "there is no model output to agree or disagree with", code=ExitCode.USAGE,
                       reason="not_screened")
    if verdict not in VERDICTS:
        raise CxrError(f"verdict must be agree or disagree, not {verdict!r}", code=ExitCode.USAGE,
                       reason="bad_option")
    if not reviewer.strip():
        raise CxrError("--reviewer must name who gives the verdict", code=ExitCode.USAGE, reason="bad_option")
    entry = {"exam_id": exam["id"], "image_sha256": exam["sha256"], "verdict": verdict, "note": note,
             "reviewer": reviewer.strip(), "time": utc_now(), "bundle_id": None}
    with log.transaction() as db:
        _insert(log, db, entry, "station")
    return exam


def all_verdicts(log: ReviewLog) -> dict[int, list[dict]]:
    """exam id -> its verdicts, oldest first by the doctor's time (the last one is the one shown)."""
    rows = log.db.execute("SELECT exam_id, image_sha256, verdict, note, reviewer, decided_at, recorded_at, source, "
                          "bundle_id FROM verdicts ORDER BY decided_at, id").fetchall()
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(row["exam_id"], []).append(dict(row))
    return out


def register_bundle(log: ReviewLog, exams: list[dict]) -> str:
    """Remember which screened exams (id -> image sha256) a new bundle holds; returns its id."""
    bundle_id = uuid.uuid4().hex
    content = json.dumps({str(e["id"]): e["sha256"] for e in exams}, sort_keys=True)
    with log.transaction() as db:
        db.execute("INSERT INTO bundles (id, created_at, exams) VALUES (?, ?, ?)", (bundle_id, utc_now(), content))
    return bundle_id


@dataclass
class ImportReport:
    added: int = 0
    already: int = 0
    refused: list[str] = field(default_factory=list)

    def summary(self, path: Path) -> str:
        return (f"{path}: {self.added} verdicts imported, {self.already} already present, "
                f"{len(self.refused)} refused")


def _read_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{path}: verdicts file not found", code=ExitCode.USAGE, reason="not_found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: not a verdicts file ({exc})", code=ExitCode.USAGE,
                       reason="bad_verdicts_file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("verdicts"), list):
        raise CxrError(f"{path}: not a verdicts file (saved from a cxr-edge review bundle's page)",
                       code=ExitCode.USAGE, reason="bad_verdicts_file")
    return data


def _parse_time(value) -> str | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _check(log: ReviewLog, entry, bundles: dict, exams: dict) -> str | None:
    """None when the verdict can be imported, else why not."""
    if not isinstance(entry, dict):
        return "not a verdict record"
    if entry.get("station_id") != log.station_id:
        return (f"for station {entry.get('station_id')!r}, not this one ({log.station_id}): "
                "import it at the station that exported the bundle")
    bundle_id = entry.get("bundle_id")
    if bundle_id not in bundles:
        row = log.db.execute("SELECT exams FROM bundles WHERE id = ?", (str(bundle_id),)).fetchone()
        bundles[bundle_id] = json.loads(row["exams"]) if row else None
    if bundles[bundle_id] is None:
        return f"bundle {bundle_id!r} was not exported from this log"
    exam_id = entry.get("exam_id")
    if str(exam_id) not in bundles[bundle_id]:
        return f"exam {exam_id!r} was not in bundle {bundle_id}"
    exam = exams.get(exam_id)
    if exam is None:
        rows = log.query("id = ?", (int(exam_id),))
        exam = exams[exam_id] = rows[0] if rows else {}
    if not exam:
        return f"exam {exam_id} is not in this log"
    if entry.get("image_sha256") != bundles[bundle_id][str(exam_id)] or entry.get("image_sha256") != exam["sha256"]:
        return (f"image sha256 {str(entry.get('image_sha256'))[:12]}... is not the exam's "
                f"({str(exam['sha256'])[:12]}...): the exam changed since the bundle")
    if exam["status"] != "screened":
        return f"exam {exam_id} was not screened"
    if entry.get("verdict") not in VERDICTS:
        return f"verdict {entry.get('verdict')!r} is not agree or disagree"
    reviewer = entry.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > MAX_REVIEWER:
        return "no reviewer name"
    note = entry.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        return f"note is not text of at most {MAX_NOTE} characters"
    if _parse_time(entry.get("time")) is None:
        return f"time {entry.get('time')!r} is not an ISO date/time with a time zone"
    return None


def import_verdicts(log: ReviewLog, path: Path) -> ImportReport:
    """Validate and append every verdict of a verdicts file, in one transaction."""
    data = _read_file(path)
    report, bundles, exams = ImportReport(), {}, {}
    accepted = []
    for number, entry in enumerate(data["verdicts"], 1):
        problem = _check(log, entry, bundles, exams)
        if problem:
            exam = entry.get("exam_id") if isinstance(entry, dict) else None
            report.refused.append(f"verdict {number} (exam {exam}): refused: {problem}")
        else:
            accepted.append({**entry, "reviewer": entry["reviewer"].strip(), "note": entry.get("note") or None})
    with log.transaction() as db:
        for entry in accepted:
            if _insert(log, db, entry, "import"):
                report.added += 1
            else:
                report.already += 1
    return report
