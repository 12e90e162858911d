"""Where cxr-edge keeps its files by default, and where the bundled model lives."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FILE = "cxr-default.tflite"
GATE_MODEL_FILE = "cxr-gate.tflite"  # bundled too, but it screens nothing: not a --model name


def data_home() -> Path:
    """$CXR_EDGE_HOME, else $XDG_DATA_HOME/cxr-edge, else ~/.local/share/cxr-edge."""
    if os.environ.get("CXR_EDGE_HOME"):
        return Path(os.environ["CXR_EDGE_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cxr-edge"


def default_log_path() -> Path:
    return data_home() / "review.sqlite"


def calibration_path() -> Path:
    return data_home() / "thresholds.json"


def _bundled_file(filename: str) -> Path:
    """A file of the `models` package (shipped inside the wheel)."""
    return Path(str(resources.files("models").joinpath(filename)))


def default_model_path() -> Path:
    """The default model bundled in the `models` package."""
    return _bundled_file(DEFAULT_MODEL_FILE)


def bundled_models() -> list[str]:
    """Names of the screening models bundled in the `models` package (cxr-default, cxr-pediatric, ...)."""
    folder = resources.files("models")
    return sorted(entry.name[: -len(".tflite")] for entry in folder.iterdir()
                  if entry.name.endswith(".tflite") and entry.name != GATE_MODEL_FILE)


def resolve_model(model: str | Path | None) -> Path:
    """--model: a .tflite path, or the name of a bundled model (`-m cxr-pediatric`); None: the default model."""
    if model is None:
        return default_model_path()
    path = Path(model)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    if path.name in bundled_models():
        return _bundled_file(f"{path.name}.tflite")
    from .errors import CxrError, ExitCode
    raise CxrError(f"--model {model}: no such file, and not a bundled model (bundled: {', '.join(bundled_models())})",
                   code=ExitCode.MODEL, reason="model_not_found")
