"""Where cxr-edge keeps its files by default, and where the bundled model lives."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FILE = "cxr-default.tflite"


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


def default_model_path() -> Path:
    """The model bundled in the `models` package (shipped inside the wheel)."""
    return Path(str(resources.files("models").joinpath(DEFAULT_MODEL_FILE)))
