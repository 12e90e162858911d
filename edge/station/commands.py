"""The `listen` and `outbox` commands, registered on the `cxr-edge` app by edge.cli."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import CxrError, ExitCode
from ..review.log import NOTICE

ForwardOption = typer.Option(None, "--forward", help="Send each screened exam's DICOM SR and heatmap Secondary "
                             "Capture to this PACS node, AE@host:port (kept in the outbox until it answers).")


def register(app: typer.Typer, *, model_option, log_option, threshold_option, delegate_option, threads_option,
             by_age_option) -> None:
    @app.command()
    def listen(
        port: int = typer.Option(11112, "--port", min=1, max=65535, help="TCP port the X-ray unit sends to."),
        ae_title: str = typer.Option("CXREDGE", "--ae-title", help="This node's AE title (at most 16 characters)."),
        bind: str = typer.Option("0.0.0.0", "--bind", help="Address to listen on (127.0.0.1: this machine only)."),
        allow_ae: Optional[List[str]] = typer.Option(None, "--allow-ae", help="Calling AE title allowed to "
                                                     "connect; repeatable. Default: any."),
        forward: Optional[str] = ForwardOption,
        store: Optional[Path] = typer.Option(None, "--store", help="Folder for received images (incoming/, "
                                             "screened/, quarantine/). Default: $CXR_EDGE_HOME/dicom."),
        log: Optional[Path] = log_option,
        model: Optional[Path] = model_option,
        threshold: Optional[float] = threshold_option,
        log_file: Optional[Path] = typer.Option(None, "--log-file", help="Also append every screening event "
                                                "to this text file."),
        forward_retry: float = typer.Option(5.0, "--forward-retry", min=0.1, help="Seconds before the first "
                                            "re-send to an unreachable PACS; doubles each time."),
        forward_retry_max: float = typer.Option(600.0, "--forward-retry-max", min=0.1, help="Longest wait "
                                                "between re-sends (retries never stop)."),
        min_free_mb: int = typer.Option(64, "--min-free-mb", min=0, help="Refuse new images (status 0xA700, the "
                                        "unit retries) while less disk than this is free in the store."),
        quiet: bool = typer.Option(False, "--quiet", help="No line per received instance."),
        delegate: str = delegate_option,
        threads: Optional[int] = threads_option,
        by_age: bool = by_age_option,
    ) -> None:
        """Receive exams from the X-ray unit as a DICOM node (C-STORE, C-ECHO) and screen each one exactly
        once into the review log; optionally send the results to the PACS (stop: Ctrl-C or SIGTERM)."""
        from ..cli import log_path
        from ..paths import data_home
        from .forwarder import parse_destination, valid_ae_title
        from .listen import ListenOptions, run_listen
        from .receiver import ReceiverOptions
        from ..routing import load_routes

        for option, name in [("--ae-title", ae_title)] + [("--allow-ae", n) for n in allow_ae or []]:
            if not valid_ae_title(name):
                raise CxrError(f"{option} {name!r}: an AE title is 1 to 16 printable ASCII characters",
                               code=ExitCode.USAGE, reason="bad_option")
        destination = parse_destination(forward) if forward else None
        routes = load_routes(model, threshold, by_age=by_age, delegate=delegate, threads=threads)
        options = ListenOptions(
            receiver=ReceiverOptions(incoming=Path(), port=port, ae_title=ae_title, bind=bind,
                                     allow_ae=list(allow_ae or []), min_free_bytes=min_free_mb * 2**20),
            store=(store or data_home() / "dicom").absolute(), log=log_path(log), forward=destination,
            forward_first_delay=forward_retry, forward_max_delay=max(forward_retry, forward_retry_max),
            log_file=log_file, quiet=quiet)
        raise typer.Exit(run_listen(options, routes))

    outbox_app = typer.Typer(help="DICOM results waiting for, or delivered to, the PACS (--forward).",
                             no_args_is_help=True)
    app.add_typer(outbox_app, name="outbox")

    @outbox_app.command("list")
    def outbox_list(
        status: Optional[str] = typer.Option(None, "--status", help="Only pending, sent or failed objects."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line per object."),
        log: Optional[Path] = log_option,
    ) -> None:
        """List the result objects (SR, SC) in the outbox with their delivery state, oldest first."""
        from . import outbox

        if status not in (None, *outbox.STATUSES):
            raise CxrError(f"--status must be one of {', '.join(outbox.STATUSES)}", code=ExitCode.USAGE,
                           reason="bad_option")
        with _outbox_log(log) as review_log:
            rows = outbox.listing(review_log, status)
        if as_json:
            for row in rows:
                sys.stdout.write(json.dumps({**row, "notice": NOTICE}, sort_keys=True) + "\n")
            return
        counts = {s: sum(r["status"] == s for r in rows) for s in outbox.STATUSES}
        for r in rows:
            when = r["sent_at"] if r["status"] == "sent" else (
                "next try " + datetime.fromtimestamp(r["next_attempt_at"], timezone.utc).isoformat(timespec="seconds")
                if r["status"] == "pending" else "")
            typer.echo(f"{r['id']:>5}  exam {r['exam_id']:<5} {r['kind'].upper():<3} {r['status']:<8} "
                       f"{r['destination']:<28} attempts {r['attempts']:<3} {when}"
                       + (f"  ({r['last_error']})" if r["last_error"] else ""))
        typer.echo(f"{counts['pending']} pending, {counts['sent']} sent, {counts['failed']} failed")

    @outbox_app.command("retry")
    def outbox_retry(
        ids: Optional[List[int]] = typer.Argument(None, help="Outbox ids (first column of `outbox list`); "
                                                  "default: every failed and pending object."),
        log: Optional[Path] = log_option,
    ) -> None:
        """Make failed objects pending again and every pending object due now; a running listen/watch
        sends them within seconds (objects that could not be built are rebuilt)."""
        from . import outbox

        with _outbox_log(log) as review_log:
            changed = outbox.retry_now(review_log, list(ids) if ids else None)
        typer.echo(f"{changed} object(s) queued for sending now")


def _outbox_log(log: Optional[Path]):
    from ..cli import log_path
    from ..review.log import ReviewLog
    from .outbox import open_outbox

    return open_outbox(ReviewLog(log_path(log), create=False))
