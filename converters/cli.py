"""`converters`: trained Keras model -> deployable .tflite files with their metadata inside, and the
proof that they still give the same answers. One line per user error, documented exit codes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere below

import typer  # noqa: E402

from edge.cli_common import add_version_option, run_cli  # noqa: E402
from edge.errors import CxrError, ExitCode  # noqa: E402

app = typer.Typer(
    help="Convert a Keras model trained by cxr-train into TFLite files for the edge (metadata inside), "
         "and check that they give the same answers. Screening aid, not a diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
add_version_option(app, "converters")

DataOption = typer.Option(..., "--data", help="Labelled image folder (repeatable); the layouts cxr-train reads.")
AliasOption = typer.Option(None, "--alias", help="Map a folder/label name to a class: NAME=CLASS or NAME=skip.")
MetaOption = typer.Option(None, "--meta", help="Model metadata JSON. Default: model.meta.json beside the model.")
JsonOption = typer.Option(False, "--json", help="Print the report as JSON on stdout.")


def _emit(report: dict, as_json: bool, human) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=1, sort_keys=True, default=_jsonable) + "\n")
    else:
        human(report)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="model.keras written by cxr-train."),
    out: Path = typer.Option(..., "--out", "-o", help="The .tflite file to write."),
    mode: str = typer.Option("int8", "--mode", help="float32 | float16 | dynamic | int8 (full integer)."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Training data for int8 calibration "
                                              "(repeatable; its train split is used when it has one)."),
    calibration_size: int = typer.Option(200, "--calibration-size", help="Images in the class-stratified "
                                         "calibration sample."),
    edgetpu: bool = typer.Option(False, "--edgetpu", help="Refuse unless every op maps to the Coral Edge TPU "
                                 "(int8, static shapes, supported ops and op versions)."),
    cam: bool = typer.Option(False, "--cam", help="Add a second output 'cam': class activation maps for heatmaps "
                             "on the device."),
    meta: Optional[Path] = MetaOption,
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the metadata (default: the source's)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version (default: the source's)."),
    sidecar: bool = typer.Option(True, "--sidecar/--no-sidecar", help="Also write FILE.tflite.json (an extra "
                                 "copy; the metadata is always inside the .tflite)."),
    alias: Optional[List[str]] = AliasOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration sample."),
    layer_report: bool = typer.Option(True, "--layer-report/--no-layer-report", help="int8: measure which layers "
                                      "lose the most (QuantizationDebugger)."),
    runs: int = typer.Option(50, "--runs", min=1, help="Latency runs for the size/speed report."),
    as_json: bool = JsonOption,
) -> None:
    """Convert MODEL to a .tflite file in one mode, with its metadata inside, and report size and speed."""
    from .quantize import QuantizeOptions, quantize as run

    options = QuantizeOptions(mode=mode, data=list(data or []), meta=meta, calibration_size=calibration_size,
                              edgetpu=edgetpu, cam=cam, name=name, version=version, sidecar=sidecar,
                              aliases=list(alias or []), seed=seed, layer_report=layer_report, latency_runs=runs)
    _emit(run(model, out, options), as_json, _print_quantize)


@app.command()
def parity(
    keras_model: Path = typer.Argument(..., help="The Keras model (model.keras)."),
    tflite: Path = typer.Argument(..., help="A .tflite converted from it."),
    data: List[Path] = DataOption,
    alias: Optional[List[str]] = AliasOption,
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (train, val or test)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many images, class-stratified."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Override the mode's top-1 "
                                                  "agreement tolerance."),
    max_delta: Optional[float] = typer.Option(None, "--max-delta", help="Override how far the .tflite's "
                                              "accuracy and AUC (sensitivity, specificity with --check-screening) "
                                              "may fall below the Keras model's."),
    max_prob_diff: Optional[float] = typer.Option(None, "--max-prob-diff", help="Override the largest allowed "
                                                  "probability difference (float modes)."),
    check_screening: bool = typer.Option(False, "--check-screening", help="Also fail on sensitivity/specificity "
                                         "deltas at the model's threshold (always reported)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    as_json: bool = JsonOption,
) -> None:
    """Run KERAS_MODEL and TFLITE on the same images; exit 7 when they disagree beyond tolerance."""
    from edge.metadata import read_model_file
    from .parity import run_parity, tolerance_for

    quantization = read_model_file(tflite)[1].quantization
    tolerance = tolerance_for(quantization, min_agreement, max_delta, max_prob_diff, check_screening)
    report = run_parity(keras_model, tflite, list(data), aliases=list(alias or []), split=split, limit=limit,
                        tolerance=tolerance, threads=threads)
    _emit(report, as_json, _print_parity)
    if not report["passed"]:
        if as_json:
            sys.stderr.write(f"converters: parity failed: {'; '.join(report['failures'])}\n")
        raise typer.Exit(ExitCode.CHECK_FAILED)


@app.command()
def report(
    files: List[Path] = typer.Argument(..., help=".tflite files."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed invokes per file (after 5 warm-up runs)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Interpreter threads (default: all)."),
    as_json: bool = JsonOption,
) -> None:
    """Size and speed of each file: bytes, gzip bytes, weight sparsity, median LiteRT latency."""
    from .size_report import file_report
    from .sources import read_tflite

    rows = []
    for path in files:
        read_tflite(path)
        rows.append(file_report(path, runs=runs, threads=threads))
    _emit({"files": rows}, as_json, lambda r: [_print_size(row) for row in r["files"]])


@app.command("edgetpu-check")
def edgetpu_check(
    tflite: Path = typer.Argument(..., help="A .tflite file."),
    as_json: bool = JsonOption,
) -> None:
    """Which ops the Coral Edge TPU compiler (v16) would map, and which fall back to the CPU; exit 7 if any."""
    from .edgetpu import check_edgetpu
    from .sources import read_tflite
    from .tflite_model import read_graph

    result = check_edgetpu(read_graph(read_tflite(tflite)))
    _emit({"file": str(tflite), **result.to_dict()}, as_json, _print_edgetpu)
    if not result.compatible:
        raise typer.Exit(ExitCode.CHECK_FAILED)


@app.command()
def prune(
    model: Path = typer.Argument(..., help="model.keras written by cxr-train."),
    data: List[Path] = DataOption,
    out: Path = typer.Option(..., "--out", "-o", help="Pruned Keras model to write (.keras); its metadata goes "
                             "beside it as <name>.meta.json."),
    sparsity: float = typer.Option(0.5, "--sparsity", min=0.0, max=0.99, help="Final fraction of zero weights."),
    epochs: int = typer.Option(2, "--epochs", min=1, help="Fine-tuning epochs."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    learning_rate: float = typer.Option(1e-4, "--learning-rate", min=0.0),
    meta: Optional[Path] = MetaOption,
    alias: Optional[List[str]] = AliasOption,
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune with magnitude pruning (polynomial decay), strip the wrappers, report sparsity per layer."""
    from .prune import PruneOptions, prune_model

    options = PruneOptions(sparsity=sparsity, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                           data=list(data), meta=meta, aliases=list(alias or []))
    _emit(prune_model(model, out, options), as_json, _print_prune)


@app.command()
def qat(
    model: Path = typer.Argument(..., help="model.keras (or a pruned model) to fine-tune."),
    data: List[Path] = DataOption,
    out: Path = typer.Option(..., "--out", "-o", help="The int8 .tflite file to write."),
    epochs: int = typer.Option(2, "--epochs", min=1, help="Quantization-aware fine-tuning epochs."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    learning_rate: float = typer.Option(1e-5, "--learning-rate", min=0.0),
    preserve_sparsity: bool = typer.Option(False, "--preserve-sparsity", help="Keep a pruned model's zeros "
                                           "(prune-preserving QAT)."),
    calibration_size: int = typer.Option(200, "--calibration-size"),
    meta: Optional[Path] = MetaOption,
    name: Optional[str] = typer.Option(None, "--name"),
    version: Optional[str] = typer.Option(None, "--version"),
    sidecar: bool = typer.Option(True, "--sidecar/--no-sidecar"),
    alias: Optional[List[str]] = AliasOption,
    as_json: bool = JsonOption,
) -> None:
    """Quantization-aware training, then full-integer int8 conversion: for when post-training int8 loses too much."""
    from .qat import QatOptions, qat_model

    options = QatOptions(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         preserve_sparsity=preserve_sparsity, calibration_size=calibration_size, data=list(data),
                         meta=meta, name=name, version=version, sidecar=sidecar, aliases=list(alias or []))
    _emit(qat_model(model, out, options), as_json, _print_quantize)


# ---- human-readable output ---------------------------------------------------------------------

@app.command()
def threshold(
    tflite: Path = typer.Argument(..., help="A cxr-edge .tflite file (the one you will ship)."),
    data: List[Path] = DataOption,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the file with the new threshold inside."),
    splits: Optional[Path] = typer.Option(None, "--splits", help="The cxr-train run's splits.csv, so images get "
                                          "the split training gave them."),
    split: str = typer.Option("val", "--split", help="Choose on this split (never the test split)."),
    sensitivity: float = typer.Option(0.95, "--sensitivity", min=0.5, max=1.0, help="Target sensitivity."),
    per_source: bool = typer.Option(False, "--per-source", help="Reach the target in every source with at least "
                                    "30 abnormal images too, not only pooled."),
    alias: Optional[List[str]] = AliasOption,
    as_json: bool = JsonOption,
) -> None:
    """Choose the decision threshold for a target sensitivity with this exact .tflite on validation images,
    and write it into the file's metadata (pruning and int8 shift scores, so the Keras threshold drifts)."""
    from .threshold import choose_threshold

    if split == "test":
        raise CxrError("--split test: a threshold chosen on the test split makes its test metrics meaningless; "
                       "use the validation split", code=ExitCode.USAGE, reason="bad_option")
    report = choose_threshold(tflite, list(data), split=split, sensitivity=sensitivity, out=out,
                              aliases=list(alias or []), splits_csv=splits, per_source=per_source)
    _emit(report, as_json, lambda r: typer.echo(
        f"threshold {r['threshold']:.4f}: sensitivity {r['screening']['sensitivity']:.3f}, specificity "
        f"{r['screening']['specificity']:.3f} on {r['screening']['n']} {split} images; wrote {r['file']} "
        f"(sha256 {r['model']['sha256'][:12]})"))


def _print_size(row: dict) -> None:
    lat = row["latency"]
    sparsity = "n/a" if row["sparsity"] is None else f"{row['sparsity']:.1%}"
    typer.echo(f"{row['file']}: {row['model'].get('name')} {row['model'].get('version')} "
               f"[{row['model'].get('quantization')}] sha256 {row['sha256'][:16]}")
    typer.echo(f"  size {row['bytes']:,} B, gzip {row['gzip_bytes']:,} B, weight sparsity {sparsity}, "
               f"latency median {lat['median_ms']} ms (p90 {lat['p90_ms']} ms, {lat['runs']} runs, "
               f"{lat['threads']} threads, LiteRT)")


def _print_edgetpu(result: dict) -> None:
    status = "Edge TPU: compatible" if result["compatible"] else "Edge TPU: NOT fully compatible"
    typer.echo(f"{status}: {result['summary']} (static check of compiler v16 rules; run edgetpu_compiler to "
               "confirm)")


def _print_quantize(report: dict) -> None:
    typer.echo(f"wrote {report['file']} ({report['mode']}, outputs {report['outputs']}) from "
               f"{report['source']['file']}")
    if report.get("calibration"):
        cal = report["calibration"]
        typer.echo(f"  calibrated on {cal['images']} images {cal['per_class']}")
    _print_size(report["size"])
    if report.get("edgetpu"):
        typer.echo("  " + ("Edge TPU: compatible: " if report["edgetpu"]["compatible"] else
                           "Edge TPU: would fall back to CPU: ") + report["edgetpu"]["summary"])
    if report.get("layer_error"):
        typer.echo("  layers losing the most under int8 (rmse in quantization steps; ~0.29 is rounding only):")
        for row in report["layer_error"][:5]:
            typer.echo(f"    {row['layer']}: rmse/scale {row['rmse_over_scale']:.3f}, "
                       f"correlation {row['correlation']:.4f}")
    for line in report.get("qat", {}).get("lines", []):
        typer.echo("  " + line)
    typer.echo(f"  {report['notice']}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_parity(report: dict) -> None:
    typer.echo(f"parity {report['keras']['file']} vs {report['tflite']['file']} "
               f"[{report['tflite']['quantization']}] on {report['images']} images {report['per_class']}")
    typer.echo(f"  top-1 agreement {report['agreement']:.4f}, decision agreement {report['decision_agreement']:.4f}, "
               f"prob diff max {report['max_abs_prob_diff']:.6f} mean {report['mean_abs_prob_diff']:.6f}")
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        delta = report["deltas"][key]
        typer.echo(f"  {key:<11} keras {_fmt(report['keras_metrics'][key])}  tflite "
                   f"{_fmt(report['tflite_metrics'][key])}  delta {'n/a' if delta is None else f'{delta:+.4f}'}")
    for flip in report["top1_flips"][:5]:
        typer.echo(f"  top-1 flip{' (borderline)' if flip['borderline'] else ''}: {flip['file']} keras "
                   f"{flip['keras_class']} by a margin of {flip['keras_margin']:.4f}, tflite {flip['tflite_class']} "
                   f"(conversion noise p95 {report['p95_abs_prob_diff']:.4f})")
    for flip in report["decision_flips"][:5]:
        typer.echo(f"  decision flip{' (borderline)' if flip['borderline'] else ''}: {flip['file']} abnormality "
                   f"keras {flip['keras_abnormality']:.6f} tflite {flip['tflite_abnormality']:.6f} "
                   f"(threshold {report['keras_metrics']['threshold']:.6f})")
    verdict = "PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"])
    typer.echo(f"  {verdict}")
    typer.echo(f"  tolerance: {report['tolerance_text']}")
    typer.echo(f"  {report['notice']}")


def _print_prune(report: dict) -> None:
    typer.echo(f"wrote {report['file']} (+ {report['metadata_file']}): target sparsity {report['target_sparsity']}, "
               f"reached {report['overall_sparsity']:.1%} of prunable weights after {report['epochs']} epoch(s)")
    for row in report["layers"]:
        typer.echo(f"  {row['layer']:<32} {row['sparsity']:.1%} of {row['weights']:,}")
    for warning in report.get("warnings", []):
        typer.echo(f"  WARNING: {warning}")
    typer.echo("  next: converters quantize PRUNED --mode int8 (size gain shows in gzip bytes; XNNPACK's sparse "
               "kernels only speed up float models)")


def main() -> None:
    run_cli(app, "converters", train_extra=True)


if __name__ == "__main__":
    main()
