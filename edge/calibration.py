"""Site-specific decision thresholds, each tied to the sha256 of the model it was chosen for.

A threshold calibrated for one model is never used with another: score distributions shift
between model versions, so a lookup for a different hash finds nothing and the model's own
threshold applies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CxrError, ExitCode
from .paths import calibration_path


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: calibration file is unreadable ({exc}); fix or delete it",
                       code=ExitCode.STORAGE, reason="bad_calibration") from None
    return data if isinstance(data, dict) else {}


def stored_threshold(model_sha256: str, path: Path | None = None) -> dict | None:
    """The calibration record for exactly this model file, or None."""
    return _load(path or calibration_path()).get(model_sha256)


def store_threshold(model_sha256: str, record: dict, path: Path | None = None) -> Path:
    path = path or calibration_path()
    data = _load(path)
    data[model_sha256] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: a power cut leaves the old file or the new one
    return path


def resolve_threshold(model, override: float | None, path: Path | None = None) -> tuple[float, str]:
    """(threshold, where it came from): --threshold, else this site's calibration, else the model's."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise CxrError(f"--threshold {override} is outside [0, 1]", code=ExitCode.USAGE, reason="bad_option")
        return override, "command line"
    record = stored_threshold(model.sha256, path)
    if record is not None:
        return float(record["threshold"]), "site calibration"
    return model.metadata.threshold, "model metadata"
