"""`cxr-edge eval` and `cxr-edge calibrate`: score labelled images (or the doctors' verdicts in the review
log) with a model, and choose this site's threshold. Registered on the main app by edge.cli."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .calibration import resolve_threshold
from .errors import CxrError, ExitCode
from .output import print_by_age_evaluation, print_calibration, print_evaluation, progress_bar
from .review.log import ReviewLog
from .runtime import TFLiteModel

AliasOption = typer.Option(None, "--alias", help="Map a folder/label name to a class, e.g. "
                           "'Lung_Opacity=pneumonia', or NAME=skip to leave it out. Repeatable.")


SplitOption = typer.Option(None, "--split", help="Only images of this split (train, val or test), for data "
                           "that names its splits, such as the splits.csv a cxr-train run writes.")


def _scored_folder(data: List[Path], tflite: TFLiteModel, aliases: Optional[List[str]], split: Optional[str],
                   any_view: bool = False):
    from .evaluation import score_samples

    samples = _samples(data, tuple(tflite.metadata.classes), aliases, split)
    with progress_bar(len(samples), "scoring") as step:
        return score_samples(tflite, samples, on_step=step, allow_any_view=any_view)


def _samples(data: List[Path], classes: tuple, aliases: Optional[List[str]], split: Optional[str]) -> list:
    from .datasets import discover_many, parse_alias_overrides

    notes: list[str] = []
    samples = discover_many(data, aliases=parse_alias_overrides(aliases or []), classes=classes, notes=notes)
    for note in notes:
        typer.echo(f"cxr-edge: {note}", err=True)
    if split is not None:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise CxrError(f"no image of split {split!r} in {', '.join(map(str, data))}", code=ExitCode.DATA,
                           reason="empty_dataset")
    return samples


def _by_age(data: List[Path], model, threshold, aliases, split, any_view: bool) -> dict:
    """`eval --by-age`: the bundled models as a --by-age station would use them (edge.evaluation.by_age_report)."""
    from .evaluation import by_age_report
    from .datasets import CANONICAL_CLASSES
    from .routing import load_routes

    routes = load_routes(model, threshold, by_age=True)  # refuses --threshold: one cutoff cannot fit two models
    known = {c for m in routes.models for c in m.metadata.classes}
    samples = _samples(data, tuple(c for c in CANONICAL_CLASSES if c in known), aliases, split)
    with progress_bar(len(samples), "scoring") as step:
        return by_age_report(routes, samples, on_step=step, allow_any_view=any_view)


def register(app: typer.Typer, *, model_option, threshold_option, log_option, since_option) -> None:
    @app.command("eval")
    def evaluate(
        data: List[Path] = typer.Argument(..., help="Labelled folders (class folders, split folders, CSV or split "
                                          "lists)."),
        model: Optional[Path] = model_option,
        threshold: Optional[float] = threshold_option,
        alias: Optional[List[str]] = AliasOption,
        split: Optional[str] = SplitOption,
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every metric."),
        any_view: bool = typer.Option(False, "--any-view",
                                      help="Score the images the input gate would refuse too."),
        by_age: bool = typer.Option(False, "--by-age", help="Score each image with the bundled model a --by-age "
                                    "station would give it (age from the data's age column, else its age group) "
                                    "at that model's threshold: screening metrics per model and together."),
    ) -> None:
        """Evaluate a model on labelled images: per-class metrics, confusion matrix and screening metrics
        (of the images the input gate lets through; it says how many it refused). --by-age: the bundled
        models as a mixed-age station uses them (ages from the data's age column, else its age group)."""
        from .cli import load_model
        from .evaluation import evaluation_report

        if by_age:
            report, show = _by_age(data, model, threshold, alias, split, any_view), print_by_age_evaluation
        else:
            tflite = load_model(model)
            cutoff, source = resolve_threshold(tflite, threshold)
            report = evaluation_report(tflite, _scored_folder(data, tflite, alias, split, any_view), cutoff, source)
            show = print_evaluation
        report["data"] = [str(d) for d in data]
        if as_json:
            typer.echo(json.dumps(report, sort_keys=True))
        else:
            show(report)
        for failure in report["failed"]:
            sys.stderr.write(f"cxr-edge: not scored: {failure['reason']}\n")
        for warning in report.get("warnings", []):
            sys.stderr.write(f"cxr-edge: warning: {warning}\n")

    @app.command()
    def calibrate(
        data: Optional[List[Path]] = typer.Argument(None, help="This site's own labelled images (normal and "
                                                    "abnormal)."),
        sensitivity: float = typer.Option(0.95, "--sensitivity", min=0.5, max=1.0,
                                          help="Sensitivity (share of abnormal images referred) to reach."),
        model: Optional[Path] = model_option,
        alias: Optional[List[str]] = AliasOption,
        split: Optional[str] = SplitOption,
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the threshold without storing it."),
        force: bool = typer.Option(False, "--force", help="Store it even when the sample is too small to trust "
                                   "(otherwise such a threshold is shown, not stored, and the exit code is 7)."),
        as_json: bool = typer.Option(False, "--json", help="Print the calibration record as JSON."),
        from_review: bool = typer.Option(False, "--from-review", help="Instead of DATA: the doctors' verdicts in the "
                                         "review log on the exams this model screened (see docs/review.md)."),
        since: Optional[str] = since_option,
        log: Optional[Path] = log_option,
    ) -> None:
        """Choose this site's threshold for a target sensitivity; screen, watch and eval then use it for this
        exact model file (tied to its sha256, never reused with another model). Undo: cxr-edge thresholds."""
        from .calibration import store_threshold
        from .cli import load_model, log_path
        from .evaluation import calibrate as calibrate_folder

        if bool(data) == from_review or (from_review and (alias or split)) or (since and not from_review):
            raise CxrError("calibrate takes labelled image folders (with --alias/--split) or --from-review (with "
                           "--since/--log), one of the two", code=ExitCode.USAGE, reason="bad_option")
        tflite = load_model(model)
        if from_review:
            from .review.reviewed import calibrate_from_review

            with ReviewLog(log_path(log), create=False, readonly=None) as review_log:
                record = calibrate_from_review(tflite, review_log, sensitivity, since)
        else:
            record = calibrate_folder(tflite, _scored_folder(data, tflite, alias, split), sensitivity)
            record["data"] = [str(d) for d in data]
        refused = bool(record["warnings"]) and not force and not dry_run
        record["forced"] = bool(record["warnings"]) and force and not dry_run
        stored = None if dry_run or refused else store_threshold(tflite.sha256, record)
        for warning in record["warnings"]:
            sys.stderr.write(f"cxr-edge: warning: {warning}\n")
        if as_json:
            typer.echo(json.dumps({**record, "stored_in": str(stored) if stored else None}, sort_keys=True))
        else:
            print_calibration(record, stored, refused)
        if refused:
            raise typer.Exit(ExitCode.CHECK_FAILED)
