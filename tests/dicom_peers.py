"""Real DICOM peers for the network tests: dcmtk's storescu/echoscu as the X-ray unit, a real Orthanc
as the PACS (started here with a temporary config on loopback ports), `cxr-edge listen` as a process,
and CR/DX test files made from real chest images with pydicom."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from test_watch import MINI, ROOT, SAMPLES, rows, stop, wait_for  # noqa: F401  (re-exported for the tests)

ORTHANC = "/usr/sbin/Orthanc"
DEADLINE = 120.0  # seconds; generous for a loaded 2-core CI machine
CR, DX = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"


def dcmtk(tool: str) -> str:
    """dcmtk's own binary (pip packages also install scripts named storescu/echoscu)."""
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if candidate and Path(candidate).is_file():
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return candidate
    pytest.skip(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")


def require_orthanc() -> str:
    if not Path(ORTHANC).is_file():
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    return ORTHANC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chest_dicom(path: Path, source: Path, *, sop_class: str = CR, study_uid: str | None = None,
                patient: str = "TEST^PATIENT", patient_id: str = "P1", sop_uid: str | None = None,
                size: int | None = None) -> Dataset:
    """A 16-bit MONOCHROME2 CR or DX file from a real chest image (PNG/JPEG), written to path."""
    grey = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    if size:
        grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    pixels = (grey.astype(np.uint16) * 16)  # 12 bits stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    # an adult: cxr-default is for ages 15 and over and refuses a DICOM whose header says younger (patient_age.py)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, patient_id, "19800101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20261124", "101500", "ACC1", "1"
    ds.ReferringPhysicianName = "REF^DOCTOR"
    ds.Modality = "CR" if sop_class == CR else "DX"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.Manufacturer = "test"
    if sop_class != CR:
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
        ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def chest_images() -> list[Path]:
    images = sorted(p for p in MINI.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return images or sorted(SAMPLES.glob("*.png"))


class Orthanc:
    """A real Orthanc PACS on loopback ports, its own storage; stop() and start() keep the storage."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", **settings):
        require_orthanc()
        self.workdir, self.aet = workdir, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cxr-edge-test", "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "StorageCompression": False,
            "OverwriteInstances": False, "SaveJobs": False, "HttpDescribeErrors": True,
        }))
        self.configure(**settings)
        self.process: subprocess.Popen | None = None

    def configure(self, **settings) -> None:
        """Change Orthanc configuration keys (takes effect at the next start)."""
        self.config.write_text(json.dumps(json.loads(self.config.read_text()) | settings))

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> "Orthanc":
        out = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive(), "Orthanc to answer on its REST port", self.process, timeout=60)
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def instances(self) -> list[dict]:
        """Every stored instance with its main tags (the REST API's expanded listing)."""
        return [self.get(f"/instances/{i}/simplified-tags") | {"_id": i} for i in self.get("/instances")]


def start_listener(workdir: Path, model: Path, *extra: str, port: int | None = None,
                   ae_title: str = "CXREDGE") -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    cmd = [sys.executable, "-m", "edge.cli", "listen", "--port", str(port), "--bind", "127.0.0.1",
           "--ae-title", ae_title, "--model", str(model), "--log", str(workdir / "review.sqlite"),
           "--store", str(workdir / "store"), *extra]
    with open(workdir / "listen.out", "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    echo = dcmtk("echoscu")
    wait_for(lambda: subprocess.run([echo, "-aec", ae_title, "-aet", "UNIT1", "127.0.0.1", str(port)],
                                    capture_output=True).returncode == 0,
             "the listener to answer C-ECHO", process)
    return process, port


def storescu(port: int, files: list[Path], *options: str, calling: str = "UNIT1", called: str = "CXREDGE",
             timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", called, "-to", "60", "-ta", "60", *options,
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=timeout)
