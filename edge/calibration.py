"""Site-specific decision thresholds, each tied to the sha256 of the model it was chosen for.

A threshold calibrated for one model is never used with another: score distributions shift
between model versions, so a lookup for a different hash finds nothing and the model's own
threshold applies. The file ($CXR_EDGE_HOME/thresholds.json) is validated when read: a broken
file or an invalid record is one clear error, never a silent fallback and never a made-up
threshold (a threshold of 1.5 or NaN would call every image normal).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import CxrError, ExitCode
from .paths import calibration_path


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: site threshold file is unreadable ({' '.join(str(exc).split())}); fix it, or "
                       "delete it to use the models' own thresholds", code=ExitCode.STORAGE,
                       reason="bad_calibration") from None
    if not isinstance(data, dict):
        raise CxrError(f"{path}: site threshold file must hold one JSON object (model sha256 -> record), not "
                       f"{type(data).__name__}; fix it, or delete it to use the models' own thresholds",
                       code=ExitCode.STORAGE, reason="bad_calibration")
    return data


def invalid_reason(record) -> str | None:
    """Why a stored record cannot be used, or None when it can."""
    if not isinstance(record, dict):
        return f"the record is {type(record).__name__}, not an object"
    value = record.get("threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"threshold {value!r} is not a number"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return f"threshold {value!r} is not a number in [0, 1]"
    return None


def stored_threshold(model_sha256: str, path: Path | None = None) -> dict | None:
    """The calibration record for exactly this model file, or None. An invalid one is an error."""
    path = path or calibration_path()
    record = _load(path).get(model_sha256)
    if record is None:
        return None
    reason = invalid_reason(record)
    if reason is not None:
        raise CxrError(f"{path}: the site threshold for this model (sha256 {model_sha256[:12]}) is invalid: "
                       f"{reason}; remove it with `cxr-edge thresholds remove {model_sha256[:12]}` or calibrate "
                       "again", code=ExitCode.STORAGE, reason="bad_calibration")
    return record


def all_thresholds(path: Path | None = None) -> dict:
    """Every stored record by model sha256 (invalid ones included, for listing and removal)."""
    return _load(path or calibration_path())


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)  # atomic: a power cut leaves the old file or the new one


def store_threshold(model_sha256: str, record: dict, path: Path | None = None) -> Path:
    path = path or calibration_path()
    data = _load(path)
    data[model_sha256] = record
    _write(path, data)
    return path


def remove_thresholds(shas: list[str], path: Path | None = None) -> dict:
    """Remove these models' records; returns what was removed (sha256 -> record)."""
    path = path or calibration_path()
    data = _load(path)
    removed = {sha: data.pop(sha) for sha in shas if sha in data}
    if removed:
        _write(path, data)
    return removed


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
