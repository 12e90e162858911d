"""`cxr-train study CONFIG.json`: train every listed preset under one protocol and budget, convert each
to int8, measure LiteRT latency, and compare them (train/compare.py).

CONFIG.json:

    {"data": ["../shared/data"], "out": "runs/study",
     "presets": ["dense", "single-conv", "small-cnn", "vgg16", ...],
     "fit": {"input_size": 96, "epochs": 5, "steps_per_epoch": 60, "batch_size": 32, "patience": 5,
             "hold_out": ["covid-hannover"], "seed": 0},
     "quantize": {"calibration_size": 200}, "latency_runs": 50, "latency_threads": null}

"fit" holds `train.fit.FitConfig` fields shared by every preset (the protocol and the budget);
"data" and "out" are resolved against the config file's folder. Each preset trains in its own
process (`OUT/PRESET/`), then `converters quantize --mode int8` writes `OUT/PRESET/model-int8.tflite`.
A preset whose run folder already holds a finished run of the same protocol is not trained again,
so an interrupted study continues where it stopped. A preset that fails is recorded with its error
line and left out of the table. The study writes OUT/study.json, OUT/study.md and OUT/study.png.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from edge.errors import CxrError, ExitCode

INT8_NAME = "model-int8.tflite"
# early stopping would give every preset a different budget: patience defaults to the whole budget
DEFAULTS = {"epochs": 5, "input_size": 96, "batch_size": 32, "seed": 0, "verbose": 2}
NOT_SHARED = {"data", "out", "preset", "resume", "verbose"}


def load_config(path: Path) -> dict:
    from models.architectures import PRESETS
    from .fit import FitConfig

    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: cannot read the study config ({exc})", code=ExitCode.USAGE,
                       reason="bad_option") from None
    problems = [f"missing {key!r}" for key in ("data", "out", "presets") if key not in config]
    known = {f.name for f in fields(FitConfig)} - NOT_SHARED
    problems += [f"fit.{k} is not a FitConfig field (one of {', '.join(sorted(known))})"
                 for k in config.get("fit", {}) if k not in known]
    problems += [f"unknown preset {p!r}" for p in config.get("presets", []) if p not in PRESETS]
    if not config.get("presets"):
        problems.append("presets is empty")
    if problems:
        raise CxrError(f"{path}: " + "; ".join(problems), code=ExitCode.USAGE, reason="bad_option")
    base = path.resolve().parent
    config["data"] = [str((base / d).resolve()) for d in config["data"]]
    config["out"] = str((base / config["out"]).resolve())
    fit = {**DEFAULTS, **config.get("fit", {})}
    fit.setdefault("patience", fit["epochs"] + fit.get("fine_tune_epochs", 0))
    config["fit"] = fit
    return config


def _fit_one(config: dict, preset: str, out: Path) -> None:
    """In a child process: train one preset (`python -m train.study --one SPEC.json`)."""
    from .fit import FitConfig, run

    fit = dict(config["fit"])
    for key in ("hold_out", "aug", "classes"):
        if key in fit:
            fit[key] = tuple(fit[key])
    for key in ("cache_path", "lungs"):
        if fit.get(key):
            fit[key] = Path(fit[key])
    run(FitConfig(data=list(config["data"]), out=out, preset=preset, **fit))


def _finished(out: Path, config: dict, preset: str) -> bool:
    """A finished run of this preset with the study's data and every one of its fit settings."""
    path = out / "metrics.json"
    if not path.is_file():
        return False
    try:
        c = json.loads(path.read_text())["training"]["config"]
    except (OSError, json.JSONDecodeError, KeyError):
        return False
    same = c.get("preset") == preset and sorted(map(str, c.get("data", []))) == sorted(config["data"])
    return same and all(json.loads(json.dumps(c.get(k))) == json.loads(json.dumps(v))
                        for k, v in config["fit"].items() if k != "verbose")


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["failed without output"])[-1][:300]


def _child(args: list[str], log: Path) -> tuple[int, str]:
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(args, stdout=handle, stderr=subprocess.PIPE, text=True)
        handle.write(proc.stderr)
    return proc.returncode, proc.stderr


def run_study(config_path: Path, *, say=print) -> dict:
    from .compare import compare, plot, render_markdown

    config = load_config(config_path)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "study-config.json").write_text(json.dumps(config, indent=1))
    status = {}
    for preset in config["presets"]:
        run = out / preset
        run.mkdir(exist_ok=True)
        log = run / "study.log"
        start = time.perf_counter()
        entry: dict = {"run": str(run)}
        if _finished(run, config, preset):
            say(f"{preset}: finished run found, not trained again")
            entry["fit"] = "reused"
        else:
            spec = run / "study-spec.json"
            spec.write_text(json.dumps({"config": config, "preset": preset}))
            say(f"{preset}: training (log {log})")
            code, err = _child([sys.executable, "-m", "train.study", "--one", str(spec)], log)
            if code != 0:
                entry.update(fit="failed", error=_last_error(err), exit_code=code)
                say(f"{preset}: training failed: {entry['error']}")
                status[preset] = entry
                continue
            entry["fit"] = "trained"
        metrics = json.loads((run / "metrics.json").read_text())
        entry["train_seconds"] = metrics["training"]["train_seconds"]
        tflite = run / INT8_NAME
        if not _converted(tflite, metrics["model"]["sha256"]):
            say(f"{preset}: converting to int8")
            q = config.get("quantize", {})
            args = [sys.executable, "-m", "converters.cli", "quantize", str(run / "model.keras"), "--out", str(tflite),
                    "--mode", "int8", "--calibration-size", str(q.get("calibration_size", 200)), "--no-layer-report",
                    "--runs", "1", "--json"]
            for d in config["data"]:
                args += ["--data", d]
            code, err = _child(args, log)
            if code != 0:
                entry.update(int8="failed", error=_last_error(err), exit_code=code)
                say(f"{preset}: int8 conversion failed: {entry['error']}")
        entry.setdefault("int8", str(tflite) if tflite.is_file() else None)
        entry["seconds"] = round(time.perf_counter() - start, 1)
        status[preset] = entry
    runs = [out / p for p, e in status.items() if e.get("fit") != "failed"]
    if not runs:
        raise CxrError(f"no preset of {config_path} finished training; see {out}/*/study.log", code=ExitCode.DATA,
                       reason="study_failed")
    say("measuring LiteRT latency and comparing")
    result = compare(runs, latency_runs=int(config.get("latency_runs", 50)),
                     threads=config.get("latency_threads"))
    result["study"] = {"config": config, "status": status}
    (out / "study.json").write_text(json.dumps(result, indent=1))
    failed = [f"{p}: {e.get('error')}" for p, e in status.items() if e.get("error")]
    (out / "study.md").write_text(render_markdown(result) + "".join(f"- failed: {f}\n" for f in failed))
    plot(result, out / "study.png")
    return result


def _converted(tflite: Path, model_sha256: str) -> bool:
    if not tflite.is_file():
        return False
    from edge.metadata import read_model_file

    try:
        return read_model_file(tflite)[1].source_model_sha256 == model_sha256
    except CxrError:
        return False


def main() -> None:  # the per-preset child process
    if len(sys.argv) != 3 or sys.argv[1] != "--one":
        sys.exit("usage: python -m train.study --one SPEC.json (used by cxr-train study)")
    from edge.errors import run_cli

    spec = json.loads(Path(sys.argv[2]).read_text())

    def one() -> None:
        _fit_one(spec["config"], spec["preset"], Path(sys.argv[2]).parent)
    run_cli(one, "cxr-train")


if __name__ == "__main__":
    main()
