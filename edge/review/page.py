"""HTML pieces of the review bundle's page: one exam (film, heatmap toggle, score, probabilities,
threshold and its source, model identity and limitations, verdict form), the model table, the
programme-monitoring section. Everything from the log is escaped; pictures are data: URIs."""

from __future__ import annotations

import base64
import html

from .log import NOTICE
from .charts import referral_chart, score_chart

MIME = {b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp", b"\x89PNG": "image/png"}


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(picture: bytes) -> str:
    mime = next((m for magic, m in MIME.items() if picture.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(picture).decode("ascii")


def limitations(meta: dict | None) -> list[str]:
    if not meta:
        return []
    return [str(x) for x in (meta.get("training_data") or {}).get("known_limitations") or []]


def limits_html(meta: dict | None) -> str:
    if meta is None:
        return ('<div class="limits">This model\'s intended use and known limitations are not in this log '
                "(screened by an older cxr-edge); see its model card.</div>")
    items = "".join(f"<li>{_e(x)}</li>" for x in limitations(meta)) or "<li>none recorded in the model file</li>"
    return (f'<div class="limits"><b>Intended use:</b> {_e(meta.get("intended_use"))}<br>'
            f"<b>Known limitations of this model:</b><ul>{items}</ul></div>")


def probabilities_html(probabilities: dict | None) -> str:
    if not probabilities:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{p:.3f}</td><td><div class=\"bar\"><span style=\"width:{100 * p:.1f}%\">"
        f"</span></div></td></tr>" for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]))
    return f"<table class=\"probs\"><tr><th>class</th><th>probability</th><th></th></tr>{rows}</table>"


def _viewer(exam: dict, images: dict | None) -> str:
    i = exam["id"]
    if not images or not images.get("film"):
        return '<div class="viewer"><div class="film"><div class="noimage">No review image stored for this exam.</div></div></div>'
    film = (f'<img class="film-img" alt="exam {i}: the film as read" src="{data_uri(images["film"])}">')
    note = _e(images.get("heatmap_note"))
    if images.get("heatmap"):
        return (f'<div class="viewer"><input type="checkbox" class="heat-toggle" id="heat-{i}">'
                f'<label for="heat-{i}">show the heatmap over the film</label>'
                f'<div class="film">{film}<img class="heat" alt="exam {i}: heatmap" '
                f'src="{data_uri(images["heatmap"])}"></div><p class="heat-note">Heatmap: {note}.</p></div>')
    return (f'<div class="viewer"><div class="film">{film}</div>'
            f'<p class="heat-note">No heatmap available: {note}.</p></div>')


def _verdicts_html(exam: dict) -> str:
    if not exam["verdicts"]:
        return ""
    rows = "".join(f"<li>{_e(v['decided_at'][:16].replace('T', ' '))} {_e(v['reviewer'])}: <b>{_e(v['verdict'])}</b>"
                   f"{': ' + _e(v['note']) if v['note'] else ''}</li>" for v in reversed(exam["verdicts"]))
    return (f'<div class="earlier">Doctors\' verdicts at the station (latest first, '
            f"{len(exam['verdicts'])} in all):<ul>{rows}</ul></div>")


CROP_WORDS = {"lungs": "the lung fields", "borders": "the film without its uniform borders",
              "none": "the whole film", "lungs_not_found": "the film without its borders: the lung fields were "
              "not found, so check the heatmap"}


def input_html(exam: dict) -> str:
    """What the model read: the input gate's verdict (and what it corrected) and the crop. Empty for exams
    logged before these were kept."""
    parts = []
    gate = exam.get("gate") or {}
    if gate.get("verdict"):
        corrected = f" ({', '.join(map(str, gate['corrected']))})" if gate.get("corrected") else ""
        score = f", P(frontal chest film) {gate['score']:.2f}" if isinstance(gate.get("score"), (int, float)) else ""
        parts.append(f"input gate: {_e(gate['verdict'])}{_e(corrected)}{_e(score)}")
    crop = exam.get("crop") or {}
    if crop.get("crop"):
        parts.append(f"the model read {_e(CROP_WORDS.get(crop['crop'], crop['crop']))}")
    return f'<p class="meta input">{" &middot; ".join(parts)}</p>' if parts else ""


def exam_html(exam: dict, images: dict | None, meta: dict | None) -> str:
    i, m = exam["id"], exam["model"]
    kind = "normal" if exam["decision"] == "normal" else "refer"
    form = f"""<div class="verdict-form"><b>Your verdict on the model's "{_e(exam['decision'])}":</b><br>
<label><input type="radio" name="verdict-{i}" value="agree"> agree</label>
<label><input type="radio" name="verdict-{i}" value="disagree"> disagree</label><br>
<textarea name="note-{i}" placeholder="finding or note (optional)"></textarea></div>"""
    return f"""<section class="exam {kind}" id="exam-{i}" data-exam-id="{i}" data-decision="{_e(exam['decision'])}">
{_viewer(exam, images)}
<div class="facts">
<p class="file">Exam {i}</p>
<p class="decision">{_e(exam['decision'])}: abnormality {exam['abnormality']:.3f}</p>
<p>threshold {exam['threshold']:.3f} ({_e(exam['threshold_source'])}) &middot; top class {_e(exam['top_class'])}</p>
{input_html(exam)}
<p class="aid">{_e(exam['notice'] or NOTICE)}</p>
{probabilities_html(exam['probabilities'])}
<p class="meta">model {_e(m['name'])} {_e(m['version'])}, sha256 <code>{_e(m['sha256'])}</code></p>
{limits_html(meta)}
<p class="meta">{_e(exam['created_at'])} UTC &middot; image sha256 <code>{_e(exam['sha256'])}</code></p>
{_verdicts_html(exam)}{form}
</div>
</section>"""


def models_html(models: dict[str, dict], metas: dict[str, dict | None]) -> str:
    if not models:
        return '<p class="meta">No screened exam in this selection.</p>'
    rows = "".join(f"<tr><td>{_e(m['name'])}</td><td>{_e(m['version'])}</td><td><code>{_e(sha)}</code></td></tr>"
                   for sha, m in models.items())
    notes = "".join(limits_html(metas.get(sha)) for sha in models)
    return f"<table><tr><th>name</th><th>version</th><th>sha256</th></tr>{rows}</table>{notes}"


def without_file(text: str | None, file: str) -> str | None:
    """A reason with the file's path and name taken out: file names can carry a patient's name."""
    if not text:
        return text
    return text.replace(file, "the file").replace(file.rsplit("/", 1)[-1], "the file")


def not_screened_html(exams: list[dict]) -> str:
    if not exams:
        return "<p class=\"meta\">None.</p>"
    rows = "".join(f"<tr><td>{e['id']}</td><td>{_e(e['created_at'][:19])}</td><td>{_e(e['status'])}</td>"
                   f"<td>{_e(e['reason_code'])}</td><td>{_e(without_file(e['reason'], e['file']))}</td></tr>"
                   for e in exams)
    return ("<table class=\"quarantined\"><tr><th>id</th><th>time (UTC)</th><th>status</th><th>reason</th>"
            f"<th>details</th></tr>{rows}</table>")


def stats_html(stats: dict) -> str:
    expected = stats["expected_referral_rate"]
    source = (f"expected {expected['rate']:.3f} from {_e(expected['source'])}" if expected
              else "no expected rate known for this model and threshold: no band")
    drift = stats["score_drift"]
    latest = drift["periods"][-1] if drift["periods"] else None
    periods = [p for p in stats["periods"] if p["screened"]]
    histogram = latest["histogram"] if latest else stats["score_histogram"]
    a = stats["agreement"]
    alerts = "".join(f'<li class="alert">{_e(x)}</li>' for x in stats["alerts"]) or "<li>No alert.</li>"

    def rate(x):
        return "-" if x is None else f"{x:.3f}"
    baseline_hist = drift.get("baseline_histogram") if latest else None
    return f"""<p class="meta">Per {stats['by']} (UTC). Referral rate: {source}; band: central 99% of the binomial
for each period's number of screened exams. Score drift: two-sample Kolmogorov-Smirnov test and PSI
against the first period with enough exams ({_e(drift['baseline'] or 'none yet')}).</p>
<ul class="alerts">{alerts}</ul>
{referral_chart(periods)}
{score_chart(baseline_hist, histogram, drift['baseline'], latest['period'] if latest else 'all exams')}
<table class="agreement"><tr><th>model \\ doctor</th><th>abnormal</th><th>normal</th></tr>
<tr><td>refer</td><td>{a['tp']} (agree)</td><td>{a['fp']} (disagree)</td></tr>
<tr><td>normal</td><td>{a['fn']} (disagree)</td><td>{a['tn']} (agree)</td></tr></table>
<p class="meta">Against doctors' verdicts on {a['reviewed']} reviewed exams: sensitivity {rate(a['sensitivity'])},
specificity {rate(a['specificity'])} (reviewed exams are mostly referred ones, so sensitivity is biased upwards).
Refusals: {_e(', '.join(f"{k} {v}" for k, v in sorted(stats['total']['refusals'].items())) or 'none')}.</p>"""

