"""`cxr-train compare RUN...`: one table (Markdown, JSON) and one plot over run folders of `cxr-train fit`.

A row per run: preset, parameters, input size, epochs run of the budget, training time; screening AUC,
sensitivity and specificity on the images it was trained on (seen, scored in inference mode), on its
internal test split and on every held-out source; the int8 .tflite's size and LiteRT latency; and
test AUC per millisecond. Runs are compared only when they were trained under one protocol (same
data and split, classes, held-out sources, input size and preprocessing, epoch budget): otherwise the
command refuses and names the field that differs, unless --allow-mixed.

Nothing here imports TensorFlow: metrics come from RUN/metrics.json, latency from LiteRT.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.errors import CxrError, ExitCode
from edge.review.log import NOTICE

PROTOCOL_FIELDS = ("data", "split", "classes", "hold_out", "input_size", "preprocessing", "budget")


def _metrics(run: Path) -> dict:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise CxrError(f"{run}: not a cxr-train run folder (no metrics.json)", code=ExitCode.USAGE,
                       reason="bad_option")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: cannot be read ({exc})", code=ExitCode.DATA, reason="bad_metrics") from None


def protocol(metrics: dict) -> dict:
    """What must be equal for two runs to be compared."""
    c = metrics["training"]["config"]
    return {
        "data": sorted(metrics["data"]["datasets"]),  # source names: paths differ between machines
        "split": {s: dict(sorted(v.items())) for s, v in metrics["data"]["splits"].items()},
        "classes": list(c["classes"]),
        "hold_out": sorted(c.get("hold_out") or []),
        "input_size": c["input_size"],
        "preprocessing": {k: c.get(k) for k in ("resize", "crop", "margin", "normalize")},
        "budget": {"epochs": c["epochs"], "fine_tune_epochs": c.get("fine_tune_epochs", 0),
                   "steps_per_epoch": c.get("steps_per_epoch"), "batch_size": c["batch_size"]},
    }


def differing_fields(protocols: list[dict]) -> list[str]:
    """The protocol fields whose values are not the same in every run."""
    differing = []
    for field in PROTOCOL_FIELDS:
        values = [p[field] for p in protocols]
        if any(v != values[0] for v in values[1:]):
            differing.append(field)
    return differing


def _protocol_error(names, protocols, field) -> CxrError:
    first = protocols[0][field]
    other = next(k for k, p in enumerate(protocols) if p[field] != first)
    return CxrError(f"runs were trained under different protocols: {field} differs ({names[0]}: "
                    f"{json.dumps(first)}; {names[other]}: {json.dumps(protocols[other][field])}); compare runs of "
                    "one protocol, or pass --allow-mixed", code=ExitCode.USAGE, reason="mixed_protocols")


def _screening(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    s = evaluation["screening"]
    return {"n": s["n"], "auc": s["auc"], "sensitivity": s["sensitivity"], "specificity": s["specificity"]}


def find_tflite(run: Path, model_sha256: str, given: Path | None = None) -> tuple[Path | None, str | None]:
    """(the run's int8 .tflite, a note when none is usable): the one given, else an int8 file in the run
    folder converted from this run's model.keras (its metadata's source_model_sha256)."""
    from edge.metadata import read_model_file

    candidates = [Path(given)] if given else sorted(p for p in Path(run).glob("*.tflite") if p.name != "lungs.tflite")
    notes = []
    for path in candidates:
        try:
            _, meta = read_model_file(path)
        except CxrError as exc:
            notes.append(str(exc))
            continue
        if meta.source_model_sha256 and meta.source_model_sha256 != model_sha256:
            notes.append(f"{path.name} was converted from another model (source sha256 "
                         f"{meta.source_model_sha256[:12]}, run's model.keras {model_sha256[:12]})")
            continue
        if meta.quantization != "int8" and not given:
            continue
        return path, None
    return None, "; ".join(notes) or "no int8 .tflite in the run folder (converters quantize RUN/model.keras " \
                                    "--out RUN/model-int8.tflite --data DATA)"


def run_row(run: Path, tflite: Path | None = None, *, runs: int = 50, threads: int | None = None) -> dict:
    """One table row (and the run's protocol) from a run folder."""
    m = _metrics(run)
    t, c = m["training"], m["training"]["config"]
    external = ((m.get("sources") or {}).get("external") or {}).get("by_source") or {}
    row = {
        "run": str(run), "name": Path(run).name, "model": m["model"], "preset": c["preset"],
        "parameters": t.get("parameters"), "input_size": c["input_size"], "epochs_run": t["epochs_run"],
        "epochs_budget": c["epochs"] + (c.get("fine_tune_epochs") or 0), "train_seconds": t["train_seconds"],
        "seen": _screening(m.get("seen")), "test": _screening(m.get("test")),
        "external": {src: {k: v[k] for k in ("n", "auc", "sensitivity", "specificity")}
                     for src, v in sorted(external.items())},
        "threshold": m["threshold"], "protocol": protocol(m),
        "int8": None, "int8_note": None,
    }
    path, note = find_tflite(Path(run), m["model"]["sha256"], tflite)
    if path is None:
        row["int8_note"] = note
    else:
        from converters.size_report import file_report

        report = file_report(path, runs=runs, threads=threads)
        row["int8"] = {"file": str(path), "sha256": report["sha256"], "quantization": report["model"]["quantization"],
                       "bytes": report["bytes"], "latency_ms": report["latency"]["median_ms"],
                       "latency": report["latency"]}
    test_auc = (row["test"] or {}).get("auc")
    row["test_auc_per_ms"] = (test_auc / row["int8"]["latency_ms"] if test_auc is not None and row["int8"]
                              and row["int8"]["latency_ms"] else None)
    return row


def compare(runs: list[Path], *, tflite: dict | None = None, allow_mixed: bool = False, latency_runs: int = 50,
            threads: int | None = None) -> dict:
    if not runs:
        raise CxrError("give at least one run folder", code=ExitCode.USAGE, reason="bad_option")
    tflite = tflite or {}
    unknown = set(tflite) - {str(r) for r in runs} - {Path(r).name for r in runs}
    if unknown:
        raise CxrError(f"--tflite {', '.join(sorted(unknown))}: not one of the runs compared", code=ExitCode.USAGE,
                       reason="bad_option")
    names = [Path(r).name for r in runs]
    protocols = [protocol(_metrics(r)) for r in runs]  # refuse before any latency is measured
    differing = differing_fields(protocols)
    if differing and not allow_mixed:
        raise _protocol_error(names, protocols, differing[0])
    rows = [run_row(Path(r), tflite.get(str(r)) or tflite.get(Path(r).name), runs=latency_runs, threads=threads)
            for r in runs]
    return {"notice": NOTICE, "protocol": protocols[0], "mixed_fields": differing, "rows": rows,
            "latency": {"runtime": "ai-edge-litert", "runs": latency_runs, "threads": threads or "all cores",
                        "what": "median single-image invoke time of the int8 .tflite"},
            "columns": _column_notes()}


def _column_notes() -> dict:
    return {"seen": "training images scored in inference mode (no augmentation) at the validation threshold",
            "test": "the run's internal test split, at the validation threshold",
            "external": "each held-out source (never trained on, never used for the threshold)",
            "test_auc_per_ms": "test screening AUC divided by the int8 LiteRT latency in milliseconds"}


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _triple(s: dict | None) -> str:
    return "n/a" if not s else f"{_f(s['auc'])} / {_f(s['sensitivity'])} / {_f(s['specificity'])}"


def render_markdown(result: dict) -> str:
    rows = result["rows"]
    sources = sorted({src for r in rows for src in r["external"]})
    head = (["run", "preset", "parameters", "input", "epochs (run/budget)", "train s", "seen AUC / sens / spec",
             "test AUC / sens / spec"] + [f"held-out {s} AUC / sens / spec" for s in sources]
            + ["int8 bytes", "int8 latency ms", "test AUC per ms"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        i8 = r["int8"]
        cells = ([r["name"], r["preset"], f"{r['parameters']:,}" if r["parameters"] else "n/a",
                  f"{r['input_size']}", f"{r['epochs_run']}/{r['epochs_budget']}", f"{r['train_seconds']:.0f}",
                  _triple(r["seen"]), _triple(r["test"])] + [_triple(r["external"].get(s)) for s in sources]
                 + [f"{i8['bytes']:,}" if i8 else "n/a", _f(i8["latency_ms"], 3) if i8 else "n/a",
                    _f(r["test_auc_per_ms"])])
        lines.append("| " + " | ".join(cells) + " |")
    p = result["protocol"]
    notes = [f"Protocol: sources {', '.join(p['data'])}; held out {', '.join(p['hold_out']) or 'nothing'}; input "
             f"{p['input_size']} px; budget {json.dumps(p['budget'])}."]
    if result["mixed_fields"]:
        notes.append(f"**Mixed protocols (--allow-mixed): {', '.join(result['mixed_fields'])} differ; the rows are "
                     "not a fair comparison.**")
    lat = result["latency"]
    notes.append(f"AUC / sens / spec: screening (abnormal = not normal) at each run's validation threshold. Seen: "
                 f"{result['columns']['seen']}. Latency: {lat['what']}, {lat['runtime']}, median of {lat['runs']} "
                 f"runs, {lat['threads']} threads.")
    for r in rows:
        if r["int8_note"]:
            notes.append(f"{r['name']}: {r['int8_note']}.")
        notes.append(f"{r['name']}: model {r['model']['name']} {r['model']['version']} sha256 {r['model']['sha256']}"
                     + (f"; int8 {Path(r['int8']['file']).name} sha256 {r['int8']['sha256']}" if r["int8"] else ""))
    notes.append(f"Every model here is a {result['notice']}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Test AUC (filled), seen AUC (hollow) and held-out AUC (crosses) against int8 latency, or against
    parameters when a run has no int8 file: the accuracy-per-millisecond view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    use_latency = all(r["int8"] for r in rows)
    fig, ax = plt.subplots(figsize=(9, 6))
    palette = plt.get_cmap("tab20")
    for k, r in enumerate(rows):
        x = r["int8"]["latency_ms"] if use_latency else r["parameters"]
        if x is None:
            continue
        colour = palette(k % 20)  # 20 distinct colours, and every test point is labelled with its run
        if r["seen"] and r["seen"]["auc"] is not None:
            ax.plot([x], [r["seen"]["auc"]], "o", mfc="none", color=colour)
        if r["test"] and r["test"]["auc"] is not None:
            ax.plot([x], [r["test"]["auc"]], "o", color=colour, label=f"{r['name']} ({r['preset']})")
            ax.annotate(r["name"], (x, r["test"]["auc"]), xytext=(4, 3), textcoords="offset points", fontsize=6,
                        color=colour)
            if r["seen"] and r["seen"]["auc"] is not None:
                ax.plot([x, x], [r["seen"]["auc"], r["test"]["auc"]], "-", color=colour, lw=0.8)
        for src, m in r["external"].items():
            if m["auc"] is not None:
                ax.plot([x], [m["auc"]], "x", color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("int8 LiteRT latency, ms (log)" if use_latency else "parameters (log; some runs have no int8 file)")
    ax.set_ylabel("screening AUC")
    ax.set_title("test (filled), seen (hollow), held-out sources (x)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_tflite_options(items) -> dict:
    """["RUN=FILE", ...] -> {RUN: Path(FILE)}; CxrError on a bad item or a missing file."""
    out = {}
    for item in items or []:
        run, sep, file = str(item).partition("=")
        if not sep or not run or not file:
            raise CxrError(f"--tflite {item!r}: expected RUN=FILE", code=ExitCode.USAGE, reason="bad_option")
        if not Path(file).is_file():
            raise CxrError(f"--tflite {item!r}: {file} not found", code=ExitCode.USAGE, reason="bad_option")
        out[run] = Path(file)
    return out
