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
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edge.datasets import CANONICAL_CLASSES, discover_many  # noqa: E402
from edge.errors import CxrError, ExitCode  # noqa: E402
from edge.metadata import NORMAL_CLASS  # noqa: E402
from edge.preprocess import PreprocessSpec  # noqa: E402

from .audit import default_cache_path, run_audit  # noqa: E402
from .fit_config import MONITORS, FitConfig, FitResult, check_config, say, starts_from_weights  # noqa: E402,F401
from .fit_report import finish, write_json  # noqa: E402
from .heldout import split_held_out  # noqa: E402
from .splits import (assign_splits, leak_summary, leaks, select_images, small_validation_warning,  # noqa: E402
                     split_counts)

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
        say(config, note)
    say(config, f"{len(samples)} images in {len({s.dataset for s in samples})} dataset(s); auditing")
    result = run_audit(samples, max_distance=config.max_distance,
                       cache_path=config.cache_path or default_cache_path(), workers=config.workers)
    indices, dropped = select_images(result, dedup=config.dedup)
    indices, external, copies = split_held_out(samples, result, indices, config.hold_out)
    if config.hold_out:
        dropped["external_copy_of_training_image"] = copies
        say(config, f"held out {', '.join(config.hold_out)}: {len(external)} external images"
                     + (f" ({copies} left out as copies of used images)" if copies else ""))
    splits = assign_splits(result, indices, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                           seed=config.seed if config.split_seed is None else config.split_seed,
                           use_dataset_splits=config.use_dataset_splits,
                           resplit_val=config.resplit_val)
    leaked = leaks(result, splits)
    counts = split_counts(samples, splits)
    return samples, result, indices, dropped, splits, leaked, counts, external


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


def _callbacks(config: FitConfig, ckpt: Path, phase: int, best_value, average):
    import tf_keras as keras

    from .averaging import averaging_callback

    mode = MONITORS[config.monitor]
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(ckpt / "best.weights.h5"), monitor=config.monitor, mode=mode,
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_value),
        keras.callbacks.ModelCheckpoint(str(ckpt / "last.keras"), save_best_only=False),
        _StateCallback(ckpt / "state.json", phase, config.monitor),
        keras.callbacks.CSVLogger(str(config.out / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if average is None:  # with weight averaging the epoch budget is fixed: no early stopping
        callbacks.append(keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience,
                                                       restore_best_weights=False))
    else:
        callbacks.append(averaging_callback(average, start_epoch=config.average_from, every=config.average_every))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=mode, factor=0.5,
                                                           patience=max(1, config.patience // 2), min_lr=1e-6))
    return callbacks


def run(config: FitConfig) -> FitResult:
    """Train and write the run folder; see the module docstring for what it holds."""
    start = time.perf_counter()
    check_config(config)
    config.out = Path(config.out)
    config.out.mkdir(parents=True, exist_ok=True)
    ckpt = config.out / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    if not config.resume:
        for stale in ("history.csv", "checkpoints/state.json", "checkpoints/last.keras", "checkpoints/best.weights.h5"):
            (config.out / stale).unlink(missing_ok=True)
    samples, audit, indices, dropped, splits, leaked, counts, external = prepare_data(config)
    audit_report, by_split = audited_splits(config, samples, audit, indices, dropped, splits)
    if leaked:
        write_json(config.out / "leakage.json", leaked)
        if not config.allow_leakage:
            raise _leakage_error(config.out, leaked)
        say(config, f"WARNING: {leak_summary(leaked)} cross the split (--allow-leakage given)")
    classes = list(config.classes)
    small_val = small_validation_warning(counts)
    if small_val:
        audit_report["warnings"].append(small_val)
        say(config, f"WARNING: {small_val}")
    _write_splits(config.out / "splits.csv", samples, splits)
    say(config, "split (images per class): " + "; ".join(
        f"{s} " + ", ".join(f"{c} {n}" for c, n in sorted(counts[s].items())) for s in counts if counts[s]))

    import tf_keras as keras

    from models.architectures import backbone_of, build_model, get_preset, set_backbone_trainable

    from .data import Augment, class_weights, eval_dataset, train_dataset

    strategy, env = _setup_tf(config)
    spec = PreprocessSpec(height=config.input_size, width=config.input_size, resize=config.resize, crop=config.crop,
                          margin=config.margin, normalize=config.normalize, lungs=_lung_segmenter(config))
    spec.validate()
    paths, labels = image_lists(samples, by_split, external, classes)
    cache_dir = config.out / "cache"
    augment = Augment.with_overrides(Augment(flip=config.flip, noise=config.noise), config.aug) if config.augment \
        else None
    per_image = _per_image_weights(config.balance, [samples[i] for i in by_split["train"]], labels["train"], classes)
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
            say(config, f"resuming after epoch {state['epoch']} (phase {state['phase']})")
        else:
            state = {}
            model = build_model(config.preset, input_size=config.input_size, classes=len(classes),
                                weights=config.weights, dropout=config.dropout, seed=config.seed,
                                mixstyle=config.mixstyle)
            # a random backbone (--weights none) is trained whole, BatchNorm included
            if starts_from_weights(config.weights):
                set_backbone_trainable(model, 0.0)
            _compile(model, config, config.learning_rate, steps, config.epochs)
    average = None
    if config.average_from:
        from .averaging import AVERAGE_FILE, WeightAverage

        average = WeightAverage(model, ckpt / AVERAGE_FILE)
        if not (state and average.load()):
            (ckpt / AVERAGE_FILE).unlink(missing_ok=True)
    fit_kwargs = dict(steps_per_epoch=steps, validation_data=val_ds, class_weight=weights, verbose=config.verbose)
    done_epochs = int(state.get("epoch", 0))
    phase = int(state.get("phase", 1))
    if phase == 1 and done_epochs < config.epochs:
        frozen = backbone_of(model) is not None and starts_from_weights(config.weights)
        say(config, f"training {config.preset} ({model.count_params():,} parameters) for up to {config.epochs} "
                     f"epochs of {steps} steps" + (" with the backbone frozen" if frozen else ""))
        model.fit(train_ds, epochs=config.epochs, initial_epoch=done_epochs,
                  callbacks=_callbacks(config, ckpt, 1, state.get("best"), average), **fit_kwargs)
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
        say(config, f"fine-tuning the top {config.fine_tune_fraction:.0%} of the backbone ({fine_tuned} layers) "
                     f"at learning rate {config.learning_rate / 10:g}, epochs {start_epoch + 1}-{end_epoch}")
        if start_epoch < end_epoch:
            model.fit(train_ds, epochs=end_epoch, initial_epoch=start_epoch,
                      callbacks=_callbacks(config, ckpt, 2, state.get("best"), average), **fit_kwargs)
    if average is not None:
        say(config, f"shipping the weights averaged over {average.apply()} snapshots from epoch "
                     f"{config.average_from} on (the best validation epoch stays in checkpoints/)")
    elif (ckpt / "best.weights.h5").exists():
        model.load_weights(str(ckpt / "best.weights.h5"))
    train_seconds = time.perf_counter() - start

    return finish(config, model, samples, audit_report, by_split, paths, labels, spec, counts, dropped, leaked,
                   env, steps, weights, augment, fine_tuned, train_seconds, start)


def _per_image_weights(balance: str, train_samples, train_labels, classes) -> np.ndarray | None:
    """--balance source / age: one loss weight per training image (train.data)."""
    from edge.groups import age_group

    from .data import age_source_class_weights, source_class_weights

    sources = [s.dataset for s in train_samples]
    if balance == "source":
        return source_class_weights(train_labels, sources)
    if balance == "age":
        return age_source_class_weights(train_labels, sources, [age_group(s) for s in train_samples],
                                        list(classes).index(NORMAL_CLASS))
    return None


def audited_splits(config: FitConfig, samples, audit, indices, dropped, splits) -> tuple[dict, dict]:
    """(audit report, {split: sample indices}): writes audit.json into the run and checks that every split
    holds the classes it needs."""
    audit_report = {**audit.report, "dropped": dropped}
    write_json(config.out / "audit.json", audit_report)
    by_split = {s: [i for i in indices if splits[i] == s] for s in ("train", "val", "test")}
    _check_splits(by_split, samples, list(config.classes))
    return audit_report, by_split


def image_lists(samples, by_split: dict, external, classes) -> tuple[dict, dict]:
    """(paths, labels) per split; adds `by_split["external"]`, the held-out sources' images (label -1 for a
    class the model does not have)."""
    by_split["external"] = [int(i) for i in external]
    label_of = {c: i for i, c in enumerate(classes)}
    paths = {s: [str(samples[i].path) for i in idx] for s, idx in by_split.items()}
    labels = {s: np.array([label_of.get(samples[i].label, -1) for i in idx], np.int32) for s, idx in by_split.items()}
    return paths, labels


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
