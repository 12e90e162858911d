"""`cxr-edge`: screen chest X-rays on the device. Every command prints one line per user error
and exits with a documented code (README, "Exit codes"); tracebacks mean a bug."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .calibration import resolve_threshold
from .errors import CxrError, ExitCode
from .paths import default_log_path, default_model_path
from .output import print_calibration, print_evaluation, print_results, progress_bar
from .review_log import ReviewLog
from .runtime import TFLiteModel
from .screening import screen_file

app = typer.Typer(
    help="Chest X-ray screening on small devices. A screening aid that refers images for a doctor's "
         "review; not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOption = typer.Option(None, "--model", "-m", envvar="CXR_EDGE_MODEL",
                           help="A cxr-edge .tflite file. Default: the model bundled with the package.")
LogOption = typer.Option(None, "--log", envvar="CXR_EDGE_LOG",
                         help="Review log (SQLite). Default: $CXR_EDGE_HOME/review.sqlite, else "
                              "~/.local/share/cxr-edge/review.sqlite.")
ThresholdOption = typer.Option(None, "--threshold", min=0.0, max=1.0,
                               help="Refer when abnormality >= this. Default: this site's calibration for "
                                    "this model, else the threshold stored in the model.")


def load_model(model: Optional[Path], delegate: str = "cpu", threads: Optional[int] = None) -> TFLiteModel:
    return TFLiteModel(model or default_model_path(), delegate=delegate, threads=threads)


def log_path(log: Optional[Path]) -> Path:
    return log or default_log_path()


def expand_inputs(paths: List[Path]) -> List[Path]:
    """Files as given; folders become every non-hidden file below them, sorted."""
    out: List[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            out.append(path)
    return out


@app.command()
def screen(
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM) or folders of them."),
    model: Optional[Path] = ModelOption,
    threshold: Optional[float] = ThresholdOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per image on stdout."),
    log: Optional[Path] = LogOption,
    no_log: bool = typer.Option(False, "--no-log", help="Do not append results to the review log."),
    delegate: str = typer.Option("cpu", "--delegate", help="cpu, or edgetpu for a Coral Edge TPU."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Interpreter threads (default: all)."),
    any_view: bool = typer.Option(False, "--any-view",
                                  help="Score DICOMs that would be refused (non-CR/DX/DR modality, lateral view)."),
) -> None:
    """Screen images: refer (needs a doctor's review) or normal, with class probabilities."""
    tflite = load_model(model, delegate, threads)
    cutoff, source = resolve_threshold(tflite, threshold)
    review_log = None if no_log else ReviewLog(log_path(log))
    results = []
    for path in expand_inputs(images):
        result = screen_file(path, tflite, cutoff, threshold_source=source, allow_any_view=any_view)
        if review_log is not None:
            review_log.record(result.to_log_row("screen"))
        if not result.ok:
            sys.stderr.write(f"cxr-edge: {result.status}: {result.reason}\n")
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
            sys.stdout.flush()
        results.append(result)
    if not as_json:
        print_results(results, tflite, source)
    if review_log is not None:
        review_log.close()
    if not results or any(not r.ok for r in results):
        raise typer.Exit(ExitCode.INPUT_NOT_SCREENED)


AliasOption = typer.Option(None, "--alias", help="Map a folder/label name to a class, e.g. "
                           "'Lung_Opacity=pneumonia', or NAME=skip to leave it out. Repeatable.")


def _scored_folder(data: List[Path], tflite: TFLiteModel, aliases: Optional[List[str]]):
    from .datasets import discover_many, parse_alias_overrides
    from .evaluation import score_samples

    samples = discover_many(data, aliases=parse_alias_overrides(aliases or []),
                            classes=tuple(tflite.metadata.classes))
    with progress_bar(len(samples), "scoring") as step:
        return score_samples(tflite, samples, on_step=step)


@app.command("eval")
def evaluate(
    data: List[Path] = typer.Argument(..., help="Labelled folders (class folders, split folders, CSV or split lists)."),
    model: Optional[Path] = ModelOption,
    threshold: Optional[float] = ThresholdOption,
    alias: Optional[List[str]] = AliasOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every metric."),
) -> None:
    """Evaluate a model on labelled images: per-class metrics, confusion matrix and screening metrics."""
    from .evaluation import evaluation_report

    tflite = load_model(model)
    cutoff, source = resolve_threshold(tflite, threshold)
    report = evaluation_report(tflite, _scored_folder(data, tflite, alias), cutoff, source)
    report["data"] = [str(d) for d in data]
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
    else:
        print_evaluation(report)
    for failure in report["failed"]:
        sys.stderr.write(f"cxr-edge: not scored: {failure['reason']}\n")


@app.command()
def calibrate(
    data: List[Path] = typer.Argument(..., help="This site's own labelled images (normal and abnormal)."),
    sensitivity: float = typer.Option(0.95, "--sensitivity", min=0.5, max=1.0,
                                      help="Sensitivity (share of abnormal images referred) to reach."),
    model: Optional[Path] = ModelOption,
    alias: Optional[List[str]] = AliasOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the threshold without storing it."),
    as_json: bool = typer.Option(False, "--json", help="Print the calibration record as JSON."),
) -> None:
    """Choose this site's threshold for a target sensitivity; screen, watch and eval then use it for this
    exact model file (tied to its sha256, never reused with another model)."""
    from .calibration import store_threshold
    from .evaluation import calibrate as calibrate_scores

    tflite = load_model(model)
    record = calibrate_scores(tflite, _scored_folder(data, tflite, alias), sensitivity)
    record["data"] = [str(d) for d in data]
    stored = None if dry_run else store_threshold(tflite.sha256, record)
    if as_json:
        typer.echo(json.dumps({**record, "stored_in": str(stored) if stored else None}, sort_keys=True))
    else:
        print_calibration(record, stored)
    for warning in record["warnings"]:
        sys.stderr.write(f"cxr-edge: warning: {warning}\n")


@app.command()
def version() -> None:
    """Print the cxr-edge version and the bundled model's identity."""
    typer.echo(f"cxr-edge {__version__}")
    try:
        tflite = load_model(None)
        typer.echo(f"default model: {tflite.metadata.name} {tflite.metadata.version} sha256 {tflite.sha256}")
    except CxrError as exc:
        typer.echo(f"default model: unavailable ({exc})")


def main() -> None:
    try:
        app()
    except CxrError as exc:
        sys.stderr.write(f"cxr-edge: error: {exc}\n")
        sys.exit(int(exc.code))
    except KeyboardInterrupt:
        sys.stderr.write("cxr-edge: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
