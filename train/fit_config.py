"""`cxr-train fit`'s options: `FitConfig`, their checks, and their record in `metrics.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.errors import CxrError, ExitCode
from edge.metadata import NORMAL_CLASS

from .audit import DEFAULT_MAX_DISTANCE

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
    average_from: int = 0  # 0: ship the best validation epoch; k: ship the weights averaged from epoch k on
    average_every: int = 10  # training steps between two snapshots of the average (train/averaging.py)
    balance: str = "weights"  # weights (class) | source (class and source) | age (age, abnormal, class, source) | sampling | none
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
    mixstyle: float = 0.0  # MixStyle probability after the first two conv blocks (models.architectures.MixStyle)
    augment: bool = True
    flip: bool = False
    noise: float = 0.0  # Gaussian noise sigma in augmentation (0 = off)
    seed: int = 0
    split_seed: int | None = None  # None: the split is drawn with `seed` too
    deterministic: bool = True
    mixed_precision: str = "auto"  # auto (on when a GPU is present) | on | off
    target_sensitivity: float = 0.95
    per_source_threshold: bool = False  # the target in every source with >= 30 abnormal validation images too
    name: str = "cxr-screen"
    version: str = "0.1.0"
    resume: bool = False
    steps_per_epoch: int | None = None  # cap, for quick tests
    gradcam_per_kind: int = 4
    seen_images: int = 1000  # training images scored at the end in inference mode ("seen" in metrics.json)
    cache_path: Path | None = None  # audit hash cache; default: default_cache_path()
    workers: int | None = None
    verbose: int = 1  # Keras: 1 progress bar, 2 one line per epoch, 0 silent
    members: tuple = ()  # cxr-train ensemble: the member runs (train/ensemble.py); () for a trained model
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on clean training images (train/batchnorm.py)


def check_config(c: FitConfig) -> None:
    problems = []
    if c.monitor not in MONITORS:
        problems.append(f"--monitor {c.monitor} (choose {', '.join(MONITORS)})")
    if c.optimizer not in ("adam", "sgd"):
        problems.append(f"--optimizer {c.optimizer} (adam or sgd)")
    if c.schedule not in ("plateau", "cosine", "constant"):
        problems.append(f"--schedule {c.schedule} (plateau, cosine or constant)")
    if c.balance not in ("weights", "source", "age", "sampling", "none"):
        problems.append(f"--balance {c.balance} (weights, source, age, sampling or none)")
    if not 0 < c.val_fraction < 1 or not 0 <= c.test_fraction < 1 or c.val_fraction + c.test_fraction >= 0.9:
        problems.append("--val-fraction/--test-fraction must be in (0, 1) and leave room for training")
    if not 0 < c.target_sensitivity <= 1:
        problems.append("--target-sensitivity must be in (0, 1]")
    if c.average_from < 0 or c.average_from > c.epochs + c.fine_tune_epochs or c.average_every < 1:
        problems.append(f"--average-from {c.average_from} must be between 1 and the number of epochs "
                        f"({c.epochs + c.fine_tune_epochs}), --average-every at least 1")
    if not 0 <= c.mixstyle <= 1:
        problems.append(f"--mixstyle {c.mixstyle} must be between 0 and 1")
    if c.classes and NORMAL_CLASS not in c.classes:
        problems.append(f"--classes must include {NORMAL_CLASS!r}")
    if problems:
        raise CxrError("invalid options: " + "; ".join(problems), code=ExitCode.USAGE, reason="bad_option")


def starts_from_weights(weights: str | None) -> bool:
    """True when --weights names pretrained weights (imagenet or a file), False for a random init."""
    return bool(weights) and str(weights).lower() != "none"


def config_dict(config: FitConfig) -> dict:
    data = asdict(config)
    data["data"] = [str(d) for d in config.data]
    data["out"] = str(config.out)
    data["cache_path"] = str(config.cache_path) if config.cache_path else None
    data["classes"] = list(config.classes)
    return data


@dataclass
class FitResult:
    out: Path
    model_path: Path
    meta_path: Path
    metrics: dict
    audit: dict
    wall_seconds: float


def say(config: FitConfig, message: str) -> None:
    if config.verbose:
        print(f"cxr-train: {message}", flush=True)
