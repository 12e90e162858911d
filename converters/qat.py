"""`converters qat`: quantization-aware fine-tuning, then full-integer int8 conversion.

For when post-training int8 loses too much (parity fails): the fine-tuning sees int8 rounding
through fake-quant ops and learns around it. With --preserve-sparsity on a pruned model, the
prune-preserving scheme keeps its zeros, so prune -> QAT -> int8 keeps the gzip gain.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edge.errors import CxrError, ExitCode

from .convert import convert, output_indices
from .edgetpu import check_edgetpu
from .data import run_splits_file
from .finetune import evaluate, fit, split_images
from .quantize import QuantizeOptions, build_report, output_metadata, write_model
from .sources import load_source
from .tflite_metadata import embed_metadata
from .tflite_model import read_graph


@dataclasses.dataclass
class QatOptions:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-5
    preserve_sparsity: bool = False
    calibration_size: int = 200
    data: list[Path] = dataclasses.field(default_factory=list)
    meta: Path | None = None
    name: str | None = None
    version: str | None = None
    sidecar: bool = True
    aliases: list[str] = dataclasses.field(default_factory=list)


def quantize_aware(model, preserve_sparsity: bool):
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras
    try:
        if preserve_sparsity:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            return q.quantize_apply(q.quantize_annotate_model(model), scheme)
        return q.quantize_model(model)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CxrError(f"quantization-aware training does not support this model ({first}); use post-training "
                       "`converters quantize --mode int8`", code=ExitCode.MODEL, reason="qat_unsupported") from None


def qat_model(model_path: Path, out: Path, options: QatOptions) -> dict:
    source = load_source(model_path, options.meta)
    meta = source.metadata
    train, val = split_images(options.data, meta, options.aliases, run_splits_file(source.path))
    q_model = quantize_aware(source.model, options.preserve_sparsity)
    losses = fit(q_model, train, epochs=options.epochs, batch_size=options.batch_size,
                 learning_rate=options.learning_rate)
    # The fake-quant ops carry the trained ranges; the converter still wants a few images for full-int8 I/O.
    calibration = train.images[np.linspace(0, len(train) - 1, min(options.calibration_size, len(train))).astype(int)]
    tflite = convert(q_model, "int8", calibration)
    outputs = output_indices(tflite, with_cam=False)
    qopts = QuantizeOptions(mode="int8", data=options.data, meta=options.meta, name=options.name,
                            version=options.version, sidecar=options.sidecar, aliases=options.aliases,
                            layer_report=False)
    summary = {"epochs": options.epochs, "learning_rate": options.learning_rate, "fine_tuned_on": train.summary(),
               "preserve_sparsity": options.preserve_sparsity, "loss": losses,
               "validation_keras_qat": evaluate(q_model, val, meta)}
    metadata = output_metadata(source, qopts, outputs, None, extra_training={"quantization_aware_training": summary})
    write_model(out, embed_metadata(tflite, metadata, source.extra), metadata, options.sidecar)
    report = build_report(out, source, metadata, qopts, None, check_edgetpu(read_graph(tflite)), q_model)
    lines = [f"quantization-aware fine-tuning: {options.epochs} epoch(s) on {len(train)} images, loss {losses}"]
    report["qat"] = {**summary, "lines": lines}
    return report
