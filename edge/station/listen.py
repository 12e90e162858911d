"""`cxr-edge listen`: a DICOM node for the X-ray unit, screening through the watch path.

Three parts, one process:
- the receiver (pynetdicom SCP, its own threads) writes each instance into STORE/incoming durably
  and only then answers Success;
- `cxr-edge watch`'s own machinery (edge.station.watch.run_watch) screens what lands in STORE/incoming:
  exactly once by content hash, into the same review log, quarantining refusals and failures with
  their reason, moving originals to STORE/screened and STORE/quarantine after the commit;
- with --forward, the outbox worker (edge.station.forwarder) builds each screened exam's SR and
  Secondary Capture and sends them to the PACS, behind the screening.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import CxrError, ExitCode
from ..routing import Routes
from .watch import WatchOptions, run_watch
from . import outbox
from .forwarder import Destination, forwarding
from .receiver import Receiver, ReceiverOptions


@dataclass
class ListenOptions:
    receiver: ReceiverOptions
    store: Path
    log: Path
    forward: Destination | None = None
    forward_first_delay: float = outbox.FIRST_DELAY
    forward_max_delay: float = outbox.MAX_DELAY
    log_file: Path | None = None
    quiet: bool = False


def _line(prefix: str):
    def write(line: str) -> None:
        sys.stderr.write(f"cxr-edge {prefix}: {line}\n")
        sys.stderr.flush()
    return write


def _waiting(incoming: Path) -> bool:
    """Received exams not screened yet (screened ones are moved out of incoming/)."""
    try:
        return any(entry.name.endswith(".dcm") and not entry.name.startswith(".") for entry in os.scandir(incoming))
    except OSError:
        return False


def run_listen(options: ListenOptions, routes: Routes) -> int:
    store = options.store
    incoming = store / "incoming"
    try:
        for folder in (incoming, store / "screened", store / "quarantine"):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrError(f"{store}: cannot create the store folders ({exc.strerror})", code=ExitCode.STORAGE,
                       reason="store_unwritable") from None
    options.receiver.incoming = incoming
    watch_options = WatchOptions(
        folder=incoming, log=options.log,
        settle=0.5, retries=1,  # files arrive complete (renamed into place): a failure will not heal
        move_done=store / "screened", move_failed=store / "quarantine", log_file=options.log_file, live=False,
        source="listen")
    say = (lambda line: None) if options.quiet else _line("listen")
    receiver = Receiver(options.receiver, say=say, warn=_line("listen"))
    with forwarding(options.forward, options.log, routes.models, calling_ae=options.receiver.ae_title,
                    first_delay=options.forward_first_delay, max_delay=options.forward_max_delay,
                    busy=lambda: _waiting(incoming), moved=(incoming, store / "screened")):
        try:
            receiver.start()
        except OSError as exc:
            r = options.receiver
            raise CxrError(f"cannot listen on {r.bind}:{r.port} ({exc.strerror or exc}); is another listener "
                           "running? (ports below 1024 need root or CAP_NET_BIND_SERVICE)", code=ExitCode.USAGE,
                           reason="port_unavailable") from None
        _line("listen")(f"DICOM node {options.receiver.ae_title} on {options.receiver.bind}:{options.receiver.port}"
                        f" (allowed calling AE titles: {', '.join(options.receiver.allow_ae) or 'any'}); "
                        f"store {store}; results to {options.forward or 'nowhere (no --forward)'}")
        try:
            return run_watch(watch_options, routes)
        finally:
            receiver.stop()
