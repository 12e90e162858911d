"""`cxr-train fit` as a Python API: `run(FitConfig(...)) -> FitResult`.

One call: discover the data, audit it (duplicates, leakage), split by groups, train with
checkpoints and early stopping, choose the threshold on validation data, and write the run folder:

RUN/model.keras          the trained tf_keras model (no optimizer; `import models.architectures` first)
RUN/model.meta.json      edge.metadata.ModelMetadata, carried by the converters into the .tflite file
RUN/metrics.json         validation (and test) metrics, threshold table, training summary
RUN/report.md            the same for people, with the audit's warnings
RUN/audit.json           the full audit (every near-duplicate pair)
RUN/splits.csv           path, dataset, label, split of every image used
RUN/history.csv, plots/*.png, gradcam/*.png, checkpoints/ (best.weights.h5, last.keras, state.json)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edge.datasets import CANONICAL_CLASSES, discover_many  # noqa: E402
from edge.errors import CxrError, ExitCode  # noqa: E402
from edge.metadata import INTENDED_USE, NORMAL_CLASS, ModelMetadata  # noqa: E402
from edge.preprocess import PreprocessSpec  # noqa: E402
from edge.review_log import NOTICE  # noqa: E402

from . import report as rep  # noqa: E402
from .audit import DEFAULT_MAX_DISTANCE, default_cache_path, run_audit  # noqa: E402
from .heldout import render_sources, source_report, split_held_out  # noqa: E402
from .splits import (assign_splits, leak_summary, leaks, seen_subset, select_images,  # noqa: E402
                     small_validation_warning, split_counts)

MONITORS = {"val_screening_auc": "max", "val_loss": "min", "val_accuracy": "max"}


@dataclass
class FitConfig:
    data: list  # dataset roots (folders, CSVs, split lists)
    out: Path
    preset: str = "small-cnn"
    input_size: int = 224
    resize: str = "stretch"
    crop: str = "none"  # PreprocessSpec.crop: none | borders
    margin: float = 0.0  # PreprocessSpec.margin
    normalize: str = "none"  # PreprocessSpec.normalize: none | equalize | clahe
    lungs: Path | None = None  # lung segmenter .tflite (cxr-train lungs) for crop="lungs"
    hold_out: tuple = ()  # sources left out of training and scored at the end (train/heldout.py)
    aug: tuple = ()  # NAME=VALUE augmentation magnitudes (train.data.Augment)
    epochs: int = 20
    fine_tune_epochs: int = 0  # transfer presets: epochs after unfreezing the backbone's top
    fine_tune_fraction: float = 0.3
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    schedule: str = "plateau"  # plateau | cosine | constant
    monitor: str = "val_screening_auc"
    patience: int = 5
    balance: str = "weights"  # weights (class) | source (class and source, per image) | sampling | none
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    use_dataset_splits: bool = True
    resplit_val: bool = False  # regroup train + the datasets' own val into train/val; keep their test splits
    dedup: bool = True
    allow_leakage: bool = False
    max_distance: int = DEFAULT_MAX_DISTANCE
    aliases: dict = field(default_factory=dict)
    classes: tuple = ()  # () = those of CANONICAL_CLASSES that the data holds, in that order
    weights: str | None = None  # None/"none", "imagenet", or a weights file
    dropout: float = 0.2
    augment: bool = True
    flip: bool = False
    noise: float = 0.0  # Gaussian noise sigma in augmentation (0 = off)
    seed: int = 0
    deterministic: bool = True
    mixed_precision: str = "auto"  # auto (on when a GPU is present) | on | off
    target_sensitivity: float = 0.95
    name: str = "cxr-screen"
    version: str = "0.1.0"
    resume: bool = False
    steps_per_epoch: int | None = None  # cap, for quick tests
    gradcam_per_kind: int = 4
    seen_images: int = 1000  # training images scored at the end in inference mode ("seen" in metrics.json)
    cache_path: Path | None = None  # audit hash cache; default: default_cache_path()
    workers: int | None = None
    verbose: int = 1  # Keras: 1 progress bar, 2 one line per epoch, 0 silent
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on clean training images (train/batchnorm.py)


@dataclass
class FitResult:
    out: Path
    model_path: Path
    meta_path: Path
    metrics: dict
    audit: dict
    wall_seconds: float


def _say(config: FitConfig, message: str) -> None:
    if config.verbose:
        print(f"cxr-train: {message}", flush=True)


def _check_config(c: FitConfig) -> None:
    problems = []
    if c.monitor not in MONITORS:
        problems.append(f"--monitor {c.monitor} (choose {', '.join(MONITORS)})")
    if c.optimizer not in ("adam", "sgd"):
        problems.append(f"--optimizer {c.optimizer} (adam or sgd)")
    if c.schedule not in ("plateau", "cosine", "constant"):
        problems.append(f"--schedule {c.schedule} (plateau, cosine or constant)")
    if c.balance not in ("weights", "source", "sampling", "none"):
        problems.append(f"--balance {c.balance} (weights, source, sampling or none)")
    if not 0 < c.val_fraction < 1 or not 0 <= c.test_fraction < 1 or c.val_fraction + c.test_fraction >= 0.9:
        problems.append("--val-fraction/--test-fraction must be in (0, 1) and leave room for training")
    if not 0 < c.target_sensitivity <= 1:
        problems.append("--target-sensitivity must be in (0, 1]")
    if c.classes and NORMAL_CLASS not in c.classes:
        problems.append(f"--classes must include {NORMAL_CLASS!r}")
    if problems:
        raise CxrError("invalid options: " + "; ".join(problems), code=ExitCode.USAGE, reason="bad_option")


def prepare_data(config: FitConfig):
    """Discover, audit, select and split. Raises CxrError on leakage unless allowed."""
    notes: list[str] = []
    samples = discover_many(config.data, aliases=config.aliases, classes=tuple(config.classes) or CANONICAL_CLASSES,
                            notes=notes)
    if not config.classes:
        present = {s.label for s in samples}
        config.classes = tuple(c for c in CANONICAL_CLASSES if c in present)
        if NORMAL_CLASS not in config.classes or len(config.classes) < 2:
            raise CxrError(f"the data holds classes {', '.join(config.classes)}: training needs normal and at least "
                           "one other class", code=ExitCode.DATA, reason="missing_class")
    for note in notes:
        _say(config, note)
    _say(config, f"{len(samples)} images in {len({s.dataset for s in samples})} dataset(s); auditing")
    result = run_audit(samples, max_distance=config.max_distance,
                       cache_path=config.cache_path or default_cache_path(), workers=config.workers)
    indices, dropped = select_images(result, dedup=config.dedup)
    indices, external, copies = split_held_out(samples, result, indices, config.hold_out)
    if config.hold_out:
        dropped["external_copy_of_training_image"] = copies
        _say(config, f"held out {', '.join(config.hold_out)}: {len(external)} external images"
                     + (f" ({copies} left out as copies of used images)" if copies else ""))
    splits = assign_splits(result, indices, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                           seed=config.seed, use_dataset_splits=config.use_dataset_splits,
                           resplit_val=config.resplit_val)
    leaked = leaks(result, splits)
    counts = split_counts(samples, splits)
    return samples, result, indices, dropped, splits, leaked, counts, external


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1, sort_keys=False, default=_json_default))
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _leakage_error(out: Path, leaked: list[dict]) -> CxrError:
    first = leaked[0]
    return CxrError(
        f"train/validation/test share {leak_summary(leaked)}, e.g. {first['a']['path']} "
        f"({first['a']['split']}) ~ {first['b']['path']} ({first['b']['split']}); full list in "
        f"{out / 'leakage.json'}; fix the dataset's split, use --resplit to regroup, or --allow-leakage",
        code=ExitCode.CHECK_FAILED, reason="leakage")


def _setup_tf(config: FitConfig):
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    use_mp = config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return strategy, {"gpus": len(gpus), "mixed_precision": use_mp, "strategy": type(strategy).__name__,
                      "tensorflow": tf.__version__}


def _optimizer(config: FitConfig, lr, steps: int, epochs: int):
    import tf_keras as keras

    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps * epochs))
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(learning_rate=lr)


def _compile(model, config: FitConfig, lr, steps: int, epochs: int) -> None:
    import tf_keras as keras

    from .keras_metrics import ScreeningAUC

    model.compile(optimizer=_optimizer(config, lr, steps, epochs),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy", ScreeningAUC(normal_index=list(config.classes).index(NORMAL_CLASS))])


class _StateCallback:
    """Records the last finished epoch (and phase) beside last.keras, so --resume continues there."""

    def __new__(cls, path: Path, phase: int, monitor: str):
        import tf_keras as keras

        class StateCallback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                state = json.loads(path.read_text()) if path.exists() else {}
                value = (logs or {}).get(monitor)
                best = state.get("best")
                better = value is not None and (best is None or (value > best if MONITORS[monitor] == "max"
                                                                 else value < best))
                state.update({"phase": phase, "epoch": epoch + 1,
                              "best": float(value) if better else best})
                path.write_text(json.dumps(state))
        return StateCallback()


def _callbacks(config: FitConfig, ckpt: Path, phase: int, best_value):
    import tf_keras as keras

    mode = MONITORS[config.monitor]
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(ckpt / "best.weights.h5"), monitor=config.monitor, mode=mode,
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_value),
        keras.callbacks.ModelCheckpoint(str(ckpt / "last.keras"), save_best_only=False),
        _StateCallback(ckpt / "state.json", phase, config.monitor),
        keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience,
                                      restore_best_weights=False),
        keras.callbacks.CSVLogger(str(config.out / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=mode, factor=0.5,
                                                           patience=max(1, config.patience // 2), min_lr=1e-6))
    return callbacks


def _read_history(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    history: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                history.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
    return history


def _predict(model, paths, spec, batch_size, cache=None) -> np.ndarray:
    from .data import eval_dataset

    ds = eval_dataset(paths, [0] * len(paths), spec, batch_size=batch_size, cache=cache)
    return np.asarray(model.predict(ds.map(lambda x, y: x), verbose=0), dtype=np.float64)


def run(config: FitConfig) -> FitResult:
    """Train and write the run folder; see the module docstring for what it holds."""
    start = time.perf_counter()
    _check_config(config)
    config.out = Path(config.out)
    config.out.mkdir(parents=True, exist_ok=True)
    ckpt = config.out / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    if not config.resume:
        for stale in ("history.csv", "checkpoints/state.json", "checkpoints/last.keras", "checkpoints/best.weights.h5"):
            (config.out / stale).unlink(missing_ok=True)
    samples, audit, indices, dropped, splits, leaked, counts, external = prepare_data(config)
    audit_report = {**audit.report, "dropped": dropped}
    _write_json(config.out / "audit.json", audit_report)
    if leaked:
        _write_json(config.out / "leakage.json", leaked)
        if not config.allow_leakage:
            raise _leakage_error(config.out, leaked)
        _say(config, f"WARNING: {leak_summary(leaked)} cross the split (--allow-leakage given)")
    classes = list(config.classes)
    by_split = {s: [i for i in indices if splits[i] == s] for s in ("train", "val", "test")}
    _check_splits(by_split, samples, classes)
    small_val = small_validation_warning(counts)
    if small_val:
        audit_report["warnings"].append(small_val)
        _say(config, f"WARNING: {small_val}")
    _write_splits(config.out / "splits.csv", samples, splits)
    _say(config, "split (images per class): " + "; ".join(
        f"{s} " + ", ".join(f"{c} {n}" for c, n in sorted(counts[s].items())) for s in counts if counts[s]))

    import tf_keras as keras

    from models.architectures import backbone_of, build_model, get_preset, set_backbone_trainable

    from .data import Augment, class_weights, eval_dataset, source_class_weights, train_dataset

    strategy, env = _setup_tf(config)
    spec = PreprocessSpec(height=config.input_size, width=config.input_size, resize=config.resize, crop=config.crop,
                          margin=config.margin, normalize=config.normalize, lungs=_lung_segmenter(config))
    spec.validate()
    label_of = {c: i for i, c in enumerate(classes)}
    paths = {s: [str(samples[i].path) for i in idx] for s, idx in by_split.items()}
    labels = {s: np.array([label_of[samples[i].label] for i in idx], np.int32) for s, idx in by_split.items()}
    cache_dir = config.out / "cache"
    augment = Augment.with_overrides(Augment(flip=config.flip, noise=config.noise), config.aug) if config.augment \
        else None
    per_image = (source_class_weights(labels["train"], [samples[i].dataset for i in by_split["train"]])
                 if config.balance == "source" else None)
    train_ds, steps = train_dataset(paths["train"], labels["train"], spec, batch_size=config.batch_size,
                                    seed=config.seed, augment=augment, balanced=config.balance == "sampling",
                                    n_classes=len(classes), cache_dir=cache_dir, sample_weights=per_image)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
        train_ds = train_ds.take(steps)
    val_ds = eval_dataset(paths["val"], labels["val"], spec, batch_size=config.batch_size, cache=cache_dir / "val")
    weights = class_weights(labels["train"], len(classes)) if config.balance == "weights" else None

    state_path = ckpt / "state.json"
    state = json.loads(state_path.read_text()) if config.resume and state_path.exists() else {}
    preset = get_preset(config.preset)
    with strategy.scope():
        if state and (ckpt / "last.keras").exists():
            import models.architectures  # noqa: F401  (registers custom layers)
            from .keras_metrics import ScreeningAUC  # noqa: F401

            model = keras.models.load_model(str(ckpt / "last.keras"))
            _say(config, f"resuming after epoch {state['epoch']} (phase {state['phase']})")
        else:
            state = {}
            model = build_model(config.preset, input_size=config.input_size, classes=len(classes),
                                weights=config.weights, dropout=config.dropout, seed=config.seed)
            if _pretrained(config):  # a random backbone (--weights none) is trained whole, BatchNorm included
                set_backbone_trainable(model, 0.0)
            _compile(model, config, config.learning_rate, steps, config.epochs)
    fit_kwargs = dict(steps_per_epoch=steps, validation_data=val_ds, class_weight=weights, verbose=config.verbose)
    done_epochs = int(state.get("epoch", 0))
    phase = int(state.get("phase", 1))
    if phase == 1 and done_epochs < config.epochs:
        _say(config, f"training {config.preset} ({model.count_params():,} parameters) for up to {config.epochs} "
                     f"epochs of {steps} steps" + (" with the backbone frozen" if backbone_of(model) and _pretrained(config)
                                                   else ""))
        model.fit(train_ds, epochs=config.epochs, initial_epoch=done_epochs,
                  callbacks=_callbacks(config, ckpt, 1, state.get("best")), **fit_kwargs)
    fine_tuned = 0
    if preset.kind == "transfer" and config.fine_tune_epochs > 0:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        resumed_in_phase2 = phase == 2 and "phase2_end" in state
        if resumed_in_phase2:  # last.keras already holds the unfrozen model and its optimizer state
            start_epoch, end_epoch = int(state["epoch"]), int(state["phase2_end"])
            fine_tuned = sum(layer.trainable for layer in backbone_of(model).layers)
        else:
            start_epoch = int(state.get("epoch", config.epochs))
            end_epoch = start_epoch + config.fine_tune_epochs
            state_path.write_text(json.dumps({**state, "phase2_end": end_epoch}))
            if (ckpt / "best.weights.h5").exists():
                model.load_weights(str(ckpt / "best.weights.h5"))
            with strategy.scope():
                fine_tuned = set_backbone_trainable(model, config.fine_tune_fraction)
                _compile(model, config, config.learning_rate / 10.0, steps, config.fine_tune_epochs)
        _say(config, f"fine-tuning the top {config.fine_tune_fraction:.0%} of the backbone ({fine_tuned} layers) "
                     f"at learning rate {config.learning_rate / 10:g}, epochs {start_epoch + 1}-{end_epoch}")
        if start_epoch < end_epoch:
            model.fit(train_ds, epochs=end_epoch, initial_epoch=start_epoch,
                      callbacks=_callbacks(config, ckpt, 2, state.get("best")), **fit_kwargs)
    if (ckpt / "best.weights.h5").exists():
        model.load_weights(str(ckpt / "best.weights.h5"))
    train_seconds = time.perf_counter() - start

    by_split["external"] = [int(i) for i in external]
    paths["external"] = [str(samples[i].path) for i in external]
    labels["external"] = np.array([label_of.get(samples[i].label, -1) for i in external], np.int32)
    return _finish(config, model, samples, audit_report, by_split, paths, labels, spec, counts, dropped, leaked,
                   env, steps, weights, augment, fine_tuned, train_seconds, start)


def _lung_segmenter(config: FitConfig) -> str:
    """crop="lungs": register the segmenter, copy it into the run folder (the converters embed it from
    there), and return its sha256 for the spec."""
    if config.crop != "lungs":
        return ""
    from edge import lungs

    if config.lungs is None or not Path(config.lungs).is_file():
        raise CxrError(f"--crop lungs needs --lungs FILE, the segmenter `cxr-train lungs` wrote (got {config.lungs})",
                       code=ExitCode.USAGE, reason="bad_option")
    data = Path(config.lungs).read_bytes()
    segmenter = lungs.register(data)
    (config.out / "lungs.tflite").write_bytes(data)
    return segmenter.sha256


def _pretrained(config: FitConfig) -> bool:
    return bool(config.weights) and str(config.weights).lower() != "none"


def _check_splits(by_split, samples, classes) -> None:
    for split in ("train", "val"):
        present = {samples[i].label for i in by_split[split]}
        if not by_split[split]:
            raise CxrError(f"the {split} split is empty; add data or change --val-fraction", code=ExitCode.DATA,
                           reason="empty_split")
        if split == "train" and present != set(classes):
            missing = sorted(set(classes) - present)
            raise CxrError(f"no training images for class(es) {', '.join(missing)}; add data or drop the class "
                           "with --classes", code=ExitCode.DATA, reason="missing_class")
    val_labels = {samples[i].label for i in by_split["val"]}
    if NORMAL_CLASS not in val_labels or val_labels == {NORMAL_CLASS}:
        raise CxrError("the validation split needs both normal and abnormal images to choose a threshold; "
                       "raise --val-fraction or add data", code=ExitCode.DATA, reason="empty_split")


def _write_splits(path: Path, samples, splits) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "dataset", "label", "split"])
        for sample, split in zip(samples, splits):
            if split is not None:
                writer.writerow([sample.path, sample.dataset, sample.label, split])


def _clean_copy(model):
    """The model without optimizer and compile state (what converters and the edge need)."""
    import tf_keras as keras

    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    return clean


def _finish(config, model, samples, audit_report, by_split, paths, labels, spec, counts, dropped, leaked, env,
            steps, weights, augment, fine_tuned, train_seconds, start) -> FitResult:
    out, classes = config.out, list(config.classes)
    seen_subset(config.seen_images, config.seed, by_split, paths, labels)
    if config.recalibrate_bn and paths["seen"]:
        from .batchnorm import recalibrate
        from .data import eval_dataset

        used = recalibrate(model, eval_dataset(paths["seen"], labels["seen"], spec, batch_size=config.batch_size,
                                               cache=out / "cache" / "seen"))
        if used:
            _say(config, f"BatchNorm statistics re-estimated on {min(len(paths['seen']), used * config.batch_size)} "
                         "clean training images")
    _say(config, "evaluating on validation" + (", test" if paths["test"] else "") + (", held-out sources" if
         paths["external"] else "") + f" and {len(paths['seen'])} seen training images (inference mode)")
    probs = {s: _predict(model, paths[s], spec, config.batch_size, out / "cache" / s)
             for s in ("val", "test", "external", "seen") if paths[s]}
    threshold = rep.choose_threshold(labels["val"], probs["val"], classes, config.target_sensitivity)
    evaluation = {s: rep.evaluate(labels[s], probs[s], classes, threshold) for s in probs}
    history = _read_history(out / "history.csv")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    rep.plot_history(history, plots / "training-curves.png")
    for s in evaluation:
        rep.plot_confusion(evaluation[s]["classes"]["confusion"], classes, plots / f"confusion-{s}.png",
                           f"{s} (n={evaluation[s]['n']})")
        rep.plot_roc(labels[s], probs[s], classes, threshold, plots / f"roc-{s}.png", f"ROC, {s}")
    cams = rep.save_grad_cams(model, paths["val"], labels["val"], probs["val"], classes, spec, out / "gradcam",
                              config.gradcam_per_kind)
    _write_predictions(out / "predictions.csv", paths, labels, {s: p for s, p in probs.items() if s != "seen"},
                       classes, threshold)
    _say(config, "per-source metrics and shortcut checks")
    sources = source_report(model, samples, by_split, labels, probs, classes, threshold, spec, seed=config.seed)

    threshold_rule = (f"highest threshold on abnormality = 1 - P(normal) whose sensitivity on the validation "
                      f"split ({evaluation['val']['screening']['n_abnormal']} abnormal images) is >= "
                      f"{config.target_sensitivity}; refer when abnormality >= threshold")
    training_summary = {
        "datasets": audit_report["datasets"], "class_counts": audit_report["class_counts"], "splits": counts,
        "dropped": dropped, "duplicates": audit_report["duplicates"], "warnings": audit_report["warnings"],
        "leakage_pairs_crossing_split": len(leaked), "split_rule": audit_report["split_groups"]["rule"],
        "seed": config.seed, "held_out_sources": list(config.hold_out),
    }
    metrics_summary = {"validation": _headline(evaluation["val"])}
    for split in ("test", "external", "seen"):
        if split in evaluation:
            metrics_summary[split] = _headline(evaluation[split])
    if "external" in sources:
        metrics_summary["external_by_source"] = sources["external"]["by_source"]
    meta = ModelMetadata(
        name=config.name, version=config.version, classes=classes, preprocessing=spec, threshold=float(threshold),
        threshold_rule=threshold_rule, architecture=f"{config.preset} (input {config.input_size}x"
                                                    f"{config.input_size}x1, weights {config.weights or 'none'})",
        quantization="none", training_data=training_summary, metrics=metrics_summary,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    meta.validate()
    model_path = out / "model.keras"
    _clean_copy(model).save(str(model_path))
    from edge.metadata import file_sha256

    model_sha = file_sha256(model_path)
    meta.source_model_sha256 = model_sha
    meta_path = out / "model.meta.json"
    meta_path.write_text(meta.to_json())
    wall = time.perf_counter() - start
    metrics = {
        "model": {"name": config.name, "version": config.version, "sha256": model_sha, "file": "model.keras"},
        "notice": NOTICE, "intended_use": INTENDED_USE,
        "threshold": float(threshold), "target_sensitivity": config.target_sensitivity,
        "threshold_rule": threshold_rule,
        **evaluation,
        "training": {
            "config": _config_dict(config), "steps_per_epoch": steps, "epochs_run": len(history.get("loss", [])),
            "parameters": int(model.count_params()),
            "class_weights": weights, "augment": augment.to_dict() if augment else None,
            "fine_tuned_layers": fine_tuned, "environment": {**env, "python": platform.python_version(),
                                                             "machine": platform.machine()},
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(wall, 1), "history": history,
            "seen": {"images": len(paths["seen"]), "of": len(by_split["train"]), "mode": "inference (no augmentation,"
                     " dropout off, BatchNorm moving statistics)", "seed": config.seed},
        },
        "data": training_summary, "sources": sources,
        "plots": sorted(p.name for p in (out / "plots").glob("*.png")), "gradcam": cams,
    }
    _write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(render_report(metrics, audit_report, leaked))
    _print_summary(config, metrics)
    return FitResult(out, model_path, meta_path, metrics, audit_report, wall)


def _headline(evaluation: dict) -> dict:
    s, c = evaluation["screening"], evaluation["classes"]
    keys = ("threshold", "n", "sensitivity", "specificity", "precision", "f1", "accuracy", "auc", "tp", "fp", "tn",
            "fn", "ci95")
    return {"screening": {k: s[k] for k in keys}, "accuracy": c["accuracy"],
            "balanced_accuracy": c["balanced_accuracy"], "macro_f1": c["macro_f1"],
            "per_class_recall": {k: v["recall"] for k, v in c["per_class"].items()},
            "per_class_auc": {k: v["auc"] for k, v in c["per_class"].items()}}


def _config_dict(config: FitConfig) -> dict:
    data = asdict(config)
    data["data"] = [str(d) for d in config.data]
    data["out"] = str(config.out)
    data["cache_path"] = str(config.cache_path) if config.cache_path else None
    data["classes"] = list(config.classes)
    return data


def _write_predictions(path, paths, labels, probs, classes, threshold) -> None:
    normal = classes.index(NORMAL_CLASS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "true"] + [f"p_{c}" for c in classes] + ["abnormality", "decision"])
        for split in probs:
            for p, y, row in zip(paths[split], labels[split], probs[split]):
                abn = 1.0 - row[normal]
                writer.writerow([split, p, classes[y]] + [f"{v:.6f}" for v in row]
                                + [f"{abn:.6f}", "refer" if abn >= threshold else "normal"])


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def render_report(metrics: dict, audit: dict, leaked: list) -> str:
    m = metrics["model"]
    lines = [f"# Training report: {m['name']} {m['version']}", "",
             f"model.keras sha256 `{m['sha256']}`. {metrics['intended_use']}", "",
             f"Threshold **{metrics['threshold']:.4f}**: {metrics['threshold_rule']}.", ""]
    titles = {"val": "Validation", "test": "Test (threshold chosen on validation, never on test)",
              "seen": "Seen: training images scored in inference mode (the generalisation gap is seen vs test)"}
    for split in ("val", "test", "seen"):
        if split not in metrics:
            continue
        ev = metrics[split]
        s = ev["screening"]
        title = titles[split]
        lines += [f"## {title}: {ev['n']} images", "",
                  "| screening (abnormal = not normal) | value | 95% CI |", "| --- | --- | --- |"]
        for key in ("sensitivity", "specificity", "precision", "accuracy", "auc"):
            lines.append(f"| {key} | {_fmt(s[key])} | {_ci(s['ci95'].get(key))} |")
        lines += [f"| f1 | {_fmt(s['f1'])} | |", f"| TP / FP / TN / FN | {s['tp']} / {s['fp']} / {s['tn']} / "
                  f"{s['fn']} | |", "",
                  "| class | precision | recall (sensitivity) | specificity | F1 | AUC | TP | FP | TN | FN | n |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, v in ev["classes"]["per_class"].items():
            lines.append(f"| {name} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['specificity'])} | "
                         f"{_fmt(v['f1'])} | {_fmt(v['auc'])} | {v['tp']} | {v['fp']} | {v['tn']} | {v['fn']} | "
                         f"{v['support']} |")
        classes = ev["classes"]["classes"]
        lines += ["", f"Accuracy {_fmt(ev['classes']['accuracy'])}, balanced accuracy "
                  f"{_fmt(ev['classes']['balanced_accuracy'])}. Confusion matrix (rows true, columns predicted: "
                  f"{', '.join(classes)}): `{ev['classes']['confusion']}`", ""]
    lines += ["## Threshold table (validation)", "",
              "| threshold | sensitivity | specificity | precision | refer rate | TP | FP | TN | FN |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in metrics["val"]["threshold_table"]:
        lines.append(f"| {row['threshold']:.3f} | {_fmt(row['sensitivity'])} | {_fmt(row['specificity'])} | "
                     f"{_fmt(row['precision'])} | {_fmt(row['refer_rate'])} | {row['tp']} | {row['fp']} | "
                     f"{row['tn']} | {row['fn']} |")
    lines += [""] + render_sources(metrics.get("sources") or {})
    d = audit["duplicates"]
    lines += ["", "## Data audit", "",
              f"{audit['n_images']} images from {', '.join(audit['datasets'])}. Near-duplicate pairs (perceptual hash "
              f"distance <= {audit['hash']['max_distance']}): {d['pairs']} ({d['exact_pairs']} byte-identical), "
              f"{d['within_split']} within a split, {d['across_splits']} across a dataset's splits, "
              f"{d['across_datasets']} across datasets, {d['label_conflicts']} with conflicting labels. "
              f"Left out: {metrics['data']['dropped']}. {audit['split_groups']['rule'].capitalize()}. "
              f"Crossing the final split: {leak_summary(leaked) or 'nothing'}.", "", "Images per split: "
              + "; ".join(f"{s}: " + ", ".join(f"{c} {n}" for c, n in sorted(v.items()))
                          for s, v in metrics["data"]["splits"].items() if v), ""]
    if audit["warnings"]:
        lines += ["### Warnings", ""] + [f"- {w}" for w in audit["warnings"]] + [""]
    cross = [p for p in audit["near_duplicate_pairs"] if p["scope"] != "within_split" or p["label_conflict"]]
    if cross:
        lines += ["### Near-duplicates across datasets or splits, and label conflicts", "",
                  "| distance | a | b | labels |", "| --- | --- | --- | --- |"]
        for p in cross[:50]:
            lines.append(f"| {p['distance']} | {p['a']['dataset']}: {p['a']['path']} | {p['b']['dataset']}: "
                         f"{p['b']['path']} | {p['a']['label']} / {p['b']['label']} |")
        lines.append("")
    t = metrics["training"]
    lines += ["## Training", "",
              f"Preset {t['config']['preset']}, input {t['config']['input_size']}x{t['config']['input_size']}, "
              f"{t['epochs_run']} epochs of {t['steps_per_epoch']} steps, batch {t['config']['batch_size']}, "
              f"{t['config']['optimizer']} lr {t['config']['learning_rate']} ({t['config']['schedule']}), "
              f"monitor {t['config']['monitor']}, balance {t['config']['balance']}, seed {t['config']['seed']}. "
              f"Environment: {t['environment']}. Training took {t['train_seconds']:.0f} s, the whole run "
              f"{t['wall_seconds']:.0f} s.", "",
              "Plots: " + ", ".join(f"plots/{p}" for p in metrics["plots"]) + ". Grad-CAM: gradcam/ "
              "(a few correct and a few wrong validation images).", ""]
    return "\n".join(lines)


def _print_summary(config: FitConfig, metrics: dict) -> None:
    if not config.verbose:
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{config.name} {config.version}: screening at threshold {metrics['threshold']:.4f}",
                  title_justify="left")
    for col in ("split", "n", "sensitivity", "specificity", "AUC", "accuracy", "balanced acc."):
        table.add_column(col, justify="right")
    for split in ("seen", "val", "test", "external"):
        if split in metrics:
            s, c = metrics[split]["screening"], metrics[split]["classes"]
            table.add_row(split, str(s["n"]), _fmt(s["sensitivity"]) + _ci(s["ci95"]["sensitivity"]),
                          _fmt(s["specificity"]) + _ci(s["ci95"]["specificity"]), _fmt(s["auc"]),
                          _fmt(c["accuracy"]), _fmt(c["balanced_accuracy"]))
    console.print(table)
    console.print(f"run folder {config.out} ({metrics['training']['wall_seconds']:.0f} s). "
                  f"{NOTICE.capitalize()}.", highlight=False)
    for warning in metrics["data"]["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    sys.stdout.flush()
