"""`cxr-edge listen` with real DICOM peers: dcmtk's storescu/echoscu play the X-ray unit, a real Orthanc
is the PACS. The review log, the outbox and Orthanc's REST API are polled with generous deadlines;
no test depends on a sleep or asserts a speed."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_peers import (DX, ROOT, Orthanc, chest_dicom, chest_images, dcmtk, rows, start_listener, stop,
                         storescu, wait_for)

MODEL = ROOT / "models" / "cxr-default.tflite"  # has a 'cam' output: the Secondary Capture gets a heatmap
FAST_RETRY = ("--forward-retry", "0.3", "--forward-retry-max", "1.5")


def screened(log: Path) -> list[dict]:
    return rows(log, "SELECT * FROM exams WHERE status = 'screened' ORDER BY id")


def outbox(log: Path, status: str | None = None) -> list[dict]:
    where = f"WHERE status = '{status}'" if status else ""
    return rows(log, f"SELECT id, exam_id, kind, status, attempts, sop_instance_uid, study_instance_uid, last_error "
                     f"FROM outbox {where} ORDER BY id")


def content_items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(content_items(item))
    return out


def numeric(sr, code_value: str) -> float:
    for item in content_items(sr):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == code_value:
            return float(item.MeasuredValueSequence[0].NumericValue)
    raise AssertionError(f"no NUM item {code_value} in the SR")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield orthanc
    orthanc.stop()


def test_results_reach_the_pacs_in_the_original_study(tmp_path, pacs):
    images = chest_images()
    sources = [chest_dicom(tmp_path / "unit" / "cr.dcm", images[0], patient="DOE^JANE", patient_id="PCR"),
               chest_dicom(tmp_path / "unit" / "dx.dcm", images[-1], sop_class=DX, patient_id="PDX")]
    files = [tmp_path / "unit" / "cr.dcm", tmp_path / "unit" / "dx.dcm", Path(get_testdata_file("RG1_UNCI.dcm"))]
    sources.append(pydicom.dcmread(files[2]))
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--forward", pacs.destination, "--allow-ae", "UNIT1",
                                    *FAST_RETRY)
    try:
        result = storescu(port, files)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: len(outbox(log, "sent")) == 6, "6 result objects sent to Orthanc", listener)
    finally:
        assert stop(listener) == 0
    exams = {e["sha256"]: e for e in screened(log)}
    assert len(exams) == 3 and {e["source"] for e in exams.values()} == {"listen"}
    by_uid = {}
    for instance in pacs.instances():
        raw = urlopen_bytes(pacs, f"/instances/{instance['_id']}/file")
        ds = pydicom.dcmread(BytesIO(raw))
        by_uid[str(ds.SOPInstanceUID)] = ds
    for source in sources:
        exam = next(e for e in exams.values() if json.loads(e["image"])["kind"] == "dicom"
                    and _source_uid(log, e) == source.SOPInstanceUID)
        sent = {o["kind"]: o for o in outbox(log) if o["exam_id"] == exam["id"]}
        sr, sc = by_uid[sent["sr"]["sop_instance_uid"]], by_uid[sent["sc"]["sop_instance_uid"]]
        for ds in (sr, sc):  # in the original study, patient module copied
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID and str(ds.PatientName) == str(source.PatientName)
            assert ds.SoftwareVersions[1].startswith(f"model sha256 {exam['model_sha256'][:40]}")
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.VerificationFlag == "UNVERIFIED"
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
            .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        images_referenced = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content_items(sr)
                             if i.ValueType == "IMAGE"]
        assert images_referenced == [source.SOPInstanceUID]
        assert numeric(sr, "CXR-ABN") == pytest.approx(exam["abnormality"], abs=1e-6)
        assert numeric(sr, "CXR-THR") == pytest.approx(exam["threshold"], abs=1e-6)
        for name, p in json.loads(exam["probabilities"]).items():
            assert numeric(sr, f"CXR-P-{name.upper()[:8]}") == pytest.approx(p, abs=1e-6)
        decision = [i.ConceptCodeSequence[0].CodeValue for i in content_items(sr) if i.ValueType == "CODE"
                    and i.ConceptNameCodeSequence[0].CodeValue == "CXR-DEC"]
        assert decision == [f"CXR-{exam['decision'].upper()}"]
        text = " ".join(str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT")
        assert "screening aid, not for diagnostic use" in text.lower() and exam["model_sha256"] in text
        assert exam["threshold_source"] in text
        algorithm = " ".join(str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT"
                             and i.ConceptNameCodeSequence[0].CodeValue == "111002")  # algorithm parameters
        assert exam["model_sha256"] in algorithm
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline, as built
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "not for diagnostic use" in sc.ImageComments and exam["model_sha256"] in sc.ImageComments
        assert "heatmap: evidence" in sc.DerivationDescription  # the bundled model has a cam output
        assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3


def urlopen_bytes(pacs: Orthanc, path: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{pacs.http_port}{path}", timeout=30) as response:
        return response.read()


def _source_uid(log: Path, exam: dict) -> str:
    moved = rows(log, f"SELECT moved_to FROM watch_hashes WHERE exam_id = {exam['id']}")[0]["moved_to"]
    return str(pydicom.dcmread(moved or exam["file"], stop_before_pixels=True).SOPInstanceUID)


def test_calling_ae_not_on_the_list_is_refused(tmp_path):
    unit = tmp_path / "unit" / "cr.dcm"
    chest_dicom(unit, chest_images()[0])
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--allow-ae", "UNIT1", "--allow-ae", "UNIT2")
    try:
        echo = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "CXREDGE", "127.0.0.1", str(port)],
                              capture_output=True, text=True)
        assert echo.returncode != 0 and "reject" in (echo.stdout + echo.stderr).lower()
        wrong = subprocess.run([dcmtk("echoscu"), "-aet", "UNIT1", "-aec", "OTHERNODE", "127.0.0.1", str(port)],
                               capture_output=True, text=True)
        assert wrong.returncode != 0  # a unit configured with the wrong AE title for the station
        refused = storescu(port, [unit], calling="INTRUDER")
        assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()
        accepted = storescu(port, [unit], calling="UNIT2")
        assert accepted.returncode == 0, accepted.stderr
        wait_for(lambda: screened(log), "the allowed unit's exam to be screened", listener)
    finally:
        assert stop(listener) == 0
    assert len(rows(log, "SELECT * FROM exams")) == 1
    assert "INTRUDER" in (tmp_path / "listen.out").read_text()


def test_refusals_are_quarantined_with_reason_and_other_classes_refused(tmp_path):
    lateral = tmp_path / "unit" / "lateral.dcm"
    ds = chest_dicom(lateral, chest_images()[0])
    ds.ViewPosition = "LL"
    ds.save_as(lateral, enforce_file_format=True)
    child = tmp_path / "unit" / "child.dcm"  # a 6-year-old: cxr-default is for ages 15 and over
    ds = chest_dicom(child, chest_images()[0])
    ds.PatientAge = "006Y"
    ds.save_as(child, enforce_file_format=True)
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL)
    try:
        stored = storescu(port, [lateral, child])
        assert stored.returncode == 0, stored.stderr  # durably stored: Success, whatever the screening says
        quarantined = wait_for(lambda: len(rows(log, "SELECT * FROM exams WHERE status = 'quarantined'")) == 2
                               and rows(log, "SELECT * FROM exams WHERE status = 'quarantined' ORDER BY reason_code"),
                               "the lateral view and the child to be quarantined", listener)
        assert [q["reason_code"] for q in quarantined] == ["age_out_of_range", "lateral_view"]
        assert "aged 6 y" in quarantined[0]["reason"] and "cxr-pediatric" in quarantined[0]["reason"]
        assert "lateral" in quarantined[1]["reason"]
        assert list((tmp_path / "store" / "quarantine").glob("*.dcm"))  # kept, never dropped
        ct = storescu(port, [Path(get_testdata_file("CT_small.dcm"))])  # not a radiograph SOP class
        assert ct.returncode != 0
        full = subprocess.run([sys.executable, "-m", "edge.cli", "listen", "--port", str(port), "--bind",
                               "127.0.0.1", "--model", str(MODEL), "--log", str(tmp_path / "other.sqlite"),
                               "--store", str(tmp_path / "other")], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert full.returncode == 2 and "cannot listen on 127.0.0.1" in full.stderr  # port taken: one line
        assert "Traceback" not in full.stderr
    finally:
        assert stop(listener) == 0
    assert len(rows(log, "SELECT * FROM exams")) == 2


def test_store_refused_with_out_of_resources_when_disk_is_nearly_full(tmp_path):
    unit = tmp_path / "unit" / "cr.dcm"
    chest_dicom(unit, chest_images()[0])
    listener, port = start_listener(tmp_path, MODEL, "--min-free-mb", str(2 ** 40))  # more than any disk
    try:
        result = storescu(port, [unit], "-v")
        assert result.returncode != 0  # the unit keeps the image and retries
        assert "refused: outofresources" in (result.stdout + result.stderr).lower()  # status 0xA700
    finally:
        assert stop(listener) == 0
    assert not list((tmp_path / "store" / "incoming").iterdir())
    assert rows(tmp_path / "review.sqlite", "SELECT * FROM exams") == []


def test_listener_killed_mid_association_screens_the_retry_once(tmp_path):
    images = chest_images()
    files = [tmp_path / "unit" / f"{i:03d}.dcm" for i in range(40)]
    for i, path in enumerate(files):  # ~2 MB each, so the association is still running when the kill lands
        chest_dicom(path, images[i % len(images)], size=1024 + i)
    log = tmp_path / "review.sqlite"
    incoming, done = tmp_path / "store" / "incoming", tmp_path / "store" / "screened"
    listener, port = start_listener(tmp_path, MODEL, "--quiet")
    unit = subprocess.Popen([dcmtk("storescu"), "-aet", "UNIT1", "-aec", "CXREDGE", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: any(incoming.glob("*.dcm")) or any(done.glob("*.dcm")), "a first instance to be stored",
             listener)
    listener.send_signal(signal.SIGKILL)
    listener.wait()
    unit.communicate(timeout=120)
    assert unit.returncode != 0  # the unit saw the association break: it will send again
    listener, port = start_listener(tmp_path, MODEL, "--quiet", port=port)
    try:
        retry = storescu(port, files)  # the unit's retry: the whole exam set again
        assert retry.returncode == 0, retry.stderr
        wait_for(lambda: len(screened(log)) == len(files), "every instance screened", listener)
        wait_for(lambda: not any(incoming.glob("*.dcm")), "the re-sent copies to be recognised", listener)
    finally:
        assert stop(listener) == 0
    exams = screened(log)
    expected = {hashlib.sha256(received).hexdigest() for received in
                (p.read_bytes() for p in done.glob("*.dcm"))}
    assert len(exams) == len(files) == len({e["sha256"] for e in exams}) == len(expected)
    assert {e["sha256"] for e in exams} == expected
    assert not list(incoming.glob(".*"))  # partial transfers cut off by the kill were cleaned up


def test_orthanc_down_mid_burst_everything_arrives_once(tmp_path):
    (tmp_path / "pacs").mkdir()
    orthanc = Orthanc(tmp_path / "pacs").start()
    images = chest_images()
    files = [tmp_path / "unit" / f"{i:03d}.dcm" for i in range(16)]
    for i, path in enumerate(files):
        chest_dicom(path, images[i % len(images)], patient_id=f"P{i}", size=512 + i)
    first, second = files[:8], files[8:]
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--forward", orthanc.destination, "--quiet", *FAST_RETRY)
    try:
        burst = threading.Thread(target=storescu, args=(port, first))
        burst.start()
        wait_for(lambda: outbox(log, "sent"), "a first result to reach Orthanc", listener)
        orthanc.stop()  # in the middle of the burst
        burst.join()
        assert storescu(port, second).returncode == 0
        wait_for(lambda: len(screened(log)) == len(files), "every exam screened while the PACS is down", listener)
        wait_for(lambda: len(outbox(log)) == 2 * len(files), "every result built while the PACS is down", listener)
        wait_for(lambda: all(o["attempts"] >= 1 for o in outbox(log, "pending")) and outbox(log, "pending"),
                 "sends to fail while Orthanc is down", listener)
        assert all(any(word in o["last_error"] for word in ("unreachable", "connection", "rejected"))
                   for o in outbox(log, "pending"))
        assert stop(listener) == 0  # the station restarts too: the outbox survives
        listing = subprocess.run([sys.executable, "-m", "edge.cli", "outbox", "list", "--json", "--log", str(log)],
                                 capture_output=True, text=True, cwd=ROOT, check=True)
        listed = [json.loads(line) for line in listing.stdout.splitlines()]
        assert len(listed) == 2 * len(files) and {o["status"] for o in listed} <= {"pending", "sent"}
        assert all(o["notice"] for o in listed)
        orthanc.start()
        listener, port = start_listener(tmp_path, MODEL, "--forward", orthanc.destination, "--quiet", *FAST_RETRY,
                                        port=port)
        retried = subprocess.run([sys.executable, "-m", "edge.cli", "outbox", "retry", "--log", str(log)],
                                 capture_output=True, text=True, cwd=ROOT, check=True)
        assert "queued" in retried.stdout
        wait_for(lambda: len(outbox(log, "sent")) == 2 * len(files), "every result delivered", listener)
    finally:
        stop(listener)
        instances = orthanc.instances() if orthanc.process else []
        orthanc.stop()
    uids = [i["SOPInstanceUID"] for i in instances]
    assert len(uids) == len(set(uids)) == 2 * len(files)  # everything arrived, nothing twice
    assert set(uids) == {o["sop_instance_uid"] for o in outbox(log)}
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in files}
    assert {i["StudyInstanceUID"] for i in instances} == studies
    assert len(rows(log, "SELECT * FROM exams")) == len(files)


def test_watch_forward_sends_results_of_dicom_inputs(tmp_path, pacs):
    folder = tmp_path / "incoming"
    source = chest_dicom(folder / "exam.dcm", chest_images()[1], patient_id="PWATCH")
    (folder / "plain.png").write_bytes(chest_images()[0].read_bytes())  # not DICOM: no results to send
    log = tmp_path / "review.sqlite"
    watcher = subprocess.Popen([sys.executable, "-m", "edge.cli", "watch", str(folder), "--model", str(MODEL),
                                "--log", str(log), "--forward", pacs.destination, "--settle", "0.2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for(lambda: len(outbox(log, "sent")) == 2, "the SR and SC to be sent", watcher)
        wait_for(lambda: len(screened(log)) == 2, "both files screened", watcher)
    finally:
        assert stop(watcher) == 0
    arrived = [i for i in pacs.instances() if i["StudyInstanceUID"] == source.StudyInstanceUID]
    assert sorted(i["Modality"] for i in arrived) == ["OT", "SR"]
    assert {o["exam_id"] for o in outbox(log)} == {e["id"] for e in screened(log) if e["file"].endswith(".dcm")}


COMPRESSORS = {  # dcmtk tool and options -> the transfer syntax it writes, storescu's option to propose it
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70", "-xs"),
    "jpeg-ls": (["dcmcjpls", "+el"], "1.2.840.10008.1.2.4.80", "-xt"),
    "rle": (["dcmcrle"], "1.2.840.10008.1.2.5", "-xr"),
    "deflated": (["dcmconv", "+td"], "1.2.840.10008.1.2.1.99", "-xd"),
}


def test_compressed_transfer_syntaxes_are_received_and_screened(tmp_path):
    """Units often send JPEG lossless; dcmtk compresses the same film every way; lossless means the
    same pixels, so every copy must get exactly the uncompressed copy's score."""
    plain = tmp_path / "unit" / "plain.dcm"
    chest_dicom(plain, chest_images()[0], sop_class=DX)
    files, propose = [plain], {plain: "-xe"}
    for name, (tool, syntax, option) in COMPRESSORS.items():
        target = tmp_path / "unit" / f"{name}.dcm"
        subprocess.run([dcmtk(tool[0]), *tool[1:], str(plain), str(target)], check=True, capture_output=True)
        # a distinct instance per copy, as a unit would send
        ds = pydicom.dcmread(target)
        assert ds.file_meta.TransferSyntaxUID == syntax
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(target)
        files.append(target)
        propose[target] = option
    j2k = tmp_path / "unit" / "j2k.dcm"  # dcmtk has no JPEG 2000 encoder: pydicom's (OpenJPEG) writes it
    ds = pydicom.dcmread(plain)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.compress(pydicom.uid.JPEG2000Lossless)
    ds.save_as(j2k)
    files.append(j2k)
    propose[j2k] = "-xv"
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--quiet")
    try:
        for path in files:  # one association each, proposing the file's own transfer syntax
            result = storescu(port, [path], propose[path], "-R")
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
        wait_for(lambda: len(screened(log)) == len(files), "every copy screened", listener)
    finally:
        assert stop(listener) == 0
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for p in (tmp_path / "store" / "screened").glob("*.dcm")}
    assert {syntax for _, syntax, _ in COMPRESSORS.values()} | {pydicom.uid.JPEG2000Lossless} <= received
    scores = {round(e["abnormality"], 6) for e in screened(log)}
    assert len(scores) == 1


def test_a_resent_uid_with_other_pixels_never_replaces_the_first(tmp_path):
    """Same SOP Instance UID, different bytes, in one association: both are kept and screened."""
    uid = pydicom.uid.generate_uid()
    first, second = tmp_path / "unit" / "a.dcm", tmp_path / "unit" / "b.dcm"
    chest_dicom(first, chest_images()[0], sop_uid=uid)
    chest_dicom(second, chest_images()[-1], sop_uid=uid)
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--quiet")
    try:
        assert storescu(port, [first, second, first]).returncode == 0
        wait_for(lambda: len(screened(log)) == 2, "both versions screened", listener)
        wait_for(lambda: not any((tmp_path / "store" / "incoming").glob("*.dcm")), "the store to settle", listener)
    finally:
        assert stop(listener) == 0
    assert {e["sha256"] for e in screened(log)} == {hashlib.sha256(p.read_bytes()).hexdigest()
                                                    for p in (tmp_path / "store" / "screened").glob("*.dcm")}
    assert len(rows(log, "SELECT * FROM exams")) == 2


def test_pacs_refusals_fail_after_retries_and_jpeg_falls_back_to_uncompressed(tmp_path):
    """A real Orthanc that takes no JPEG transfer syntax and only 1 MB of storage: the Secondary Capture
    is offered decompressed (3 MB), refused with 0xA700 until it is marked failed, the SR arrives; once
    the PACS has room, `cxr-edge outbox retry` delivers the SC, decompressed."""
    (tmp_path / "pacs").mkdir()
    orthanc = Orthanc(tmp_path / "pacs", JpegTransferSyntaxAccepted=False, MaximumStorageSize=1).start()
    unit = tmp_path / "unit" / "cr.dcm"
    source = chest_dicom(unit, chest_images()[0], size=1200)
    log = tmp_path / "review.sqlite"
    listener, port = start_listener(tmp_path, MODEL, "--forward", orthanc.destination, *FAST_RETRY)
    try:
        assert storescu(port, [unit]).returncode == 0
        wait_for(lambda: outbox(log, "failed") and outbox(log, "sent"), "the SR sent and the SC failed", listener)
        failed = subprocess.run([sys.executable, "-m", "edge.cli", "outbox", "list", "--status", "failed", "--json",
                                 "--log", str(log)], capture_output=True, text=True, cwd=ROOT, check=True)
        [row] = [json.loads(line) for line in failed.stdout.splitlines()]
        assert row["kind"] == "sc" and row["attempts"] == 5 and "PACS answered 0xA700" in row["last_error"]
        assert [i["Modality"] for i in orthanc.instances()] == ["SR"]
        orthanc.stop()
        orthanc.configure(MaximumStorageSize=0)  # the PACS gets room
        orthanc.start()
        retried = subprocess.run([sys.executable, "-m", "edge.cli", "outbox", "retry", str(row["id"]), "--log",
                                  str(log)], capture_output=True, text=True, cwd=ROOT, check=True)
        assert retried.stdout.startswith("1 object")
        wait_for(lambda: len(outbox(log, "sent")) == 2, "the SC delivered after the retry", listener)
    finally:
        stop(listener)
        instances = orthanc.instances() if orthanc.process else []
        syntaxes = [urlopen_bytes(orthanc, f"/instances/{i['_id']}/metadata/TransferSyntax").decode()
                    for i in instances if i["Modality"] == "OT"] if orthanc.process else []
        orthanc.stop()
    assert sorted(i["Modality"] for i in instances) == ["OT", "SR"]
    assert {i["StudyInstanceUID"] for i in instances} == {source.StudyInstanceUID}
    assert syntaxes == ["1.2.840.10008.1.2.1"]  # decompressed for a PACS without JPEG
    assert {i["SOPInstanceUID"] for i in instances} == {o["sop_instance_uid"] for o in outbox(log)}  # same UIDs
