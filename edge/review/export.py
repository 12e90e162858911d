"""`cxr-edge review export OUT`: a small self-contained bundle for a remote doctor.

OUT/index.html: one page, inline CSS and script, pictures as data: URIs (no external file, font,
library or CDN). Each referred exam (every screened one with --all) shows the film as read, large
enough to read, with its heatmap as an overlay toggle; the score, class probabilities, threshold
and its source, the model's name, version and sha256, its intended use and known limitations,
the screening notice, earlier verdicts and a verdict form. The doctor marks agree/disagree and a
finding or note, offline, and "Save verdicts" downloads a verdicts JSON file that
`cxr-edge review import` applies at the station. Then the programme monitoring (`review stats`)
as inline SVG plots, and the exams that were not screened with their reasons.
OUT/records.jsonl: the JSON record of every exam in the selection (as `review list --json`).

Every export gets a new bundle id, recorded in the log with the image sha256 of each exam it
shows, so an imported verdict can be checked against what the doctor saw. No patient identifier
is written: no file name or path (they can carry a patient's name), only exam ids, hashes, times and pixels.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from string import Template

from ..errors import CxrError, ExitCode
from . import select_exams
from .page import exam_html, models_html, not_screened_html, stats_html, without_file
from .stats import model_metadata, programme_stats
from .verdicts import register_bundle
from .log import ReviewLog


PRIVATE = ("file", "moved_to", "duplicates")


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _template() -> Template:
    return Template(resources.files("edge.review").joinpath("export.html").read_text(encoding="utf-8"))


def _script_json(data: dict) -> str:
    """JSON safe inside <script type="application/json">: no "</" can close the element."""
    return json.dumps(data, sort_keys=True).replace("</", "<\\/")


def export_bundle(log: ReviewLog, out: Path, *, since: str | None = None, include_all: bool = False) -> str:
    """Write OUT/index.html and OUT/records.jsonl; returns a one-line summary with the bundle's size."""
    exams = select_exams(log, since=since)
    screened = [e for e in exams if e["status"] == "screened"]
    referred = [e for e in screened if e["decision"] == "refer"]
    not_screened = [e for e in exams if e["status"] != "screened"]
    shown = screened if include_all else referred
    models = {e["model"]["sha256"]: e["model"] for e in screened if e["model"]["sha256"]}
    metas = {sha: model_metadata(log, sha) for sha in models}
    bundle_id = register_bundle(log, shown)
    station_id = log.station_id
    heading = "Screened exams" if include_all else "Referred exams"
    page = _template().substitute(
        generated=_e(datetime.now(timezone.utc).isoformat(timespec="seconds")),
        station_id=_e(station_id), bundle_id=_e(bundle_id),
        period=f", exams since {_e(since)}" if since else "",
        count_screened=len(screened), count_referred=len(referred), count_normal=len(screened) - len(referred),
        count_quarantined=len(not_screened), count_shown=len(shown),
        heading=heading, heading_lower=heading.lower(),
        models=models_html(models, metas),
        exams="\n".join(exam_html(e, log.images(e["id"]), metas.get(e["model"]["sha256"])) for e in shown)
        or "<p class=\"meta\">None.</p>",
        stats=stats_html(programme_stats(log, since=since)),
        quarantined=not_screened_html(not_screened),
        bundle_json=_script_json({"bundle_id": bundle_id, "station_id": station_id,
                                  "exams": {str(e["id"]): e["sha256"] for e in shown}}),
    )
    records = "".join(json.dumps(_anonymous(e, bundle_id, station_id), sort_keys=True) + "\n" for e in exams)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "index.html", page)
        _write(out / "records.jsonl", records)
    except OSError as exc:
        raise CxrError(f"{out}: cannot write the review bundle ({exc.strerror or exc})", code=ExitCode.STORAGE,
                       reason="export_unwritable") from None
    size = sum((out / n).stat().st_size for n in ("index.html", "records.jsonl"))
    return (f"wrote {out / 'index.html'} and records.jsonl (bundle {bundle_id}): {len(shown)} "
            f"{'screened' if include_all else 'referred'} exams shown, {len(exams)} records, {size / 1024:.0f} KiB")


def _anonymous(exam: dict, bundle_id: str, station_id: str) -> dict:
    """An exam's record for the bundle: no file name or path (they can carry a patient's name); the station
    finds the file from the exam id with `cxr-edge review list`."""
    record = {k: v for k, v in exam.items() if k not in PRIVATE}
    record["reason"] = without_file(exam["reason"], exam["file"])
    return {**record, "bundle_id": bundle_id, "station_id": station_id}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
