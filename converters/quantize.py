"""`converters quantize`: Keras model -> one .tflite with its metadata inside, plus its reports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np

from edge.errors import CxrError, ExitCode
from edge.metadata import ModelMetadata
from edge.review.log import NOTICE

from .cam import with_cam_output
from .convert import MODES, convert, output_indices
from .data import ImageSet, find_samples, load_images, run_splits_file, stratified_sample, training_part
from .edgetpu import check_edgetpu
from .sources import SourceModel, load_source, load_source_metadata
from .tflite_metadata import embed_metadata
from .tflite_model import read_graph

DEFAULT_CALIBRATION = 200
LAYER_DEBUG_IMAGES = 32  # per-layer error is measured on this many calibration images


@dataclasses.dataclass
class QuantizeOptions:
    mode: str = "int8"
    data: list[Path] = dataclasses.field(default_factory=list)
    meta: Path | None = None
    calibration_size: int = DEFAULT_CALIBRATION
    edgetpu: bool = False
    cam: bool = False
    name: str | None = None
    version: str | None = None
    sidecar: bool = True
    aliases: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0
    layer_report: bool = True
    latency_runs: int = 50


def quantize(model_path: Path, out: Path, options: QuantizeOptions) -> dict:
    check_options(options)
    # Metadata and data first: their mistakes are reported before TensorFlow has even loaded.
    samples = calibration_samples(Path(model_path), options) if options.data else None
    if options.mode == "int8" and samples is None:
        raise CxrError("int8 needs calibration images: give --data with the training data", code=ExitCode.USAGE,
                       reason="bad_option")
    source = load_source(model_path, options.meta)
    calibration = load_images(samples, source.metadata.preprocessing, source.metadata.classes) if samples else None
    keras_model = with_cam_output(source.model) if options.cam else source.model
    tflite = convert(keras_model, options.mode, calibration.images if calibration is not None else None)
    outputs = output_indices(tflite, options.cam)
    edgetpu = check_edgetpu(read_graph(tflite)) if options.mode == "int8" else None
    if options.edgetpu and not edgetpu.compatible:
        raise CxrError(f"{model_path}: not Edge TPU compatible: {edgetpu.summary()}; nothing written",
                       code=ExitCode.CHECK_FAILED, reason="edgetpu_unsupported")
    metadata = output_metadata(source, options, outputs, calibration)
    write_model(out, embed_metadata(tflite, metadata, source.extra), metadata, options.sidecar)
    return build_report(out, source, metadata, options, calibration, edgetpu, keras_model)


def check_options(options: QuantizeOptions) -> None:
    if options.mode not in MODES:
        raise CxrError(f"--mode {options.mode!r}: choose {', '.join(MODES)}", code=ExitCode.USAGE, reason="bad_option")
    if options.edgetpu and options.mode != "int8":
        raise CxrError(f"--edgetpu needs --mode int8 (the Edge TPU runs only full-integer models), "
                       f"not {options.mode}", code=ExitCode.USAGE, reason="bad_option")
    if options.calibration_size < 1:
        raise CxrError("--calibration-size must be at least 1", code=ExitCode.USAGE, reason="bad_option")


def calibration_samples(model_path: Path, options: QuantizeOptions) -> list:
    """A class-stratified sample of the training split (RUN/splits.csv when cxr-train wrote one)."""
    meta = load_source_metadata(model_path, options.meta)
    samples = training_part(find_samples(options.data, meta.classes, options.aliases, run_splits_file(model_path)))
    chosen = stratified_sample(samples, options.calibration_size, options.seed)
    if len(chosen) < options.calibration_size:
        sys.stderr.write(f"converters: only {len(chosen)} images available for calibration "
                         f"(asked for {options.calibration_size})\n")
    return chosen


def output_metadata(source: SourceModel, options: QuantizeOptions, outputs: dict,
                    calibration: ImageSet | None, quantization: str | None = None,
                    extra_training: dict | None = None) -> ModelMetadata:
    meta = source.metadata
    training = dict(meta.training_data)
    if calibration is not None and options.mode == "int8":
        training["int8_calibration"] = {**calibration.summary(), "seed": options.seed,
                                        "data": [str(p) for p in options.data],
                                        "selection": "class-stratified sample of the training split"}
    training.update(extra_training or {})
    metrics = dict(meta.metrics)
    metrics.setdefault("measured_on", f"Keras model before conversion (sha256 {source.sha256}); "
                                      "`converters parity` measures this file")
    return dataclasses.replace(
        meta,
        name=options.name or meta.name,
        version=options.version or meta.version,
        quantization=quantization or options.mode,
        source_model_sha256=source.sha256,
        outputs=outputs,
        training_data=training,
        metrics=metrics,
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )


def write_model(out: Path, data: bytes, metadata: ModelMetadata, sidecar: bool) -> None:
    """Write atomically (a half-written model must never be picked up); the sidecar is an extra copy."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
        if sidecar:
            Path(f"{out}.json").write_text(metadata.to_json() + "\n", encoding="utf-8")
    except OSError as exc:
        raise CxrError(f"{out}: cannot write the model ({exc.strerror or exc})", code=ExitCode.STORAGE,
                       reason="unwritable") from None


def build_report(out: Path, source: SourceModel, metadata: ModelMetadata, options: QuantizeOptions,
                 calibration: ImageSet | None, edgetpu, keras_model) -> dict:
    from .size_report import file_report

    report = {
        "file": str(out),
        "source": {"file": str(source.path), "sha256": source.sha256},
        "mode": options.mode,
        "outputs": metadata.outputs,
        "calibration": calibration.summary() if calibration is not None and options.mode == "int8" else None,
        "size": file_report(out, runs=options.latency_runs),
        "edgetpu": edgetpu.to_dict() if edgetpu is not None else None,
        "notice": NOTICE,
    }
    report["model"] = {"name": metadata.name, "version": metadata.version, "sha256": report["size"]["sha256"]}
    if options.mode == "int8" and options.layer_report and calibration is not None:
        from .layer_error import layer_errors
        debug = calibration.images[np.linspace(0, len(calibration) - 1,
                                               min(LAYER_DEBUG_IMAGES, len(calibration))).astype(int)]
        report["layer_error"] = layer_errors(keras_model, calibration.images, debug)
    return report
