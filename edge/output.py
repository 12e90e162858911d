"""Readable terminal output (rich) for screening results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.markup import escape

from .review_log import NOTICE


def print_results(results, model, threshold_source: str) -> None:
    console = Console()
    table = Table(title="cxr-edge screening", title_justify="left")
    for column in ("File", "Decision", "Abnormality", "Top class", "Probabilities", "ms"):
        table.add_column(column, justify="right" if column in ("Abnormality", "ms") else "left", overflow="fold")
    for r in results:
        if r.ok:
            d = r.decision
            style = "bold red" if d.decision == "refer" else "green"
            probs = "  ".join(f"{k} {v:.3f}" for k, v in d.probabilities.items())
            table.add_row(escape(r.file), f"[{style}]{d.decision}[/]", f"{d.abnormality:.3f}", d.top_class,
                          probs, f"{r.latency_ms:.1f}")
        else:
            table.add_row(escape(r.file), f"[yellow]{r.status}[/]", "", "", escape(r.reason_code or ""), "")
    console.print(table)
    meta = model.metadata
    threshold = next((r.decision.threshold for r in results if r.ok), meta.threshold)
    console.print(f"model {escape(meta.name)} {escape(meta.version)} (sha256 {model.sha256[:12]}), "
                  f"threshold {threshold:.3f} from {threshold_source}. {NOTICE.capitalize()}.",
                  highlight=False)
