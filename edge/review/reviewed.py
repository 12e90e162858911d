"""`cxr-edge calibrate --from-review`: this site's threshold from its doctors' verdicts in the review log.

A verdict agrees or disagrees with the model's decision, so it says what the film was as the reviewing
doctor saw it: abnormal = referred and agreed, or called normal and disagreed; normal = the other two (the
same reading as `review stats`). Only exams screened by the model being calibrated count, with their latest
verdict, and their scores are the ones in the log: nothing is screened again.

Verification bias: doctors review what was referred. When the exams called normal are reviewed less often
than the referred ones, the abnormal films among the unreviewed are never counted and every sensitivity
measured is too high (Begg and Greenes 1983). So the share reviewed of each decision is reported, and a gap
between them of more than MAX_REVIEW_GAP makes the threshold too uncertain to store without --force, like a
sample too small. A threshold that refers (nearly) every film, as the shipped model's does at a hospital it
never saw, has the doctors review everything: no gap.
"""

from __future__ import annotations

import numpy as np

from ..errors import CxrError, ExitCode
from ..evaluation import calibrate_scores
from ..runtime import TFLiteModel
from .listing import select_exams
from .log import ReviewLog
from .verdicts import says_abnormal

MAX_REVIEW_GAP = 0.05


def review_coverage(exams: list[dict]) -> dict:
    """How many exams of each decision there are and how many of them have a verdict."""
    out = {}
    for decision in ("refer", "normal"):
        of = [e for e in exams if e["decision"] == decision]
        reviewed = sum(bool(e["verdict"]) for e in of)
        out[decision] = {"exams": len(of), "reviewed": reviewed, "share": reviewed / len(of) if of else None}
    return out


def coverage_warning(coverage: dict) -> str | None:
    refer, normal = coverage["refer"]["share"], coverage["normal"]["share"]
    if refer is None or normal is None or abs(refer - normal) <= MAX_REVIEW_GAP:
        return None
    biased = "too high" if normal < refer else "too low"
    return (f"doctors reviewed {refer:.0%} of the referred exams but {normal:.0%} of those called normal: the "
            f"sensitivity measured is {biased} (verification bias); have a doctor review the same share of each, "
            "chosen at random, or calibrate on a labelled image folder")


def calibrate_from_review(model: TFLiteModel, log: ReviewLog, target: float, since: str | None = None) -> dict:
    """The calibration record (as for an image folder) from the verdicts on this model's screened exams."""
    screened = select_exams(log, since=since, statuses=("screened",))
    exams = [e for e in screened if e["model"]["sha256"] == model.sha256]
    window = f" since {since}" if since else ""
    if not exams:
        others = len(screened)
        raise CxrError(f"{log.path}: no exam{window} was screened by this model file (sha256 {model.sha256[:12]})"
                       + (f"; {others} were screened by other models" if others else ""),
                       code=ExitCode.DATA, reason="empty_dataset")
    reviewed = [e for e in exams if e["verdict"]]
    y = np.array([says_abnormal(e) for e in reviewed], dtype=bool)
    for label, count in (("abnormal", int(y.sum())), ("normal", int((~y).sum()))):
        if count == 0:
            raise CxrError(f"{log.path}: the doctors' verdicts on the {len(reviewed)} reviewed of {len(exams)} exams"
                           f"{window} of this model name no {label} film; calibration needs both",
                           code=ExitCode.DATA, reason="one_class_only")
    coverage = review_coverage(exams)
    warning = coverage_warning(coverage)
    score = np.array([e["abnormality"] for e in reviewed], dtype=float)
    record = calibrate_scores(model, y, score, target, warnings=[warning] if warning else [])
    record["data"] = [f"review log {log.path}: doctors' verdicts on {len(reviewed)} of {len(exams)} exams"
                      f"{window}"]
    record["review"] = {"since": since, "exams": len(exams), "reviewed": len(reviewed), **coverage,
                        "labels": "abnormal = referred and agreed, or called normal and disagreed"}
    return record
