"""The end of a `cxr-train fit` run: BatchNorm re-estimation, evaluation (validation, test, held-out
sources, seen training images), threshold, per-source and shortcut checks, and what it writes:
model.keras, model.meta.json, metrics.json, report.md, predictions.csv, plots, Grad-CAM and the summary
table printed at the end."""

from __future__ import annotations

import csv
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.metadata import INTENDED_USE, NORMAL_CLASS, ModelMetadata, file_sha256
from edge.metrics import per_source_wording
from edge.review.log import NOTICE

from . import report as rep
from .fit_config import FitResult, config_dict, say, starts_from_weights
from .heldout import render_sources, source_report
from .splits import leak_summary, seen_subset


def write_json(path: Path, data) -> Path:
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


def _clean_copy(model):
    """The model without optimizer and compile state (what converters and the edge need)."""
    import tf_keras as keras

    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    return clean


def finish(config, model, samples, audit_report, by_split, paths, labels, spec, counts, dropped, leaked, env,
            steps, weights, augment, fine_tuned, train_seconds, start) -> FitResult:
    out, classes = config.out, list(config.classes)
    seen_subset(config.seen_images, config.seed, by_split, paths, labels)
    if config.recalibrate_bn and paths["seen"]:
        from .batchnorm import recalibrate
        from .data import eval_dataset

        used = recalibrate(model, eval_dataset(paths["seen"], labels["seen"], spec, batch_size=config.batch_size,
                                               cache=out / "cache" / "seen"))
        if used:
            say(config, f"BatchNorm statistics re-estimated on {min(len(paths['seen']), used * config.batch_size)} "
                         "clean training images")
    say(config, "evaluating on validation" + (", test" if paths["test"] else "") + (", held-out sources" if
         paths["external"] else "") + f" and {len(paths['seen'])} seen training images (inference mode)")
    probs = {s: _predict(model, paths[s], spec, config.batch_size, out / "cache" / s)
             for s in ("val", "test", "external", "seen") if paths[s]}
    val_sources = [str(samples[i].dataset) for i in by_split["val"]] if config.per_source_threshold else None
    threshold, counted = rep.choose_threshold(labels["val"], probs["val"], classes, config.target_sensitivity,
                                              val_sources)
    evaluation = {s: rep.evaluate(labels[s], probs[s], classes, threshold) for s in probs}
    history = _read_history(out / "history.csv")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if history:
        rep.plot_history(history, plots / "training-curves.png")
    for s in evaluation:
        rep.plot_confusion(evaluation[s]["classes"]["confusion"], classes, plots / f"confusion-{s}.png",
                           f"{s} (n={evaluation[s]['n']})")
        rep.plot_roc(labels[s], probs[s], classes, threshold, plots / f"roc-{s}.png", f"ROC, {s}")
    cams = rep.save_grad_cams(model, paths["val"], labels["val"], probs["val"], classes, spec, out / "gradcam",
                              config.gradcam_per_kind)
    write_predictions(out / "predictions.csv", paths, labels, {s: p for s, p in probs.items() if s != "seen"},
                       classes, threshold)
    say(config, "per-source metrics and shortcut checks")
    sources = source_report(model, samples, by_split, labels, probs, classes, threshold, spec, seed=config.seed)

    threshold_rule = (f"highest threshold on abnormality = 1 - P(normal) whose sensitivity on the validation "
                      f"split ({evaluation['val']['screening']['n_abnormal']} abnormal images) is >= "
                      f"{config.target_sensitivity}{per_source_wording(counted) if val_sources else ''}; refer "
                      "when abnormality >= threshold")
    training_summary = {
        "datasets": audit_report["datasets"], "class_counts": audit_report["class_counts"], "splits": counts,
        "dropped": dropped, "duplicates": audit_report["duplicates"], "warnings": audit_report["warnings"],
        "leakage_pairs_crossing_split": len(leaked), "split_rule": audit_report["split_groups"]["rule"],
        "seed": config.seed, "held_out_sources": list(config.hold_out),
    }
    metrics_summary = {"validation": headline(evaluation["val"])}
    for split in ("test", "external", "seen"):
        if split in evaluation:
            metrics_summary[split] = headline(evaluation[split])
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
    model_sha = file_sha256(model_path)
    meta.source_model_sha256 = model_sha
    meta_path = out / "model.meta.json"
    meta_path.write_text(meta.to_json())
    wall = time.perf_counter() - start
    metrics = {
        "model": {"name": config.name, "version": config.version, "sha256": model_sha, "file": "model.keras"},
        "notice": NOTICE, "intended_use": INTENDED_USE,
        "threshold": float(threshold), "target_sensitivity": config.target_sensitivity,
        "threshold_rule": threshold_rule, "threshold_sources": counted if val_sources else None,
        **evaluation,
        "training": {
            "config": config_dict(config), "steps_per_epoch": steps, "epochs_run": len(history.get("loss", [])),
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
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(render_report(metrics, audit_report, leaked))
    print_summary(config, metrics)
    return FitResult(out, model_path, meta_path, metrics, audit_report, wall)


def headline(evaluation: dict) -> dict:
    s, c = evaluation["screening"], evaluation["classes"]
    keys = ("threshold", "n", "sensitivity", "specificity", "precision", "f1", "accuracy", "auc", "tp", "fp", "tn",
            "fn", "ci95")
    return {"screening": {k: s[k] for k in keys}, "accuracy": c["accuracy"],
            "balanced_accuracy": c["balanced_accuracy"], "macro_f1": c["macro_f1"],
            "per_class_recall": {k: v["recall"] for k, v in c["per_class"].items()},
            "per_class_auc": {k: v["auc"] for k, v in c["per_class"].items()}}


def write_predictions(path, paths, labels, probs, classes, threshold) -> None:
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
    members = t["config"].get("members")
    lines += ["## Training", ""] + ([
              f"Ensemble of {len(members)} runs on one data set and one split, answering with the mean of their "
              f"logits: {', '.join(members)} (their reports say how each was trained). Their training took "
              f"{t['train_seconds']:.0f} s together.", ""] if members else [
              f"Preset {t['config']['preset']}, input {t['config']['input_size']}x{t['config']['input_size']}, "
              f"{t['epochs_run']} epochs of {t['steps_per_epoch']} steps, batch {t['config']['batch_size']}, "
              f"{t['config']['optimizer']} lr {t['config']['learning_rate']} ({t['config']['schedule']}), "
              f"monitor {t['config']['monitor']}, balance {t['config']['balance']}, seed {t['config']['seed']}. "
              + (f"Started from weights: {t['config']['weights']}. "
                 if starts_from_weights(t['config'].get('weights')) else "Started from random weights. ")
              + (f"Shipped weights: the average from epoch {t['config']['average_from']} to the end, a snapshot "
                 f"every {t['config']['average_every']} steps (no early stopping). " if t['config'].get('average_from')
                 else "Shipped weights: the best validation epoch. ") +
              f"Environment: {t['environment']}. Training took {t['train_seconds']:.0f} s, the whole run "
              f"{t['wall_seconds']:.0f} s.", ""]) + [
              "Plots: " + ", ".join(f"plots/{p}" for p in metrics["plots"]) + ". Grad-CAM: gradcam/ "
              "(a few correct and a few wrong validation images).", ""]
    return "\n".join(lines)


def print_summary(config, metrics: dict) -> None:
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
