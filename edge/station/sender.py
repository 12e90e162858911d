"""C-STORE of due outbox objects to the PACS, over one association per round.

Each object is offered in the transfer syntax it was built in and in explicit VR little endian; a
PACS that does not take the compressed one (a JPEG Secondary Capture) gets it decompressed. A
Success or a warning status marks the object sent; a failure status is a refusal (counted, see
outbox.mark_unsent); no answer or no association leaves it pending for the next try.
"""

from __future__ import annotations

import threading
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from ..review.log import ReviewLog
from . import outbox

WARNING_STATUSES = (0xB000, 0xB006, 0xB007)  # stored, with a coercion or element note: still delivered


def _accepted(assoc) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))
    return accepted


def _sendable(ds, accepted: dict[str, set[str]]):
    """The dataset in a transfer syntax the PACS accepted for its class, or None."""
    syntaxes = accepted.get(str(ds.SOPClassUID), set())
    if str(ds.file_meta.TransferSyntaxUID) in syntaxes:
        return ds
    if ExplicitVRLittleEndian in syntaxes and ds.file_meta.TransferSyntaxUID.is_compressed:
        # Same picture, other encoding: the SOP Instance UID stays, so a PACS still dedupes a re-send.
        ds.decompress(generate_instance_uid=False)
        return ds
    return None


def deliver(log: ReviewLog, items: list[outbox.Item], destination, *, calling_ae: str, timeout: float,
            first_delay: float, max_delay: float, stop: threading.Event, say) -> int:
    """Send the items; record each outcome in the outbox. Returns how many were delivered."""
    datasets = {item.id: dcmread(BytesIO(item.dataset)) for item in items}
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10)
    offers = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets.values()}
    offers |= {(sop_class, ExplicitVRLittleEndian) for sop_class, _ in offers}
    for sop_class, syntax in sorted(offers):  # one context each, so the PACS can accept the compressed one
        ae.add_requested_context(sop_class, [syntax])
    d = destination
    assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "PACS unreachable"
        for item in items:  # not a refusal of the object: the PACS may be busy, restarting or not configured yet
            outbox.mark_unsent(log, item, f"{reason} ({d})", refused=False, first=first_delay, cap=max_delay)
        say(f"{reason} ({d}); {len(items)} object(s) stay in the outbox, next try in "
            f"{outbox.backoff(items[0].attempts + 1, first_delay, max_delay):.0f} s")
        return 0
    sent = 0
    accepted = _accepted(assoc)
    try:
        for item in items:
            if stop.is_set() or not assoc.is_established:
                break
            ds = _sendable(datasets[item.id], accepted)
            if ds is None:
                error = f"{d} accepted no presentation context for SOP class {datasets[item.id].SOPClassUID}"
                status = outbox.mark_unsent(log, item, error, refused=True, first=first_delay, cap=max_delay)
                say(f"exam {item.exam_id} {item.kind.upper()}: {error}; {status}")
                continue
            response = assoc.send_c_store(ds)
            code = response.get("Status") if response else None
            if code == 0 or code in WARNING_STATUSES:
                outbox.mark_sent(log, item)
                sent += 1
                say(f"sent exam {item.exam_id} {item.kind.upper()} {item.sop_instance_uid} to {d}")
            else:
                error = f"PACS answered 0x{code:04X}" if code is not None else "no answer (connection lost)"
                status = outbox.mark_unsent(log, item, error, refused=code is not None, first=first_delay,
                                            cap=max_delay)
                say(f"exam {item.exam_id} {item.kind.upper()}: {error}; {status}")
    finally:
        if assoc.is_established:
            assoc.release()
    return sent
