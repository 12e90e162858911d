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
from .cli_common import add_version_option, run_cli
from .cli_thresholds import thresholds_app
from .errors import CxrError, ExitCode
from .inputs import expand_inputs
from .names import shown
from .patient_age import describe_ages
from .paths import DEFAULT_MODEL_FILE, bundled_models, default_log_path, resolve_model
from .output import batch_summary, print_results
from .review.log import ReviewLog
from .routing import Routes, load_routes
from .runtime import TFLiteModel
from .review.images import review_images
from .review.screen_log import earlier_result, json_record, marked, read_for_screening, record_result
from .station import commands as station_commands
from .station.commands import ForwardOption
from . import cli_eval as eval_commands

app = typer.Typer(
    help="Chest X-ray screening on small devices. A screening aid that refers images for a doctor's "
         "review; not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
add_version_option(app, "cxr-edge")

ModelOption = typer.Option(None, "--model", "-m", envvar="CXR_EDGE_MODEL",
                           help="A cxr-edge .tflite file, or a bundled model's name (cxr-default, "
                                "cxr-pediatric). Default: cxr-default.")
LogOption = typer.Option(None, "--log", envvar="CXR_EDGE_LOG",
                         help="Review log (SQLite). Default: $CXR_EDGE_HOME/review.sqlite, else "
                              "~/.local/share/cxr-edge/review.sqlite.")
ThresholdOption = typer.Option(None, "--threshold", min=0.0, max=1.0,
                               help="Refer when abnormality >= this. Default: this site's calibration for "
                                    "this model, else the threshold stored in the model.")

DelegateOption = typer.Option("cpu", "--delegate", help="cpu, or edgetpu for a Coral Edge TPU.")
ThreadsOption = typer.Option(None, "--threads", min=1, help="Interpreter threads (default: all).")
SinceOption = typer.Option(None, "--since", help="Only exams logged since: an age (30m, 12h, 7d) or an ISO "
                                                 "date/time (local time unless an offset is given).")
ByAgeOption = typer.Option(False, "--by-age", envvar="CXR_EDGE_BY_AGE",
                            help="Screen each DICOM with the bundled model for its patient's age "
                                 "(header): cxr-default 15 and over, cxr-pediatric under 15. Films "
                                 "without an age go to --model. Each model keeps its own threshold.")
AnyViewOption = typer.Option(False, "--any-view",
                             help="Score DICOMs that would be refused (non-CR/DX/DR modality, lateral view, a "
                                  "patient age outside the model's) and images the input gate refuses (it still "
                                  "records its scores, corrects nothing).")


def load_model(model: Optional[Path], delegate: str = "cpu", threads: Optional[int] = None) -> TFLiteModel:
    return TFLiteModel(resolve_model(model), delegate=delegate, threads=threads)


def log_path(log: Optional[Path]) -> Path:
    return log or default_log_path()


@app.command()
def screen(
    images: List[Path] = typer.Argument(..., readable=False,  # an unreadable file is one result row, not exit 2
                                        help="Image files (PNG, JPEG, DICOM) or folders of them."),
    model: Optional[Path] = ModelOption,
    threshold: Optional[float] = ThresholdOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per image on stdout."),
    log: Optional[Path] = LogOption,
    no_log: bool = typer.Option(False, "--no-log", help="Do not append results to the review log."),
    delegate: str = DelegateOption,
    threads: Optional[int] = ThreadsOption,
    any_view: bool = AnyViewOption,
    by_age: bool = ByAgeOption,
) -> None:
    """Screen images: refer (needs a doctor's review) or normal, with class probabilities."""
    routes = load_routes(model, threshold, by_age=by_age, delegate=delegate, threads=threads)
    review_log = None if no_log else ReviewLog(log_path(log))
    if review_log is not None:
        for tflite in routes.models:
            review_log.remember_model(tflite)
    results, listed = [], []
    files, skipped = expand_inputs(images)
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        sys.stderr.write(f"cxr-edge: skipped {len(skipped)} file(s) in the folder(s) that are not images: {names}\n")
    for path in files:
        result, exam_id, earlier = _screen_one(path, routes, any_view, review_log)
        if not result.ok:
            sys.stderr.write(f"cxr-edge: {result.status}: {result.reason}\n")
        if as_json:
            sys.stdout.write(json.dumps(json_record(result, exam_id, earlier), sort_keys=True) + "\n")
            sys.stdout.flush()
        results.append(result)
        listed.append(marked(result, earlier) if earlier else result)
    if not as_json:
        print_results(listed, routes)
    if len(results) > 1 or skipped:
        summary = batch_summary(results, skipped)
        (sys.stderr if as_json else sys.stdout).write(summary + "\n")
    if review_log is not None:
        review_log.close()
    if not results or any(not r.ok for r in results):
        raise typer.Exit(ExitCode.INPUT_NOT_SCREENED)


def _screen_one(path: Path, routes: Routes, any_view: bool, review_log: Optional[ReviewLog]):
    """(result, exam id or None, the earlier exam row when this image was already screened with one of these
    models)."""
    if review_log is None:  # --no-log: neither read nor write the log, keep no image
        return routes.screen(path, allow_any_view=any_view), None, None
    data, sha256 = read_for_screening(path)
    earlier = next(filter(None, (earlier_result(review_log, path, sha256, m) for m in routes.models)), None)
    if earlier is not None:
        result, row = earlier
        sys.stderr.write(f"cxr-edge: {shown(path)}: already screened as exam {row['id']} on "
                         f"{row['created_at'][:19]} UTC with {row['model_name']} {row['model_version']}; showing that "
                         "result, not logging it again\n")
        return result, row["id"], row
    result = routes.screen(path, allow_any_view=any_view, on_screened=review_images, data=data)
    return result, record_result(review_log, result, "screen"), None


eval_commands.register(app, model_option=ModelOption, threshold_option=ThresholdOption, log_option=LogOption,
                       since_option=SinceOption)


@app.command()
def watch(
    folder: Path = typer.Argument(..., help="The folder the acquisition software writes exams into "
                                            "(subfolders included)."),
    model: Optional[Path] = ModelOption,
    threshold: Optional[float] = ThresholdOption,
    log: Optional[Path] = LogOption,
    poll: bool = typer.Option(False, "--poll", help="Poll the folder instead of inotify (network shares, "
                                                    "USB sticks, SMB/NFS mounts)."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", min=0.1, help="Seconds between polls."),
    move_done: Optional[Path] = typer.Option(None, "--move-done", help="Move each screened original here "
                                             "after its result is recorded."),
    move_failed: Optional[Path] = typer.Option(None, "--move-failed", help="Move each quarantined file here "
                                               "after its quarantine record is written."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Also append every event to this text "
                                            "file (unattended operation)."),
    settle: float = typer.Option(0.5, "--settle", min=0.0, help="Seconds a file's size must stay unchanged "
                                 "before it is read (a rename from a temporary name needs no wait)."),
    retries: int = typer.Option(3, "--retries", min=1, help="Decode attempts of unchanged bytes before a file "
                                "is quarantined."),
    retry_delay: float = typer.Option(1.0, "--retry-delay", min=0.0, help="Seconds before the first retry; "
                                      "doubles each time."),
    rescan: float = typer.Option(30.0, "--rescan", min=1.0, help="Seconds between full rescans of the folder "
                                 "(a safety net for missed events)."),
    queue_size: int = typer.Option(32, "--queue-size", min=1, help="Files waiting to be screened at most; "
                                   "further files wait on disk."),
    once: bool = typer.Option(False, "--once", help="Process the files already there, then exit."),
    forward: Optional[str] = ForwardOption,
    incomplete_wait: float = typer.Option(30.0, "--incomplete-wait", min=0.0, help="A file that fails to "
                                          "decode is quarantined only once it has not changed for this many "
                                          "seconds (a writer that stalls mid-file is waited for)."),
    write_timeout: float = typer.Option(600.0, "--write-timeout", min=0.0, help="inotify: a file still open "
                                        "for writing is read after this many seconds without a change."),
    rescreen_failed: bool = typer.Option(False, "--rescreen-failed", help="Screen again the exams quarantined "
                                         "as internal_error or unsupported_compression (after an upgrade), "
                                         "moving them back from --move-failed."),
    delegate: str = DelegateOption,
    threads: Optional[int] = ThreadsOption,
    any_view: bool = AnyViewOption,
    by_age: bool = ByAgeOption,
) -> None:
    """Screen every new exam written into FOLDER, exactly once, into the review log (stop: Ctrl-C or SIGTERM)."""
    from .station.watch import WatchOptions, absolute, run_watch

    routes = load_routes(model, threshold, by_age=by_age, delegate=delegate, threads=threads)
    options = WatchOptions(
        folder=absolute(folder), log=log_path(log), poll=poll,
        poll_interval=poll_interval, settle=settle, retries=retries, retry_delay=retry_delay, rescan=rescan,
        queue_size=queue_size, move_done=absolute(move_done), move_failed=absolute(move_failed),
        log_file=log_file, allow_any_view=any_view, once=once, incomplete_wait=incomplete_wait,
        write_timeout=write_timeout, rescreen_failed=rescreen_failed)
    from .station.forwarder import forwarding, parse_destination

    with forwarding(parse_destination(forward) if forward else None, options.log, routes.models,
                    moved=(options.folder, options.move_done) if options.move_done else None):
        raise typer.Exit(run_watch(options, routes))


station_commands.register(app, model_option=ModelOption, log_option=LogOption, threshold_option=ThresholdOption,
                          delegate_option=DelegateOption, threads_option=ThreadsOption, by_age_option=ByAgeOption)

app.add_typer(thresholds_app, name="thresholds")
review_app = typer.Typer(help="Read the review log as a remote doctor: list, export a bundle, record verdicts.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("list")
def review_list(
    referred: bool = typer.Option(False, "--referred", help="Only exams the model referred for review."),
    since: Optional[str] = SinceOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per exam."),
    log: Optional[Path] = LogOption,
) -> None:
    """List the exams in the review log (screened and quarantined), oldest first."""
    from .review import print_exam_table, select_exams

    with ReviewLog(log_path(log), create=False, readonly=None) as review_log:
        exams = select_exams(review_log, referred=referred, since=since)
    if as_json:
        for exam in exams:
            sys.stdout.write(json.dumps(exam, sort_keys=True) + "\n")
    else:
        print_exam_table(exams, str(log_path(log)))


@review_app.command("export")
def review_export(
    out: Path = typer.Argument(..., help="Folder to write the bundle into (index.html + records.jsonl)."),
    since: Optional[str] = SinceOption,
    include_all: bool = typer.Option(False, "--all", help="Show every screened exam, not only referred ones."),
    log: Optional[Path] = LogOption,
) -> None:
    """Write a small self-contained bundle for a remote doctor: one HTML page (films, heatmaps, scores,
    model limitations, a verdict form, programme plots) and the JSON records."""
    from .review.export import export_bundle

    with ReviewLog(log_path(log), create=False) as review_log:  # writes: it records the bundle it made
        summary = export_bundle(review_log, out, since=since, include_all=include_all)
    typer.echo(summary)


@review_app.command("verdict")
def review_verdict(
    exam_id: int = typer.Argument(..., help="The exam's id (first column of `cxr-edge review list`)."),
    verdict: str = typer.Argument(..., help="agree or disagree (with the model's decision)."),
    note: Optional[str] = typer.Option(None, "--note", help="The finding, or free text, kept beside the verdict."),
    reviewer: str = typer.Option(os.environ.get("USER") or "station", "--reviewer",
                                 help="Who gives the verdict (default: the login name)."),
    log: Optional[Path] = LogOption,
) -> None:
    """Add a doctor's verdict on one exam's model output (earlier verdicts are kept; the latest is shown)."""
    from .review.verdicts import append_verdict

    if verdict not in ("agree", "disagree"):
        raise CxrError(f"verdict must be agree or disagree, not {verdict!r}", code=ExitCode.USAGE,
                       reason="bad_option")
    with ReviewLog(log_path(log), create=False) as review_log:
        row = append_verdict(review_log, exam_id, verdict, note, reviewer)
    typer.echo(f"exam {row['id']}: {verdict} with the model's {row['decision']} "
               f"(abnormality {row['abnormality']:.3f}) for {row['file']}, by {reviewer}")


@review_app.command("import")
def review_import(
    file: Path = typer.Argument(..., help="A verdicts file saved from a bundle's page (verdicts-*.json)."),
    log: Optional[Path] = LogOption,
) -> None:
    """Apply a remote doctor's verdicts file: each verdict is checked against the bundle it came from and
    this log (station, bundle, exam, image sha256); refused ones are named with their reason."""
    from .review.verdicts import import_verdicts

    with ReviewLog(log_path(log), create=False) as review_log:
        report = import_verdicts(review_log, file)
    for line in report.refused:
        sys.stderr.write(f"cxr-edge: {line}\n")
    typer.echo(report.summary(file))
    if report.refused:
        raise typer.Exit(ExitCode.INPUT_NOT_SCREENED)


@review_app.command("stats")
def review_stats(
    since: Optional[str] = SinceOption,
    by: str = typer.Option("day", "--by", help="Period: day or week (UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only the exams of this model (its name, "
                                        "or its sha256's first 6+ characters): one model's rates and drift "
                                        "at a station screening --by-age."),
    log: Optional[Path] = LogOption,
) -> None:
    """Programme monitoring: exams, referral rate against its expected band, refusals by reason, agreement
    with doctors' verdicts, and drift alerts, per day or week."""
    from .review.stats import print_stats, programme_stats

    if by not in ("day", "week"):
        raise CxrError(f"--by must be day or week, not {by!r}", code=ExitCode.USAGE, reason="bad_option")
    with ReviewLog(log_path(log), create=False) as review_log:
        stats = programme_stats(review_log, since=since, by=by, model=model)
    if as_json:
        typer.echo(json.dumps(stats, sort_keys=True))
    else:
        print_stats(stats)


@app.command()
def version() -> None:
    """Print the cxr-edge version and the bundled models' identities and ages."""
    typer.echo(f"cxr-edge {__version__}")
    for name in [None] + [n for n in bundled_models() if f"{n}.tflite" != DEFAULT_MODEL_FILE]:
        label = "default model" if name is None else f"bundled model (-m {name})"
        try:
            tflite = load_model(name)
            typer.echo(f"{label}: {tflite.metadata.name} {tflite.metadata.version} sha256 {tflite.sha256}, "
                       f"{describe_ages(tflite.metadata.ages)}")
        except CxrError as exc:
            typer.echo(f"{label}: unavailable ({exc})")


def main() -> None:
    run_cli(app, "cxr-edge")


if __name__ == "__main__":
    main()
