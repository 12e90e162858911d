"""What the watcher tells the operator: counters, throughput, a live panel on a terminal, log lines.

On a terminal (stdout is a TTY) a rich Live panel shows the counters; otherwise (systemd, a pipe)
one plain line per exam goes to stdout. `--log-file` adds the same lines with timestamps to a file
for unattended operation.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ..review.log import NOTICE

OUTCOMES = ("screened", "quarantined", "duplicate", "known", "retry", "changed", "gone", "skipped")


@dataclass
class Counters:
    screened: int = 0
    referred: int = 0
    normal: int = 0
    quarantined: int = 0
    duplicates: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    busy_seconds: float = 0.0  # time spent reading, screening, recording and moving files

    @property
    def recorded(self) -> int:
        return self.screened + self.quarantined

    def throughput(self) -> float | None:
        """Exams recorded per second of busy time: what the station sustains during a burst,
        not diluted by the hours the folder was idle."""
        if self.recorded == 0 or self.busy_seconds <= 0:
            return None
        return self.recorded / self.busy_seconds


class StatusReporter:
    def __init__(self, routes, folder: str, *, log_file: str | None = None,
                 live: bool | None = None, queue_length=lambda: 0):
        self.counters = Counters()
        self.routes = routes  # edge.routing.Routes: the model(s) screening, with their thresholds
        self.folder = folder
        self.queue_length = queue_length
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self.console = Console()
        self.lock = threading.Lock()
        self.recent: list[str] = []
        self.logger = logging.getLogger("cxr-edge.station.watch")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.handlers.clear()
        if log_file:
            handler = logging.FileHandler(log_file, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(handler)
        else:  # without it, logging's last-resort handler would print every warning a second time
            self.logger.addHandler(logging.NullHandler())
        self.live: Live | None = None

    # -- lifecycle
    def start(self, poll: bool) -> None:
        line = (f"watching {self.folder} ({'polling' if poll else 'inotify'}); {self.routes.describe()}; "
                f"{NOTICE}")
        self.info(line)
        if self.live_enabled:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def stop(self) -> str:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
        summary = self.summary()
        self.info(summary)
        return summary

    def summary(self) -> str:
        c = self.counters
        rate = c.throughput()
        rate_text = f"{rate:.1f} images/s" if rate is not None else "n/a"
        return (f"stopped: {c.screened} screened ({c.referred} refer, {c.normal} normal), {c.quarantined} "
                f"quarantined, {c.duplicates} duplicates; throughput {rate_text} while busy; "
                f"{time.monotonic() - c.started:.1f} s running")

    # -- events
    def info(self, message: str, *, to_stdout: bool = True) -> None:
        self.logger.info(message)
        if to_stdout:
            if self.live is not None:
                with self.lock:
                    self.recent = (self.recent + [message])[-6:]
                self.live.update(self._render())
            else:
                print(f"cxr-edge watch: {message}", flush=True)

    def warning(self, message: str) -> None:
        self.logger.warning(message)
        if self.live is not None:
            with self.lock:
                self.recent = (self.recent + [f"[yellow]{escape(message)}[/]"])[-6:]
            self.live.update(self._render())
        else:
            print(f"cxr-edge watch: warning: {message}", file=sys.stderr, flush=True)

    def busy(self, seconds: float) -> None:
        self.counters.busy_seconds += seconds

    def outcome(self, kind: str, message: str, *, decision: str | None = None) -> None:
        c = self.counters
        if kind == "screened":
            c.screened += 1
            if decision == "refer":
                c.referred += 1
            else:
                c.normal += 1
        elif kind == "quarantined":
            c.quarantined += 1
        elif kind == "duplicate":
            c.duplicates += 1
        elif kind == "retry":
            c.retries += 1
        elif kind == "skipped":
            self.warning(message)
            return
        if message:
            self.info(message)
        elif self.live is not None:
            self.live.update(self._render())

    def tick(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Table:
        c = self.counters
        rate = c.throughput()
        table = Table(title=f"cxr-edge watch {escape(self.folder)}", title_justify="left", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("screened", str(c.screened))
        table.add_row("[bold red]referred[/]", str(c.referred))
        table.add_row("normal", str(c.normal))
        table.add_row("[yellow]failed (quarantined)[/]", str(c.quarantined))
        table.add_row("duplicates", str(c.duplicates))
        table.add_row("queue", str(self.queue_length()))
        table.add_row("throughput", f"{rate:.1f} images/s" if rate else "-")
        with self.lock:
            for line in self.recent:
                table.add_row("", line if line.startswith("[yellow]") else escape(line))
        models = " + ".join(f"{m.metadata.name} {m.metadata.version} ({m.sha256[:12]})" for m in self.routes.models)
        table.caption = f"model {escape(models)}{' by age' if self.routes.by_age else ''}. {NOTICE}."
        return table
