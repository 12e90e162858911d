"""`cxr-edge review stats`: is the station still doing what it was calibrated to do?

Per day or ISO week (UTC): exams, screened, referred and the referral rate against its expected
band, refusals by reason, doctors' verdicts, and score drift. WHO asks CAD programmes to keep
monitoring the proportion flagged and the agreement with human readers after local calibration.

- Expected referral rate: this site's calibration for the model that screened the latest exam
  (refer rate on the calibration images: sensitivity x abnormal + (1 - specificity) x normal), when
  the exams used that threshold; else the refer rate the model's metadata records on its validation
  split at the threshold used. A period is flagged when its referred count lies outside the central
  99% of Binomial(screened, expected rate). The expected rate carries the calibration images' mix
  of normal and abnormal: a station whose case mix differs will sit outside it; calibrate on the
  station's own images to make the band meaningful.
- Score drift: the abnormality scores of each period against those of the first period with at
  least MIN_DRIFT screened exams (the baseline): two-sample Kolmogorov-Smirnov test (flagged when
  p < 0.01) and the population stability index (flagged above 0.25). Only exams of the latest model
  count; a change of model is itself reported. A station screening by age (--by-age) logs two models
  side by side: `--model NAME` gives each its own rates, band and drift.
- Agreement: the latest verdict of each screened exam. agree with refer = doctor abnormal, disagree with
  refer = doctor normal, agree with normal = doctor normal, disagree with normal = doctor abnormal. So
  sensitivity and specificity are measured against the doctors' verdicts, on the exams they reviewed,
  which are mostly referred ones: sensitivity is biased upwards (verification bias).
"""

from __future__ import annotations

from datetime import date

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..calibration import stored_threshold
from ..errors import CxrError, ExitCode
from ..metrics import wilson_interval
from ..paths import bundled_models, resolve_model
from .log import NOTICE, ReviewLog
from .drift import KS_ALPHA, PSI_ALERT, binomial_band, histogram, ks_two_sample, psi
from .listing import select_exams
from .verdicts import says_abnormal

MIN_DRIFT = 20


def period_of(created_at: str, by: str) -> str:
    day = date.fromisoformat(created_at[:10])
    if by == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.isoformat()


def model_metadata(log: ReviewLog, model_sha256: str) -> dict | None:
    """The metadata of the model that screened, as the log kept it; else a bundled model's if it is one of them."""
    kept = log.model_metadata(model_sha256)
    if kept is not None:
        return kept
    from ..metadata import file_sha256, read_model_file

    for name in bundled_models():
        try:
            path = resolve_model(name)
            if file_sha256(path) == model_sha256:
                return read_model_file(path)[1].to_dict()
        except Exception:  # unreadable: simply nothing known about it
            continue
    return None


def _model_validation_rate(meta: dict | None, threshold: float) -> tuple[float, str] | None:
    """The refer rate recorded in the model's metadata metrics at this threshold, if any."""
    if not meta:
        return None
    found = []

    def walk(node, name):
        if isinstance(node, dict):
            if isinstance(node.get("refer_rate"), (int, float)) and abs(node.get("threshold", -1) - threshold) < 1e-6:
                found.append((float(node["refer_rate"]), name, int(node.get("n") or node.get("images") or 0)))
            for key, value in node.items():
                walk(value, f"{name}.{key}" if name else key)
    walk(meta.get("metrics") or {}, "")
    if not found:
        return None
    rate, name, n = found[0]
    return rate, f"model metadata metrics.{name} (validation, {n} images, threshold {threshold:.4f})"


def expected_rate(log: ReviewLog, model_sha256: str, threshold: float, threshold_source: str) -> dict | None:
    record = stored_threshold(model_sha256)
    if record and threshold_source == "site calibration" and abs(float(record["threshold"]) - threshold) < 1e-9:
        n_ab, n_no = int(record["n_abnormal"]), int(record["n_normal"])
        rate = (record["sensitivity"] * n_ab + (1 - record["specificity"]) * n_no) / (n_ab + n_no)
        return {"rate": rate, "source": f"site calibration of {record.get('created', '?')} "
                                        f"({n_ab} abnormal, {n_no} normal images)"}
    found = _model_validation_rate(model_metadata(log, model_sha256), threshold)
    if found:
        return {"rate": found[0], "source": found[1]}
    return None


def agreement(exams: list[dict]) -> dict:
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for e in exams:
        if e["status"] != "screened" or not e["verdict"]:
            continue
        abnormal = says_abnormal(e)
        counts[("tp" if abnormal else "fp") if e["decision"] == "refer" else ("fn" if abnormal else "tn")] += 1
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    reviewed = tp + fp + tn + fn
    return {**counts, "reviewed": reviewed,
            "agreement": (tp + tn) / reviewed if reviewed else None,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "ci95": {"sensitivity": wilson_interval(tp, tp + fn), "specificity": wilson_interval(tn, tn + fp),
                     "method": "Wilson score interval"},
            "against": "doctors' latest verdicts (mostly on referred exams: sensitivity is biased upwards)"}


def _period_row(name: str, exams: list[dict], expected: dict | None) -> dict:
    screened = [e for e in exams if e["status"] == "screened"]
    referred = sum(e["decision"] == "refer" for e in screened)
    refusals: dict[str, int] = {}
    for e in exams:
        if e["status"] != "screened":
            refusals[e["reason_code"] or e["status"]] = refusals.get(e["reason_code"] or e["status"], 0) + 1
    row = {"period": name, "exams": len(exams), "screened": len(screened), "referred": referred,
           "referral_rate": referred / len(screened) if screened else None, "refusals": refusals,
           "band": None, "referral_alert": False, "agreement": agreement(exams)}
    if expected and screened:
        lo, hi = binomial_band(len(screened), expected["rate"])
        row["band"] = [lo / len(screened), hi / len(screened)]
        row["referral_alert"] = not lo <= referred <= hi
    return row


def programme_stats(log: ReviewLog, *, since: str | None = None, by: str = "day", model: str | None = None) -> dict:
    """model: only the exams of the model with this name, or whose sha256 starts with this (6+ characters)."""
    exams = select_exams(log, since=since)
    if model is not None:
        exams = _of_model(exams, model)
    screened = [e for e in exams if e["status"] == "screened"]
    latest = screened[-1] if screened else None
    models = list({e["model"]["sha256"]: e["model"] for e in screened}.values())
    expected = expected_rate(log, latest["model"]["sha256"], latest["threshold"], latest["threshold_source"] or "") \
        if latest else None
    groups: dict[str, list[dict]] = {}
    for e in exams:
        groups.setdefault(period_of(e["created_at"], by), []).append(e)
    periods = [_period_row(name, group, expected) for name, group in sorted(groups.items())]
    alerts = [f"{p['period']}: referral rate {p['referral_rate']:.3f} outside the expected band "
              f"{p['band'][0]:.3f}-{p['band'][1]:.3f} ({p['referred']} of {p['screened']})"
              for p in periods if p["referral_alert"]]
    drift = _score_drift(periods, groups, latest)
    alerts += [f"{d['period']}: score distribution shifted from {d['baseline']} (KS D {d['ks_d']:.3f}, "
               f"p {d['ks_p']:.2g}; PSI {d['psi']:.3f})" for d in drift["periods"] if d["alert"]]
    if len(models) > 1:
        names = " ".join(sorted({m["name"] for m in models}))
        alerts.append(f"{len(models)} models screened these exams: rates and scores of different models are "
                      f"not comparable; drift is measured on the latest model only (each model: --model NAME, "
                      f"of {names})")
    scores = [e["abnormality"] for e in screened if latest and e["model"]["sha256"] == latest["model"]["sha256"]]
    return {"by": by, "since": since, "model_filter": model, "exams": len(exams), "screened": len(screened),
            "referred": sum(e["decision"] == "refer" for e in screened),
            "expected_referral_rate": expected, "periods": periods, "total": _period_row("total", exams, expected),
            "agreement": agreement(exams), "score_drift": drift, "score_histogram": histogram(scores),
            "alerts": alerts, "models": models, "notice": NOTICE,
            "method": "band: central 99% of Binomial(screened, expected rate); drift: two-sample KS p < "
                      f"{KS_ALPHA} or PSI > {PSI_ALERT} against the first period with >= {MIN_DRIFT} "
                      "screened exams of the latest model"}


def _of_model(exams: list[dict], model: str) -> list[dict]:
    def match(m: dict) -> bool:
        return m["name"] == model or (len(model) >= 6 and m["sha256"].startswith(model.lower()))

    chosen = [e for e in exams if match(e["model"])]
    if not chosen and exams:
        seen = ", ".join(sorted({f"{e['model']['name']} ({e['model']['sha256'][:12]})" for e in exams}))
        raise CxrError(f"--model {model}: no exam in this period was screened by a model of that name or sha256 "
                       f"(models here: {seen})", code=ExitCode.USAGE, reason="bad_option")
    return chosen


def _score_drift(periods: list[dict], groups: dict, latest: dict | None) -> dict:
    out = {"baseline": None, "periods": []}
    if latest is None:
        return out
    sha = latest["model"]["sha256"]
    baseline = None
    for p in periods:
        scores = [e["abnormality"] for e in groups[p["period"]]
                  if e["status"] == "screened" and e["model"]["sha256"] == sha]
        if len(scores) < MIN_DRIFT:
            continue
        if baseline is None:
            baseline, out["baseline"] = (p["period"], scores), p["period"]
            out["baseline_histogram"] = histogram(scores)
            continue
        d, p_value = ks_two_sample(baseline[1], scores)
        index = psi(baseline[1], scores)
        alert = p_value < KS_ALPHA or index > PSI_ALERT
        entry = {"period": p["period"], "baseline": baseline[0], "n": len(scores), "ks_d": d, "ks_p": p_value,
                 "psi": index, "alert": alert, "histogram": histogram(scores)}
        out["periods"].append(entry)
        p["score_drift"] = entry
    return out


def _rate(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_stats(stats: dict) -> None:
    console = Console()
    only = f" for model {stats['model_filter']}" if stats.get("model_filter") else ""
    table = Table(title=f"cxr-edge programme statistics per {stats['by']}{only}", title_justify="left")
    for column in ("Period", "Exams", "Screened", "Referred", "Rate", "Band", "Verdicts", "KS p", "Alert"):
        table.add_column(column, justify="left" if column in ("Period", "Alert") else "right",
                         no_wrap=column in ("Period", "Rate", "Band", "KS p"))
    for p in [*stats["periods"], stats["total"]]:
        band = "-" if not p["band"] else f"{p['band'][0]:.2f}-{p['band'][1]:.2f}"
        drift = p.get("score_drift")
        alert = [w for w, on in (("rate", p["referral_alert"]), ("scores", drift and drift["alert"])) if on]
        table.add_row(p["period"], str(p["exams"]), str(p["screened"]), str(p["referred"]),
                      _rate(p["referral_rate"]), band, str(p["agreement"]["reviewed"]),
                      f"{drift['ks_p']:.2g}" if drift else "-",
                      f"[bold red]{', '.join(alert)}[/]" if alert else "")
    console.print(table)
    expected = stats["expected_referral_rate"]
    console.print(f"Expected referral rate: {_rate(expected['rate'])} from {escape(expected['source'])}"
                  if expected else "Expected referral rate: unknown (no site calibration or model validation "
                  "rate for this model and threshold): no band", highlight=False)
    refusals = ", ".join(f"{k} {v}" for k, v in sorted(stats["total"]["refusals"].items())) or "none"
    console.print(f"Not screened, by reason: {escape(refusals)} (per period: --json).", highlight=False)
    a = stats["agreement"]
    console.print(f"Doctor agreement on {a['reviewed']} reviewed exams: TP {a['tp']} FP {a['fp']} TN {a['tn']} "
                  f"FN {a['fn']}; sensitivity {_rate(a['sensitivity'])}, specificity {_rate(a['specificity'])} "
                  f"against {a['against']}.", highlight=False)
    for line in stats["alerts"]:
        console.print(f"[bold red]ALERT[/] {escape(line)}", highlight=False)
    if not stats["alerts"]:
        console.print("No alert.", highlight=False)
    models = ", ".join(f"{m['name']} {m['version']} ({m['sha256'][:12]})" for m in stats["models"]) or "none"
    console.print(f"Models: {escape(models)}. {NOTICE.capitalize()}.", highlight=False)
