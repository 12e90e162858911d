"""Readable terminal output (rich) for screening results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.markup import escape

from .patient_age import describe_ages
from .review.log import NOTICE


def print_results(results, routes) -> None:
    """A table when it fits the terminal; else one line per image with the file name last and never
    wrapped by us (probabilities are then in --json only). Then the model(s) and threshold(s) used
    (routes: edge.routing.Routes)."""
    from rich.measure import Measurement

    console = Console()
    table = Table(title="cxr-edge screening", title_justify="left")
    table.add_column("File", no_wrap=True)
    columns = ("Decision", "Abnormality", "Top class", "Probabilities", "ms") + (("Model",) if routes.by_age else ())
    for column in columns:
        table.add_column(column, justify="right" if column in ("Abnormality", "ms") else "left", no_wrap=True)
    lines = []
    for r in results:
        by = (escape(r.model["name"]),) if routes.by_age else ()  # which model screened (or refused) it
        who = "".join(f"{name} " for name in by)
        if r.ok:
            d = r.decision
            style = "bold red" if d.decision == "refer" else "green"
            probs = "  ".join(f"{k} {v:.3f}" for k, v in d.probabilities.items())
            cells = (f"[{style}]{d.decision}[/]", f"{d.abnormality:.3f}", d.top_class, probs, f"{r.latency_ms:.1f}")
            lines.append(f"[{style}]{d.decision:<8}[/] {d.abnormality:.3f}  {d.top_class:<12} {who}{escape(r.file)}")
        else:
            cells = (f"[yellow]{r.status}[/]", "", "", escape(r.reason_code or ""), "")
            lines.append(f"[yellow]{r.status:<8}[/] {'':5}  {escape(r.reason_code or ''):<12} {who}{escape(r.file)}")
        table.add_row(escape(r.file), *cells, *by)
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        console.print(table)
    else:
        console.print("cxr-edge screening (probabilities: --json, or a wider terminal)", highlight=False)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
    _print_image_notes(console, results)
    for route in routes.routes:
        meta, model = route.model.metadata, route.model
        used = ""
        if routes.by_age:  # which films each model screened is in every row's model (--json, the log)
            count = sum(1 for r in results if r.ok and r.model["sha256"] == model.sha256)
            used = f" for {describe_ages(meta.ages)}: {count} screened;"
        console.print(f"model {escape(meta.name)} {escape(meta.version)} (sha256 {model.sha256[:12]}),{used} "
                      f"threshold {route.threshold:.3f} from {route.threshold_source}."
                      + ("" if routes.by_age else f" {NOTICE.capitalize()}."), highlight=False)
    if routes.by_age:
        console.print(f"Each film went to the model for its patient's age (DICOM header); films without an age "
                      f"to {routes.primary.model.metadata.name}. {NOTICE.capitalize()}.", highlight=False)


def _print_image_notes(console: Console, results) -> None:
    """What the input gate corrected, where the lung crop found no lungs, and which gate file it was."""
    gates = [r.gate for r in results if r.gate]
    for r in results:
        if r.gate and r.gate.get("corrected") and r.ok:
            console.print(f"{escape(r.file)}: corrected by the input gate ({', '.join(r.gate['corrected'])}) "
                          "before screening", highlight=False)
        if r.ok and r.crop and r.crop.get("crop") == "lungs_not_found":
            console.print(f"{escape(r.file)}: the lung segmenter found no lungs; the model was given the film "
                          "inside its borders instead (check the image)", highlight=False)
    if gates:
        g = gates[0]
        console.print(f"input gate {escape(g['model_name'])} {escape(g['model_version'])} "
                      f"(sha256 {g['model_sha256'][:12]})", highlight=False)


def batch_summary(results, skipped=()) -> str:
    """`N refer / M normal / K not screened` after a batch (and the non-image files a folder held)."""
    refer = sum(1 for r in results if r.ok and r.decision.decision == "refer")
    normal = sum(1 for r in results if r.ok and r.decision.decision == "normal")
    line = f"{refer} refer / {normal} normal / {len(results) - refer - normal} not screened"
    return line + (f" ({len(skipped)} non-image file(s) skipped)" if skipped else "")


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def print_evaluation(report: dict) -> None:
    console = Console()
    table = Table(title=f"cxr-edge eval: {report['n']} images, accuracy {_fmt(report['accuracy'])}",
                  title_justify="left")
    for column in ("Class", "Precision", "Recall", "Specificity", "F1", "AUC", "Support"):
        table.add_column(column, justify="left" if column == "Class" else "right")
    for name, m in report["per_class"].items():
        table.add_row(name, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["specificity"]), _fmt(m["f1"]),
                      _fmt(m["auc"]), str(m["support"]))
    console.print(table)
    confusion = Table(title="Confusion (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in report["classes"]:
        confusion.add_column(name, justify="right")
    for name, row in zip(report["classes"], report["confusion"]):
        confusion.add_row(name, *map(str, row))
    console.print(confusion)
    s = report["screening"]
    ci = s["ci95"]
    console.print(
        f"Screening (refer when abnormality >= {s['threshold']:.3f}, from {s['threshold_source']}): "
        f"AUC {_fmt(s['auc'])}{_ci(ci['auc'])}, sensitivity {_fmt(s['sensitivity'])}{_ci(ci['sensitivity'])}, "
        f"specificity {_fmt(s['specificity'])}{_ci(ci['specificity'])}; TP {s['tp']} FP {s['fp']} TN {s['tn']} "
        f"FN {s['fn']}. 95% intervals in parentheses.", highlight=False)
    _print_groups(console, report)
    gate = report.get("gate")
    if gate:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(gate["reasons"].items())) or "none"
        console.print(f"Input gate {escape(gate['name'])} {escape(gate['version'])} (sha256 {gate['sha256'][:12]}): "
                      f"refused {gate['refused']} of {gate['checked']} images ({reasons}), corrected "
                      f"{gate['corrected']}; refused images are not in the metrics above.", highlight=False)
    _print_model_line(console, report["model"])


def print_by_age_evaluation(report: dict) -> None:
    """`eval --by-age`: one row per model (the images it was given), then all decisions together."""
    console = Console()
    table = Table(title=f"cxr-edge eval --by-age: {report['n']} images, each scored by the model for its age",
                  title_justify="left")
    for column in ("Model", "Ages", "Threshold", "N", "AUC", "Sensitivity", "Specificity", "Refer"):
        table.add_column(column, justify="left" if column in ("Model", "Ages") else "right")
    for part in report["by_age_routing"]:
        s = part["screening"]
        table.add_row(f"{part['model']['name']} {part['model']['version']}", describe_ages(part["ages"]),
                      f"{s['threshold']:.3f}", str(s["n"]), _fmt(s["auc"]), _fmt(s["sensitivity"]),
                      _fmt(s["specificity"]), str(s["tp"] + s["fp"]))
    s = report["screening"]
    table.add_row("together", "", "each its own", str(s["n"]), "-", _fmt(s["sensitivity"]), _fmt(s["specificity"]),
                  str(s["tp"] + s["fp"]))
    console.print(table)
    ci = s["ci95"]
    console.print(f"Together: accuracy {_fmt(s['accuracy'])}{_ci(ci['accuracy'])}, sensitivity "
                  f"{_fmt(s['sensitivity'])}{_ci(ci['sensitivity'])}, specificity {_fmt(s['specificity'])}"
                  f"{_ci(ci['specificity'])}; TP {s['tp']} FP {s['fp']} TN {s['tn']} FN {s['fn']}. No pooled AUC: "
                  "the models' scores are not on one scale. Ages: " + report["age_rule"] + ". Per source: --json. "
                  f"{NOTICE.capitalize()}.", highlight=False)


def _print_groups(console, report: dict) -> None:
    """Per source / age group / view, where the data has more than one: pooled numbers hide a bad hospital."""
    rows = [(kind[3:], key, m) for kind in ("by_source", "by_age", "by_view")
            for key, m in (report.get(kind) or {}).items() if len(report.get(kind) or {}) > 1]
    if not rows:
        return
    table = Table(title="By source, age group and view (same threshold; n: normal/abnormal)", title_justify="left")
    for column in ("Group", "n", "AUC", "Sensitivity", "Specificity", "Refer rate"):
        table.add_column(column, justify="left" if column == "Group" else "right")
    for kind, key, m in rows:
        table.add_row(f"{kind}: {key}", f"{m['n']} ({m['n_normal']}/{m['n_abnormal']})", _fmt(m["auc"]),
                      _fmt(m["sensitivity"]), _fmt(m["specificity"]), _fmt(m["refer_rate"]))
    console.print(table)


def print_calibration(record: dict, stored, refused: bool = False) -> None:
    console = Console()
    ci = record["ci95"]
    console.print(
        f"Threshold {record['threshold']:.4f} reaches sensitivity {_fmt(record['sensitivity'])}"
        f"{_ci(ci['sensitivity'])} (target {record['target_sensitivity']:.2f}) with specificity "
        f"{_fmt(record['specificity'])}{_ci(ci['specificity'])} on {record['n_abnormal']} abnormal and "
        f"{record['n_normal']} normal images.", highlight=False)
    if stored:
        console.print(f"Stored in {escape(str(stored))}"
                      f"{' despite the warnings (--force)' if record.get('forced') else ''}; screen, watch and "
                      "eval use it with this model file only (undo: cxr-edge thresholds remove).", highlight=False)
    elif refused:
        console.print("Not stored: too uncertain (see the warning). Add images and calibrate again, or store it "
                      "anyway with --force.", highlight=False)
    else:
        console.print("Dry run: nothing stored.", highlight=False)
    _print_model_line(console, record["model"])


def _print_model_line(console: Console, model: dict) -> None:
    console.print(f"model {escape(model['name'])} {escape(model['version'])} (sha256 {model['sha256'][:12]}). "
                  f"{NOTICE.capitalize()}.", highlight=False)


class progress_bar:
    """A rich progress bar on a terminal, silent otherwise; yields a step() callable."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label

    def __enter__(self):
        import sys
        from rich.progress import Progress

        if not sys.stderr.isatty():
            self._progress = None
            return lambda: None
        self._progress = Progress(console=Console(stderr=True), transient=True)
        self._progress.start()
        task = self._progress.add_task(self.label, total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
