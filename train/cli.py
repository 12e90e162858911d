"""`cxr-train`: audit labelled chest X-ray folders and train a Keras model with an evaluation report.

Every user error prints one line (`cxr-train: error: ...`) and exits with its documented code
(6 data problems, 7 leakage refusal, 2 usage, 3 model weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edge.datasets import CANONICAL_CLASSES, DEFAULT_ALIASES, SKIP, discover_many, parse_alias_overrides
from edge.cli_common import add_version_option, run_cli
from edge.errors import CxrError, ExitCode

from .audit import DEFAULT_MAX_DISTANCE, default_cache_path, run_audit

app = typer.Typer(help="Audit chest X-ray datasets and train screening models (a screening aid, not a diagnosis).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
add_version_option(app, "cxr-train")

DataArgument = typer.Argument(..., help="Dataset folders, CSV files (path,label) or train/val/test .txt lists.")
AliasOption = typer.Option([], "--alias", "-a", help=f"NAME=CLASS mapping for a folder or label name (repeatable); "
                                                     f"NAME={SKIP} leaves it out. Example: --alias Lung_Opacity=skip")
ClassesOption = typer.Option("", "--classes", show_default=False,
                             help="Comma-separated model classes; must include normal. Default: those of "
                                  f"{', '.join(CANONICAL_CLASSES)} that the data holds.")
MaxDistanceOption = typer.Option(DEFAULT_MAX_DISTANCE, "--max-distance", min=0, max=255,
                                 help="Perceptual-hash Hamming distance (of 255 bits) that counts as a near-duplicate.")
CacheOption = typer.Option(None, "--cache", help="Hash cache file. Default: $CXR_EDGE_CACHE/image-hashes.json, "
                                                 "else <cxr-edge home>/cache/image-hashes.json.")


def _classes(text: str) -> tuple[str, ...]:
    """--classes: () when not given (then the canonical classes the data holds)."""
    classes = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    if not classes:
        return ()
    if "normal" not in classes or len(classes) < 2:
        raise CxrError(f"--classes {text!r}: needs 'normal' and at least one other class", code=ExitCode.USAGE,
                       reason="bad_option")
    return classes


def _progress(label: str):
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            sys.stderr.write(f"\r{label}: {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


@app.command()
def audit(
    data: List[Path] = DataArgument,
    alias: List[str] = AliasOption,
    classes: str = ClassesOption,
    max_distance: int = MaxDistanceOption,
    cache: Optional[Path] = CacheOption,
    as_json: bool = typer.Option(False, "--json", help="Print the full audit as one JSON object."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON audit to this file."),
) -> None:
    """Exact and near-duplicate images (within a split, across splits, across datasets), class balance,
    unreadable files, sizes and bit depths, and source confounds."""
    notes: list[str] = []
    samples = discover_many(data, aliases=parse_alias_overrides(alias), classes=_classes(classes) or CANONICAL_CLASSES,
                            notes=notes)
    for note in notes:
        typer.echo(f"cxr-train: {note}", err=True)
    result = run_audit(samples, max_distance=max_distance, cache_path=cache or default_cache_path(),
                       progress=_progress("hashing"))
    report = result.report
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
        return
    _print_audit(report)


def _print_audit(report: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    counts = Table(title=f"{report['n_images']} images", title_justify="left")
    classes = sorted(report["class_counts"]["total"])
    counts.add_column("dataset")
    for c in classes:
        counts.add_column(c, justify="right")
    for name, row in report["class_counts"].items():
        counts.add_row(name, *(str(row.get(c, 0)) for c in classes))
    console.print(counts)
    d, h = report["duplicates"], report["hash"]
    console.print(f"near-duplicate pairs (distance <= {h['max_distance']}): {d['pairs']} ({d['exact_pairs']} "
                  f"byte-identical): {d['within_split']} within a split, {d['across_splits']} across splits, "
                  f"{d['across_datasets']} across datasets, {d['label_conflicts']} with different labels; "
                  f"unreadable files: {len(report['unreadable'])}", highlight=False)
    pairs = [p for p in report["near_duplicate_pairs"] if p["scope"] != "within_split" or p["label_conflict"]]
    if pairs:
        table = Table(title="across datasets/splits or with different labels", title_justify="left")
        for col in ("dist", "a", "b", "labels"):
            table.add_column(col, overflow="fold")
        for p in pairs[:40]:
            table.add_row(str(p["distance"]), escape(f"{p['a']['dataset']}/{p['a']['split'] or '-'}: {p['a']['path']}"),
                          escape(f"{p['b']['dataset']}/{p['b']['split'] or '-'}: {p['b']['path']}"),
                          f"{p['a']['label']} / {p['b']['label']}")
        console.print(table)
    for name, info in report["images"].items():
        console.print(f"{name}: sizes {info['most_common_sizes']} ({info['distinct_sizes']} distinct), bits "
                      f"{info['bit_depths']}, formats {info['formats']}", highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"hashed {h['hashed']} file(s), {h['from_cache']} from cache, in {h['seconds']} s; "
                  "--json for every pair", highlight=False)


@app.command()
def fit(
    data: List[Path] = DataArgument,
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (model, report, plots, checkpoints)."),
    preset: str = typer.Option("small-cnn", "--preset", "-p", help="Model preset (see `cxr-train presets`)."),
    input_size: int = typer.Option(224, "--input-size", min=16, help="Square input side in pixels."),
    resize: str = typer.Option("stretch", "--resize", help="stretch or letterbox (stored in the model)."),
    crop: str = typer.Option("none", "--crop", help="none; borders: cut uniform borders; lungs: borders, then the "
                             "lung fields found by --lungs (stored in the model)."),
    lungs: Optional[Path] = typer.Option(None, "--lungs", help="Lung segmenter .tflite from `cxr-train lungs`, "
                                         "for --crop lungs (it travels inside the converted model)."),
    margin: float = typer.Option(0.0, "--margin", min=0.0, max=0.2,
                                 help="Fraction cut from each side after --crop (edge text, markers)."),
    normalize: str = typer.Option("none", "--normalize", help="none, equalize or clahe, at the model's input "
                                                              "(stored in the model)."),
    hold_out: List[str] = typer.Option([], "--hold-out", help="Leave this source (dataset folder name) out of "
                                       "training and the threshold, and score it at the end. Repeatable."),
    aug: List[str] = typer.Option([], "--aug", help="Augmentation magnitude NAME=VALUE (rotation_deg, zoom, shift, "
                                  "brightness, contrast, noise, gamma, blur, downscale, sharpen). Repeatable."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    fine_tune_epochs: int = typer.Option(0, "--fine-tune-epochs", min=0,
                                         help="Transfer presets: more epochs with the backbone's top unfrozen."),
    fine_tune_fraction: float = typer.Option(0.3, "--fine-tune-fraction", min=0.0, max=1.0),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    learning_rate: float = typer.Option(1e-3, "--lr"),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam or sgd (momentum 0.9, Nesterov)."),
    schedule: str = typer.Option("plateau", "--schedule", help="plateau (ReduceLROnPlateau), cosine or constant."),
    monitor: str = typer.Option("val_screening_auc", "--monitor",
                                help="val_screening_auc, val_loss or val_accuracy: early stopping and best checkpoint."),
    patience: int = typer.Option(5, "--patience", min=1),
    average_from: int = typer.Option(0, "--average-from", min=0,
                                     help="Ship the weights averaged (every --average-every steps) from this epoch "
                                     "to the end instead of the best validation epoch; no early stopping then "
                                     "(0 = off)."),
    average_every: int = typer.Option(10, "--average-every", min=1, help="Steps between snapshots of the average."),
    balance: str = typer.Option("weights", "--balance", help="weights (class weights), source (every class, and "
                                "every source inside a class, weighs the same), age (as source, inside "
                                "equal halves of normal and abnormal films for children and for adults), "
                                "sampling (balanced batches) or none."),
    val_fraction: float = typer.Option(0.15, "--val-fraction"),
    test_fraction: float = typer.Option(0.15, "--test-fraction"),
    resplit: bool = typer.Option(False, "--resplit", help="Ignore the datasets' own val/test splits; regroup all."),
    resplit_val: bool = typer.Option(False, "--resplit-val", help="Keep the datasets' own test splits; regroup "
                                     "their train + val into train/validation (--val-fraction)."),
    dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="Keep one copy of each near-duplicate group."),
    allow_leakage: bool = typer.Option(False, "--allow-leakage",
                                       help="Train even when near-duplicates cross train/val/test."),
    max_distance: int = MaxDistanceOption,
    alias: List[str] = AliasOption,
    classes: str = ClassesOption,
    weights: str = typer.Option("none", "--weights", help="none (offline default), imagenet, or a weights file."),
    dropout: float = typer.Option(0.2, "--dropout", min=0.0, max=0.9),
    mixstyle: float = typer.Option(0.0, "--mixstyle", min=0.0, max=1.0,
                                   help="MixStyle probability: mix feature statistics (each source's look) between "
                                   "images after the first two conv blocks in training; identity when screening."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Augment the training split."),
    flip: bool = typer.Option(False, "--flip", help="Also mirror left-right (moves the heart; off by default)."),
    noise: float = typer.Option(0.0, "--noise", min=0.0, max=0.2,
                                help="Gaussian noise sigma in augmentation (0 = off; see docs before using)."),
    seed: int = typer.Option(0, "--seed"),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the train/val/test split "
                                             "(default: --seed); fix it to compare or ensemble seeds on one split."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (on with a GPU), on or off."),
    target_sensitivity: float = typer.Option(0.95, "--target-sensitivity",
                                             help="Threshold = highest reaching this sensitivity on validation."),
    per_source_threshold: bool = typer.Option(False, "--per-source-threshold", help="Reach it in every source "
                                              "with 30 abnormal validation images too, not only pooled."),
    name: str = typer.Option("cxr-screen", "--name", help="Model name stored in the metadata."),
    version: str = typer.Option("0.1.0", "--model-version", help="Model version stored in the metadata."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train again into an --out that holds a run."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1, help="Cap steps (quick tries)."),
    cache: Optional[Path] = CacheOption,
    quiet: bool = typer.Option(False, "--quiet", help="One line per epoch instead of progress bars."),
) -> None:
    """Audit, split by near-duplicate groups, train, choose the threshold on validation, write the report."""
    if not resume:
        _refuse_existing_run(out, overwrite, "continue that run with --resume, ")
    from .fit import FitConfig, run

    config = FitConfig(
        data=list(data), out=out, preset=preset, input_size=input_size, resize=resize, crop=crop, margin=margin,
        normalize=normalize, lungs=lungs, hold_out=tuple(hold_out), aug=tuple(aug), epochs=epochs,
        fine_tune_epochs=fine_tune_epochs, fine_tune_fraction=fine_tune_fraction, batch_size=batch_size,
        learning_rate=learning_rate, optimizer=optimizer, schedule=schedule, monitor=monitor, patience=patience,
        average_from=average_from, average_every=average_every,
        balance=balance, val_fraction=val_fraction, test_fraction=test_fraction, use_dataset_splits=not resplit,
        resplit_val=resplit_val,
        dedup=dedup, allow_leakage=allow_leakage, max_distance=max_distance, aliases=parse_alias_overrides(alias),
        classes=_classes(classes), weights=weights, dropout=dropout, mixstyle=mixstyle, augment=augment, flip=flip,
        noise=noise, seed=seed, split_seed=split_seed,
        mixed_precision=mixed_precision, target_sensitivity=target_sensitivity,
        per_source_threshold=per_source_threshold, name=name, version=version,
        resume=resume, steps_per_epoch=steps_per_epoch, cache_path=cache,
        verbose=2 if quiet or not sys.stdout.isatty() else 1,
    )
    run(config)


def _refuse_existing_run(out: Path, overwrite: bool, also: str = "") -> None:
    """Never silently replace a run: an --out that holds files needs --overwrite (or fit's --resume)."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise CxrError(f"{out} already holds files ({held}...); choose a new --out, {also}or replace it with "
                       "--overwrite", code=ExitCode.USAGE, reason="run_exists")


@app.command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="Finished fit runs on one data set and one split (fit "
                                      "--split-seed), e.g. other seeds.", metavar="RUN..."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for the ensemble (model, report, plots)."),
    name: str = typer.Option("cxr-screen", "--name", help="Name in the metadata."),
    version: str = typer.Option("0.1.0", "--model-version", help="Version in the metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what --out holds."),
    per_source_threshold: bool = typer.Option(False, "--per-source-threshold", help="As fit's (also on when the "
                                              "members used it)."),
    quiet: bool = typer.Option(False, "--quiet", help="Less output."),
) -> None:
    """One model from several runs: the mean of their logits, evaluated and reported as fit does (converters
    take its folder like any run's)."""
    _refuse_existing_run(out, overwrite)
    from .ensemble import run_ensemble

    run_ensemble(list(runs), out, name=name, version=version, per_source_threshold=per_source_threshold,
                 verbose=2 if quiet or not sys.stdout.isatty() else 1)


@app.command()
def lungs(
    data: Path = typer.Argument(..., help="Folder with pairs.csv (image, mask, patient_id), e.g. ../shared/data/lung-masks."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for lungs.tflite and lungs.json."),
    epochs: int = typer.Option(40, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the lung-field segmenter used by `fit --crop lungs` (split by patient, IoU on held-out patients)."""
    from .lungs import train

    report = train(data, out, epochs=epochs, seed=seed)
    v = report["validation"]
    typer.echo(f"{out / 'lungs.tflite'}: {report['bytes']:,} bytes, sha256 {report['sha256'][:12]}...; held-out "
               f"patients ({report['data']['val_images']} images): mask IoU {v['mask_iou_mean']:.3f}, box IoU "
               f"{v['box_iou_mean']:.3f}, box found {v['box_found']:.1%} ({report['training']['seconds']:.0f} s)")


@app.command()
def pretrain(
    base: Path = typer.Argument(..., help="A finished fit run: its training films and preprocessing (not its labels "
                                "or weights); its test split and held-out sources stay unseen."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ssl.weights.h5, history.json and probe.json."),
    epochs: int = typer.Option(30, "--epochs", min=0, help="0: only the linear probe of OUT's weights, or of a "
                               "random init where OUT has none (the probe's control)."),
    batch_size: int = typer.Option(128, "--batch-size", min=2, help="Films per batch (2x views)."),
    temperature: float = typer.Option(0.2, "--temperature", min=0.01, help="NT-Xent temperature."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what --out holds."),
) -> None:
    """Self-supervised pretraining (SimCLR) for `fit --weights OUT/ssl.weights.h5`, then a linear probe."""
    if epochs:
        _refuse_existing_run(out, overwrite)
    from .pretrain import pretrain as run_pretrain

    result = run_pretrain(base, out, epochs=epochs, batch_size=batch_size, temperature=temperature, seed=seed,
                          say=lambda line: typer.echo(f"cxr-train: {line}", err=True))
    probe = ", ".join(f"{k} {v:.3f}" for k, v in result["linear_probe_auc"].items() if v is not None)
    typer.echo(f"linear probe on the frozen features, screening AUC: {probe}")


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders written by `cxr-train fit`."),
    tflite: List[str] = typer.Option([], "--tflite", help="RUN=FILE: the int8 .tflite of a run (default: an int8 "
                                     ".tflite in the run folder converted from its model.keras). Repeatable."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Compare runs trained under different protocols "
                                     "(data, split, hold-outs, input size, preprocessing, epoch budget)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as one JSON object."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the Markdown table to FILE.md, the JSON beside it "
                                       "(FILE.json) and the plot (FILE.png)."),
    latency_runs: int = typer.Option(50, "--runs", min=1, help="Timed LiteRT invokes per int8 file."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="LiteRT threads (default: all cores)."),
) -> None:
    """One table and one plot over runs of one protocol: seen vs test vs held-out sources, size, latency."""
    from .compare import compare as run_compare, parse_tflite_options, plot, render_markdown

    result = run_compare(list(runs), tflite=parse_tflite_options(tflite), allow_mixed=allow_mixed,
                         latency_runs=latency_runs, threads=threads)
    markdown = render_markdown(result)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        plot(result, out.with_suffix(".png"))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    else:
        typer.echo(markdown, nl=False)
        if out:
            typer.echo(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")


@app.command()
def study(
    config: Path = typer.Argument(..., help="Study config JSON (docs/study.md): data, out, presets, fit budget."),
) -> None:
    """Train every preset of CONFIG under one protocol, convert each to int8, measure latency, compare."""
    from .study import run_study

    result = run_study(config, say=lambda line: typer.echo(f"cxr-train: {line}"))
    out = Path(result["study"]["config"]["out"])
    typer.echo(f"wrote {out / 'study.md'}, {out / 'study.json'}, {out / 'study.png'}")


@app.command()
def gate(
    data: Path = typer.Argument(..., help="The shared data folder (../shared/data): every frontal source and not-cxr/."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: image cache, gate.keras, cxr-gate.tflite, report."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    samples_per_epoch: int = typer.Option(10000, "--samples-per-epoch", min=64),
    accept: float = typer.Option(0.5, "--accept", min=0.0, max=1.0, help="P(frontal) needed to pass."),
    correct: float = typer.Option(0.9, "--correct", min=0.0, max=1.0,
                                  help="P(turned or inverted) needed to correct instead of refusing."),
    seed: int = typer.Option(0, "--seed"),
    version: str = typer.Option("1.0.0", "--model-version", help="Gate version stored in its metadata."),
) -> None:
    """Train the input gate (frontal chest film or not, turned, inverted) and write it as int8 TFLite."""
    from .gate import GateConfig, train

    report = train(GateConfig(data=data, out=out, epochs=epochs, samples_per_epoch=samples_per_epoch,
                              accept=accept, correct=correct, seed=seed, version=version),
                   progress=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(report["held_out"], indent=1))


@app.command()
def presets() -> None:
    """List the model presets."""
    from models.architectures import PRESETS

    for preset in PRESETS.values():
        tag = "edge" if preset.edge else "    "
        typer.echo(f"{preset.name:20s} {preset.kind:8s} {tag}  {preset.description}")


@app.command()
def aliases() -> None:
    """List the built-in folder/label aliases."""
    for name, target in sorted(DEFAULT_ALIASES.items()):
        typer.echo(f"{name!r:28s} -> {target}")


def main() -> None:
    run_cli(app, "cxr-train", on_interrupt="interrupted (resume with --resume)", train_extra=True)


if __name__ == "__main__":
    main()
