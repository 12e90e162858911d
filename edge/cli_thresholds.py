"""`cxr-edge thresholds list|remove`: the site thresholds `cxr-edge calibrate` stored, and undoing them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .calibration import all_thresholds, invalid_reason, remove_thresholds
from .errors import CxrError, ExitCode
from .metadata import file_sha256
from .paths import calibration_path
from .review.log import NOTICE

thresholds_app = typer.Typer(help="List or remove this site's calibrated thresholds (cxr-edge calibrate).",
                             no_args_is_help=True)


def describe(sha256: str, record) -> str:
    """One line for a stored record: which model, what threshold, chosen on what, stored how."""
    reason = invalid_reason(record)
    if reason is not None:
        return f"{sha256[:12]}  INVALID ({reason}): remove it with `cxr-edge thresholds remove {sha256[:12]}`"
    model = record.get("model") or {}
    n = f"{record.get('n_abnormal', '?')} abnormal + {record.get('n_normal', '?')} normal images"
    forced = ", stored with --force although too uncertain" if record.get("forced") else ""
    return (f"{sha256[:12]}  {model.get('name', '?')} {model.get('version', '?')}: threshold "
            f"{record['threshold']:.4f} for sensitivity {record.get('target_sensitivity', '?')} on {n}, "
            f"{record.get('created', '?')}{forced}")


@thresholds_app.command("list")
def list_thresholds(as_json: bool = typer.Option(False, "--json", help="One JSON object per line per model.")):
    """List the stored site thresholds, one per model file (by sha256)."""
    path = calibration_path()
    records = all_thresholds(path)
    if as_json:
        for sha, record in sorted(records.items()):
            reason = invalid_reason(record)
            row = {"model_sha256": sha, "stored_in": str(path), "valid": reason is None, "invalid_reason": reason,
                   "record": _finite(record), "notice": NOTICE}
            sys.stdout.write(json.dumps(row, sort_keys=True, default=str, allow_nan=False) + "\n")
        return
    if not records:
        typer.echo(f"no site thresholds in {path}: every model uses its own threshold")
        return
    typer.echo(f"site thresholds in {path} (used for that exact model file only):")
    for sha, record in sorted(records.items()):
        typer.echo("  " + describe(sha, record))


@thresholds_app.command("remove")
def remove(
    sha256: Optional[List[str]] = typer.Argument(None, help="Model sha256 (or a unique prefix, 8+ characters) "
                                                            "as `thresholds list` shows it."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Remove the threshold of this .tflite file."),
    remove_all: bool = typer.Option(False, "--all", help="Remove every site threshold."),
) -> None:
    """Remove site thresholds: screen, watch and eval then use the model's own threshold again."""
    records = all_thresholds()
    wanted = list(records) if remove_all else [_match(p, records) for p in (sha256 or [])]
    if model is not None:
        if not model.is_file():
            raise CxrError(f"{model}: model file not found", code=ExitCode.MODEL, reason="model_not_found")
        digest = file_sha256(model)
        if digest not in records:
            raise CxrError(f"{model}: no site threshold is stored for this model file (sha256 {digest[:12]})",
                           code=ExitCode.USAGE, reason="no_threshold")
        wanted.append(digest)
    if not wanted and not remove_all:
        raise CxrError("say which threshold to remove: a sha256 prefix, --model FILE or --all", code=ExitCode.USAGE,
                       reason="bad_option")
    for sha, record in remove_thresholds(wanted).items():
        typer.echo(f"removed {describe(sha, record)}")
    typer.echo(f"{len(wanted)} removed; those models now use their own threshold")


def _finite(value):
    """JSON has no NaN or Infinity: a hand-edited record's non-finite numbers are shown as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _match(prefix: str, records: dict) -> str:
    prefix = prefix.strip().lower()
    hits = [sha for sha in records if sha.startswith(prefix)] if len(prefix) >= 8 else []
    if len(hits) != 1:
        why = "matches several" if hits else ("is too short (8+ characters)" if len(prefix) < 8 else "matches none")
        raise CxrError(f"sha256 {prefix!r} {why} of the stored site thresholds (see `cxr-edge thresholds list`)",
                       code=ExitCode.USAGE, reason="no_threshold")
    return hits[0]
