"""The DICOM node the X-ray unit sends to: a pynetdicom C-STORE / C-ECHO SCP.

Each received instance is written to `incoming/` atomically (a hidden temporary name, fsync,
rename, fsync of the folder) before the unit gets Success (0x0000); screening happens after,
from that folder, by the same code as `cxr-edge watch`. So the unit's Success means "durably
stored", whatever the screening result; a kill -9 before the rename means no Success, and the
unit sends again. A write that fails (disk full, I/O error) or a disk nearly full answers
0xA700 (out of resources), and the unit keeps the image and retries.

Accepted: Computed Radiography, Digital X-Ray for presentation and for processing, in the
uncompressed transfer syntaxes and the compressed ones this station can decode (JPEG baseline,
JPEG lossless, JPEG-LS, JPEG 2000, RLE). Not accepted: Secondary Capture (a digitised or derived
picture, not an acquired radiograph; refusing it also means results sent back to a PACS cannot
loop into the screener), and any other SOP class: the unit is told at association.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing, Verification)
from pydicom import uid

from .move import _fsync_folder

STORAGE_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing)
TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
MIN_FREE_BYTES = 64 * 1024 * 1024  # keep room for the review log: refuse new images below this
TEMP_SUFFIX = ".cxr-edge-receiving"
SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass
class ReceiverOptions:
    incoming: Path
    port: int = 11112
    ae_title: str = "CXREDGE"
    bind: str = "0.0.0.0"
    allow_ae: list[str] = field(default_factory=list)  # empty: any calling AE title
    min_free_bytes: int = MIN_FREE_BYTES


def received_name(sop_instance_uid: str) -> str:
    """The file name of an instance: its SOP Instance UID, so a unit's re-send lands on the same name."""
    if SAFE_UID.match(sop_instance_uid or ""):
        return f"{sop_instance_uid}.dcm"
    return f"instance-{uuid.uuid4().hex}.dcm"


def write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Temporary hidden name (the watcher ignores it), fsync, then linked to its final name, fsync the folder.

    Never replaces a file: the same instance re-sent while its first copy still waits is kept once
    (same bytes), and different bytes under the same SOP Instance UID get a numbered name, so both
    are screened and nothing received is lost."""
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        stem, suffix = os.path.splitext(name)
        for n in range(10000):
            final = folder / (name if n == 0 else f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, final)  # atomic, and fails rather than overwrite
            except FileExistsError:
                if final.stat().st_size == len(data) and final.read_bytes() == data:
                    break
                continue
            except OSError:  # a filesystem without hard links
                if final.exists():
                    continue
                os.replace(tmp, final)
            break
        else:
            raise OSError(f"no free name for {name} in {folder}")
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(folder)
    return final


def remove_leftovers(folder: Path) -> int:
    """Temporary files of transfers cut off by a crash: the unit never got Success for them."""
    count = 0
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        count += 1
    return count


class Receiver:
    def __init__(self, options: ReceiverOptions, say=lambda line: None, warn=lambda line: None):
        self.options = options
        self.say, self.warn = say, warn
        self.server = None
        self.received = 0

    def _ae(self) -> AE:
        ae = AE(ae_title=self.options.ae_title)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        ae.require_called_aet = True  # a unit configured with another AE title fails its "Verify" at once
        if self.options.allow_ae:
            ae.require_calling_aet = list(self.options.allow_ae)
        ae.maximum_associations = 8
        return ae

    def start(self) -> None:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.options.incoming.mkdir(parents=True, exist_ok=True)
        left = remove_leftovers(self.options.incoming)
        if left:
            self.warn(f"removed {left} partial transfer(s) cut off by a previous stop; the unit re-sends them")
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        self.server = self._ae().start_server((self.options.bind, self.options.port), block=False,
                                              evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        allowed = self.options.allow_ae
        reason = ("calling AE title not in --allow-ae" if allowed and requestor.ae_title not in allowed else
                  f"it did not call this node's AE title {self.options.ae_title} (check the unit's destination)")
        self.warn(f"association from {requestor.ae_title!r} ({requestor.address}) refused: {reason}")

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset(include_meta=True)
            name = received_name(str(event.request.AffectedSOPInstanceUID or ""))
        except Exception as exc:  # a dataset pynetdicom cannot re-encode: tell the unit, keep serving
            self.warn(f"instance from {calling} cannot be stored ({type(exc).__name__}: {exc})")
            return CANNOT_UNDERSTAND
        folder = self.options.incoming
        try:
            free = shutil.disk_usage(folder).free
            if free - len(data) < self.options.min_free_bytes:
                self.warn(f"{folder}: disk nearly full ({free // 2**20} MiB free); refusing {name} from {calling} "
                          "with 0xA700, the unit will retry")
                return OUT_OF_RESOURCES
            write_durably(folder, name, data)
        except OSError as exc:
            self.warn(f"{folder}: cannot store {name} from {calling} ({exc.strerror or exc}); answered 0xA700, "
                      "the unit will retry")
            return OUT_OF_RESOURCES
        self.received += 1
        self.say(f"received {name} from {calling} ({len(data)} bytes)")
        return SUCCESS
