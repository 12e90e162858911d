"""The DICOM objects a screened exam gives back to the PACS, built with highdicom.

- A Comprehensive SR with a TID 1500 Measurement Report: abnormality score, referral threshold and
  class probabilities (numeric), the decision (coded), the model (algorithm identification: name,
  version, sha256, threshold source), the notice that this is a screening aid, VerificationFlag
  UNVERIFIED, and the source radiograph as evidence and as the group's source image.
- A Secondary Capture of the film with the model's class-activation heatmap over it and a burned-in
  banner (decision, score, model, notice), referencing the source image.

Both go into the original study: highdicom copies the patient and study modules from the source.
Their UIDs are derived from the exam's content hash and the model's sha256, so rebuilding the same
result (after a crash) gives the same SOP Instance UIDs and a PACS keeps one copy.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from .. import __version__
from ..review.images import HEATMAP_MAX_ALPHA, abnormal_map, onto_film

NOTICE = "screening aid, not for diagnostic use"
MANUFACTURER = "cxr-edge"
SCHEME = "99CXREDGE"  # private coding scheme for the concepts no standard code covers
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9001, 9002
SC_MAX_SIDE = 1024
CHEST_XRAY = Code("399208008", "SCT", "Plain X-ray of chest")
ABNORMALITY = Code("CXR-ABN", SCHEME, "Abnormality score (1 - P(normal))")
THRESHOLD = Code("CXR-THR", SCHEME, "Referral threshold")
DECISION = Code("CXR-DEC", SCHEME, "Screening decision")
DECISIONS = {"refer": Code("CXR-REFER", SCHEME, "Refer for review by a doctor"),
             "normal": Code("CXR-NORMAL", SCHEME, "No referral")}
NO_UNITS = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")


def result_uid(exam_sha256: str, model_sha256: str, what: str) -> str:
    """A UID that is the same every time this exam is rebuilt with this model."""
    return generate_uid(entropy_srcs=[exam_sha256, model_sha256, what])


def _class_code(name: str) -> Code:
    return Code(f"CXR-P-{name.upper()[:8]}", SCHEME, f"Probability of {name}")


def build_sr(source: Dataset, exam: dict, classes: list[str]) -> hd.sr.ComprehensiveSR:
    """exam: a review-log row (decision, abnormality, probabilities, threshold, model...)."""
    sha, model_sha = exam["sha256"], exam["model_sha256"]
    algorithm = hd.sr.AlgorithmIdentification(
        name=exam["model_name"], version=exam["model_version"],
        parameters=[f"model sha256 {model_sha}", f"threshold {exam['threshold']:.6f}",
                    f"threshold source: {exam['threshold_source'] or 'unknown'}"],
        manufacturer=MANUFACTURER)
    measurements = [hd.sr.Measurement(name=ABNORMALITY, value=float(exam["abnormality"]), unit=NO_UNITS,
                                      algorithm_id=algorithm),
                    hd.sr.Measurement(name=THRESHOLD, value=float(exam["threshold"]), unit=NO_UNITS,
                                      algorithm_id=algorithm)]
    measurements += [hd.sr.Measurement(name=_class_code(c), value=float(exam["probabilities"][c]), unit=NO_UNITS,
                                       algorithm_id=algorithm) for c in classes]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(sha, model_sha, "tracking"),
                                                     identifier="cxr-edge chest X-ray screening"),
        algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(DECISION, DECISIONS[exam["decision"]])],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(model_sha, model_sha, "device"), name=exam["model_name"],
            manufacturer_name=MANUFACTURER, model_name=f"{exam['model_name']} {exam['model_version']}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY, imaging_measurements=[group])
    report[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=_summary(exam), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=result_uid(sha, model_sha, "sr-series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=result_uid(sha, model_sha, "sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="cxr-edge screening aid, not for diagnostic use")
    _identify(sr, exam)
    return sr


def _summary(exam: dict) -> str:
    return (f"{NOTICE.capitalize()}. Decision: {exam['decision']} (abnormality {exam['abnormality']:.3f}, "
            f"refer at >= {exam['threshold']:.3f}, threshold source: {exam['threshold_source'] or 'unknown'}). "
            f"Model {exam['model_name']} {exam['model_version']} sha256 {exam['model_sha256']}.")


def _identify(ds: Dataset, exam: dict) -> None:
    ds.ManufacturerModelName = f"{exam['model_name']} {exam['model_version']}"[:64]
    ds.SoftwareVersions = [f"cxr-edge {__version__}", f"model sha256 {exam['model_sha256'][:48]}"]


def overlay_picture(pixels: np.ndarray, cam: np.ndarray | None, classes_probabilities: list[float],
                    normal_index: int, spec, banner: list[str], box=None) -> tuple[np.ndarray, str]:
    """(RGB uint8 picture of the film with the heatmap and a banner, a note on the heatmap).

    pixels: the decoded film in [0, 1]; cam: the model's class activation maps on its input grid,
    placed back onto the film by the review's own mapping (edge.review.images.onto_film: crop,
    margin, stretch or letterbox, as the model's preprocessing did). Colour where there is evidence,
    the film untouched where there is none."""
    h, w = pixels.shape
    scale = min(1.0, SC_MAX_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = cv2.resize(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    heat = None if cam is None else abnormal_map(cam, classes_probabilities, normal_index)
    if heat is not None:
        heat = cv2.resize(onto_film(heat, spec, pixels, box), size, interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        alpha = (np.clip(heat, 0.0, 1.0) * HEATMAP_MAX_ALPHA)[:, :, None]
        picture = np.clip(picture * (1.0 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
        note = "heatmap: evidence for the abnormal classes (class activation map), where the model looked"
    else:
        note = ("no heatmap: this model has no 'cam' output" if cam is None else
                "no heatmap: the class activation maps show no evidence for an abnormal class")
    _banner(picture, [*banner, note])
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), note


def _banner(picture: np.ndarray, lines: list[str]) -> None:
    font_scale = max(0.35, picture.shape[1] / 1400)
    line_h = int(28 * font_scale) + 6
    cv2.rectangle(picture, (0, 0), (picture.shape[1], line_h * len(lines) + 6), (0, 0, 0), -1)
    for i, line in enumerate(lines):
        cv2.putText(picture, line, (6, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    1, cv2.LINE_AA)


def build_sc(source: Dataset, exam: dict, picture: np.ndarray, note: str) -> hd.sc.SCImage:
    sha, model_sha = exam["sha256"], exam["model_sha256"]
    orientation = tuple(source.get("PatientOrientation", []) or ())
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=picture, photometric_interpretation="YBR_FULL_422", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=result_uid(sha, model_sha, "sc-series"),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=result_uid(sha, model_sha, "sc"), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=orientation if len(orientation) == 2 else None,
        transfer_syntax_uid=JPEGBaseline8Bit)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"cxr-edge heatmap overlay; {note}"[:1024]
    sc.ImageComments = _summary(exam)
    sc.SeriesDescription = "cxr-edge heatmap, screening aid, not for diagnostic use"
    sc.BurnedInAnnotation = "YES"
    _identify(sc, exam)
    return sc


def banner_text(exam: dict) -> list[str]:
    return [f"{NOTICE.upper()}",
            f"{exam['decision'].upper()}: abnormality {exam['abnormality']:.3f} (refer at >= {exam['threshold']:.3f})",
            f"model {exam['model_name']} {exam['model_version']} sha256 {exam['model_sha256'][:16]}"]
