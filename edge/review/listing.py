"""`cxr-edge review`: what a remote doctor reads from the review log (list, export) and writes back (verdict)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import CxrError, ExitCode
from ..names import shown_name
from .log import NOTICE, ReviewLog
from .verdicts import all_verdicts

RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> str:
    """'30m', '12h', '7d', '2w' (ago), or an ISO date/time (local time unless it has an offset) ->
    the UTC ISO timestamp the log's created_at column is compared with."""
    now = now or datetime.now(timezone.utc)
    match = RELATIVE.match(text)
    try:
        if match:
            moment = now - timedelta(**{UNITS[match.group(2).lower()]: float(match.group(1))})
        else:
            moment = datetime.fromisoformat(text.strip())
            if moment.tzinfo is None:
                moment = moment.astimezone()  # a technician's "since 8:00" means local time
        return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError):  # not a date, or before year 1 / after 9999 once converted
        raise CxrError(f"--since {text!r}: not a date/time that can be used; use an ISO date/time from year 2 to "
                       "9998 (2024-05-01, 2024-05-01T08:00) or an age (30m, 12h, 7d, 2w)", code=ExitCode.USAGE,
                       reason="bad_option") from None


def select_exams(log: ReviewLog, *, referred: bool = False, since: str | None = None,
                 statuses: tuple[str, ...] | None = None) -> list[dict]:
    where, params = ["1=1"], []
    if referred:
        where.append("status = 'screened' AND decision = 'refer'")
    if since:
        where.append("created_at >= ?")
        params.append(parse_since(since))
    if statuses:
        where.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params.extend(statuses)
    verdicts = all_verdicts(log)
    return [exam_record(log, row, verdicts.get(row["id"], []))
            for row in log.query(" AND ".join(where), tuple(params))]


def exam_record(log: ReviewLog, row: dict, verdicts: list[dict]) -> dict:
    """One exam as `review list --json` and the export's records.jsonl show it; `verdict` is the latest of
    its `verdicts` (oldest first, none erased)."""
    latest = verdicts[-1] if verdicts else {}
    return {
        "id": row["id"],
        "created_at": row["created_at"],
        "source": row["source"],
        "file": row["file"],
        "sha256": row["sha256"],
        "status": row["status"],
        "decision": row["decision"],
        "abnormality": row["abnormality"],
        "top_class": row["top_class"],
        "probabilities": row["probabilities"],
        "threshold": row["threshold"],
        "threshold_source": row["threshold_source"],
        "reason_code": row["reason_code"],
        "reason": row["reason"],
        "image": row["image"],
        "gate": row.get("gate"),
        "crop": row.get("crop"),
        "duplicates": log.duplicates(row["id"]),
        "moved_to": log.moved_to(row["id"]),
        "verdict": latest.get("verdict"),
        "verdict_note": latest.get("note"),
        "verdict_at": latest.get("decided_at"),
        "verdict_by": latest.get("reviewer"),
        "verdicts": verdicts,
        "model": {"name": row["model_name"], "version": row["model_version"], "sha256": row["model_sha256"]},
        "notice": row["notice"] or NOTICE,
    }


def print_exam_table(exams: list[dict], log_path: str) -> None:
    console = Console()
    table = Table(title=f"cxr-edge review log {escape(log_path)}", title_justify="left")
    table.add_column("Id", justify="right", no_wrap=True)
    table.add_column("Time (UTC)", no_wrap=True)
    table.add_column("File", overflow="fold", ratio=1)
    table.add_column("Result", overflow="fold")
    table.add_column("Verdict", overflow="fold")
    for e in exams:
        if e["status"] == "screened":
            style = "bold red" if e["decision"] == "refer" else "green"
            result = f"[{style}]{e['decision']}[/] {e['abnormality']:.3f} {escape(e['top_class'] or '')}"
        else:
            result = f"[yellow]{e['status']}[/] {escape(e['reason_code'] or '')}"
        verdict = escape(f"{e['verdict']} ({e['verdict_by']})" if e["verdict"] else "")
        if len(e["verdicts"]) > 1:
            verdict += f" [{len(e['verdicts'])} verdicts]"
        table.add_row(str(e["id"]), e["created_at"][:16].replace("T", " "), escape(shown_name(e["file"])),
                      result, verdict)
    console.print(table)
    console.print(f"{len(exams)} exams (full paths and probabilities: --json). {NOTICE.capitalize()}.",
                  highlight=False)
