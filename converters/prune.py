"""`converters prune`: magnitude pruning (tensorflow-model-optimization), polynomial-decay schedule.

Prunes Conv2D, SeparableConv2D and Dense kernels, except the first convolution (it sees the raw
image and holds a few hundred weights) and the final classifier (a few hundred weights that decide
everything): pruning those saves almost nothing and costs the most accuracy. The pruning wrappers are stripped before saving, so the output
is a plain Keras model that `converters quantize` takes like any other. What pruning buys on the
edge: zeros compress (gzip bytes shrink), but the int8 kernels do not skip them, so latency of
an int8 model stays the same; see docs/converters.md for measured numbers.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np

from edge.errors import CxrError, ExitCode
from edge.review.log import NOTICE

from .data import run_splits_file
from .finetune import evaluate, fit, split_images
from .sources import SEGMENTER_FILE, load_source

PRUNABLE = ("Conv2D", "SeparableConv2D", "Dense")
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclasses.dataclass
class PruneOptions:
    sparsity: float = 0.5
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-4
    data: list[Path] = dataclasses.field(default_factory=list)
    meta: Path | None = None
    aliases: list[str] = dataclasses.field(default_factory=list)


def schedule_steps(n_images: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """(end_step, frequency): reach the final sparsity on a pruning step inside the run."""
    total = math.ceil(n_images / batch_size) * epochs
    if total < 2:
        raise CxrError(f"pruning needs at least 2 training steps; {n_images} images at batch size {batch_size} "
                       f"for {epochs} epoch(s) give {total}: add --epochs or images", code=ExitCode.USAGE,
                       reason="bad_option")
    frequency = max(1, min(100, total // 10))
    end_step = frequency * ((total - 1) // frequency)
    return end_step, frequency


def add_pruning(model, sparsity: float, end_step: int, frequency: int):
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity,
                                                    begin_step=0, end_step=end_step, frequency=frequency)
    kept = {id(_last_dense(model)), id(_first_conv(model))}

    def wrap(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=wrap)
        if type(layer).__name__ in PRUNABLE and id(layer) not in kept:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    try:
        return keras.models.clone_model(model, clone_function=wrap)
    except (ValueError, TypeError) as exc:
        raise CxrError(f"pruning cannot wrap this model ({str(exc).splitlines()[0][:200]})", code=ExitCode.MODEL,
                       reason="unprunable") from None


def sensitivity_warnings(before: dict | None, after: dict | None, tolerance: float = 0.02) -> list[str]:
    """Pruning moves the scores; the threshold stays the source's, so say when sensitivity fell."""
    if not before or not after or before["sensitivity"] is None or after["sensitivity"] is None:
        return []
    drop = before["sensitivity"] - after["sensitivity"]
    if drop <= tolerance:
        return []
    return [f"validation sensitivity fell from {before['sensitivity']:.3f} to {after['sensitivity']:.3f} at the "
            f"unchanged threshold {after['threshold']:.4f}: re-choose the threshold on validation data (or fine-tune "
            "longer) before shipping this model"]


def _last_dense(model):
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    return dense[-1] if dense else None


def _first_conv(model):
    return next((layer for layer in _all_layers(model) if type(layer).__name__ in ("Conv2D", "SeparableConv2D")), None)


def layer_sparsity(model) -> list[dict]:
    rows = []
    for layer in _all_layers(model):
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in KERNELS:
                values = weight.numpy()
                rows.append({"layer": layer.name, "weight": short, "weights": int(values.size),
                             "sparsity": round(float(np.mean(values == 0)), 4)})
    return rows


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


def prune_model(model_path: Path, out: Path, options: PruneOptions) -> dict:
    import tensorflow_model_optimization as tfmot

    out = Path(out)
    if out.suffix != ".keras":
        raise CxrError(f"--out {out}: the pruned model is a Keras file; name it *.keras", code=ExitCode.USAGE,
                       reason="bad_option")
    source = load_source(model_path, options.meta)
    meta = source.metadata
    train, val = split_images(options.data, meta, options.aliases, run_splits_file(source.path))
    end_step, frequency = schedule_steps(len(train), options.batch_size, options.epochs)
    before = evaluate(source.model, val, meta)
    wrapped = add_pruning(source.model, options.sparsity, end_step, frequency)
    losses = fit(wrapped, train, epochs=options.epochs, batch_size=options.batch_size,
                 learning_rate=options.learning_rate, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    pruned = tfmot.sparsity.keras.strip_pruning(wrapped)
    layers = layer_sparsity(pruned)
    pruned_rows = [r for r in layers if r["sparsity"] > 0]
    total = sum(r["weights"] for r in pruned_rows)
    overall = sum(r["weights"] * r["sparsity"] for r in pruned_rows) / total if total else 0.0
    after = evaluate(pruned, val, meta)
    summary = {"target_sparsity": options.sparsity, "reached_sparsity": round(overall, 4), "epochs": options.epochs,
               "schedule": f"polynomial decay 0 -> {options.sparsity} over steps 0..{end_step} every {frequency}",
               "fine_tuned_on": train.summary(), "source_model_sha256": source.sha256}
    meta_out = dataclasses.replace(
        meta, architecture=f"{meta.architecture} (pruned to {overall:.0%} sparsity)".strip(),
        training_data={**meta.training_data, "pruning": summary},
        metrics={"validation_after_pruning": after, "before_pruning": meta.metrics} if after else
                {"before_pruning": meta.metrics, "note": "no val/test split given: pruned model not re-validated"})
    out.parent.mkdir(parents=True, exist_ok=True)
    pruned.save(out)
    meta_file = out.with_suffix(".meta.json")
    meta_file.write_text(meta_out.to_json() + "\n", encoding="utf-8")
    for data in (source.extra or {}).values():  # the lung segmenter travels with the pruned model
        (out.parent / SEGMENTER_FILE).write_bytes(data)
    splits = run_splits_file(model_path)
    if splits is not None and not (out.parent / "splits.csv").exists():
        shutil.copyfile(splits, out.parent / "splits.csv")  # same training split for calibrating PRUNED
    return {"file": str(out), "metadata_file": str(meta_file), "warnings": sensitivity_warnings(before, after), "source": {"file": str(model_path),
            "sha256": source.sha256}, "target_sparsity": options.sparsity, "overall_sparsity": round(overall, 4),
            "epochs": options.epochs, "loss": losses, "layers": layers, "validation_before": before,
            "validation_after": after, "notice": NOTICE}
