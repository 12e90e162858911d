"""`cxr-edge review export OUT`: a small self-contained bundle for a remote doctor.

OUT/index.html: one page, inline CSS, pictures as data: URIs (no external file, font or script),
with each referred exam's thumbnail, heatmap overlay (when the model provides one), abnormality
score and class probabilities, the model's identity and the screening notice.
OUT/records.jsonl: the JSON record of every exam in the selection (as `review list --json`).
Thumbnails come from the log (stored at screening time), so the originals may have been moved.
"""

from __future__ import annotations

import base64
import html
import json
import os
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from string import Template

from .errors import CxrError, ExitCode
from .review import select_exams
from .review_log import ReviewLog



def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _template() -> Template:
    return Template(resources.files("edge").joinpath("review_export.html").read_text(encoding="utf-8"))


def _models_html(exams: list[dict]) -> str:
    seen = {}
    for e in exams:
        m = e["model"]
        if m["sha256"]:
            seen.setdefault(m["sha256"], m)
    if not seen:
        return "<p class=\"meta\">No screened exam in this selection.</p>"
    rows = "".join(f"<tr><td>{_e(m['name'])}</td><td>{_e(m['version'])}</td><td><code>{_e(sha)}</code></td></tr>"
                   for sha, m in seen.items())
    return f"<table><tr><th>name</th><th>version</th><th>sha256</th></tr>{rows}</table>"


def _probabilities_html(probabilities: dict | None) -> str:
    if not probabilities:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{p:.3f}</td><td><div class=\"bar\"><span style=\"width:{100 * p:.1f}%\">"
        f"</span></div></td></tr>" for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]))
    return f"<table class=\"probs\"><tr><th>class</th><th>probability</th><th></th></tr>{rows}</table>"


def _exam_html(exam: dict, images: dict | None) -> str:
    name = os.path.basename(exam["file"])
    if images and images.get("thumbnail"):
        thumb = (f"<figure><img class=\"thumb\" alt=\"exam {exam['id']} as the model saw it\" "
                 f"src=\"{_data_uri(images['thumbnail'])}\"><figcaption>as the model saw it</figcaption></figure>")
    else:
        thumb = "<figure><div class=\"noheat\">no thumbnail stored</div></figure>"
    if images and images.get("heatmap"):
        heat = (f"<figure><img class=\"heatmap\" alt=\"exam {exam['id']} heatmap\" "
                f"src=\"{_data_uri(images['heatmap'])}\"><figcaption>heatmap: {_e(images.get('heatmap_note'))}"
                "</figcaption></figure>")
    else:
        note = (images or {}).get("heatmap_note") or "the model provides none"
        heat = f"<figure><div class=\"noheat\">No heatmap available: {_e(note)}.</div></figure>"
    verdict = ""
    if exam["verdict"]:
        verdict = (f"<p class=\"verdict\">Doctor's verdict: {_e(exam['verdict'])} ({_e(exam['verdict_at'])})"
                   f"{': ' + _e(exam['verdict_note']) if exam['verdict_note'] else ''}</p>")
    dups = ""
    if exam["duplicates"]:
        dups = f"<p class=\"hint\">Same file also received as: {_e(', '.join(exam['duplicates']))}</p>"
    m = exam["model"]
    kind = "normal" if exam["decision"] == "normal" else "refer"
    return f"""<section class="exam {kind}" id="exam-{exam['id']}" data-exam-id="{exam['id']}" data-decision="{_e(exam['decision'])}">
<div class="pics">{thumb}{heat}</div>
<div class="facts">
<p class="file">Exam {exam['id']}: {_e(name)}</p>
<p class="decision">{_e(exam['decision'])}: abnormality {exam['abnormality']:.3f} (threshold {exam['threshold']:.3f}, {_e(exam['threshold_source'])})</p>
{_probabilities_html(exam['probabilities'])}
<p class="meta">{_e(exam['created_at'])} &middot; <code>{_e(exam['file'])}</code><br>sha256 <code>{_e(exam['sha256'])}</code><br>
model {_e(m['name'])} {_e(m['version'])} <code>{_e((m['sha256'] or '')[:16])}</code> &middot; {_e(exam['notice'])}</p>
{verdict}{dups}
<p class="hint"><code>cxr-edge review verdict {exam['id']} agree|disagree</code></p>
</div>
</section>"""


def _quarantined_html(exams: list[dict]) -> str:
    if not exams:
        return "<p class=\"meta\">None.</p>"
    rows = "".join(f"<tr><td>{e['id']}</td><td>{_e(e['created_at'][:19])}</td><td><code>{_e(e['file'])}</code></td>"
                   f"<td>{_e(e['reason_code'])}</td><td>{_e(e['reason'])}</td></tr>" for e in exams)
    return ("<table class=\"quarantined\"><tr><th>id</th><th>time (UTC)</th><th>file</th><th>reason</th>"
            f"<th>details</th></tr>{rows}</table>")


def export_bundle(log: ReviewLog, out: Path, *, since: str | None = None, include_all: bool = False) -> str:
    """Write OUT/index.html and OUT/records.jsonl; returns a one-line summary with the bundle's size."""
    exams = select_exams(log, since=since)
    screened = [e for e in exams if e["status"] == "screened"]
    referred = [e for e in screened if e["decision"] == "refer"]
    quarantined = [e for e in exams if e["status"] not in ("screened",)]
    shown = screened if include_all else referred
    page = _template().substitute(
        generated=_e(datetime.now(timezone.utc).isoformat(timespec="seconds")),
        log=_e(log.path),
        period=f", exams since {_e(since)}" if since else "",
        count_screened=len(screened), count_referred=len(referred), count_normal=len(screened) - len(referred),
        count_quarantined=len(quarantined), count_shown=len(shown),
        heading="Screened exams" if include_all else "Referred exams",
        models=_models_html(exams),
        exams="\n".join(_exam_html(e, log.images(e["id"])) for e in shown) or "<p class=\"meta\">None.</p>",
        quarantined=_quarantined_html(quarantined),
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "index.html", page)
        _write(out / "records.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in exams))
    except OSError as exc:
        raise CxrError(f"{out}: cannot write the review bundle ({exc.strerror or exc})", code=ExitCode.STORAGE,
                       reason="export_unwritable") from None
    size = sum((out / n).stat().st_size for n in ("index.html", "records.jsonl"))
    return (f"wrote {out / 'index.html'} and records.jsonl: {len(shown)} {'screened' if include_all else 'referred'} "
            f"exams shown, {len(exams)} records, {size / 1024:.0f} KiB")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
