"""Screen one image file: decode -> gate -> preprocess -> interpreter -> decision, as one result record.

A bad or refused input becomes a result with a status and a reason code, never an exception
that stops the batch and never a made-up score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .decision import Decision, decide
from .decode import load_image
from .errors import CxrError, ExitCode, InputRefused
from .gate import gate_for
from .names import one_line, shown
from .patient_age import age_refusal
from .preprocess import preprocess_info
from .review.log import NOTICE
from .runtime import TFLiteModel


@dataclass
class ScreenResult:
    file: str  # shown safely (edge.names.shown): one printable line whatever bytes the name holds
    status: str  # screened | refused | failed
    model: dict  # name, version, sha256
    sha256: str | None = None
    decision: Decision | None = None
    latency_ms: float | None = None
    reason_code: str | None = None
    reason: str | None = None
    image: dict = field(default_factory=dict)
    threshold_source: str = ""
    review_images: Any = field(default=None, repr=False)  # what `on_screened` returned (not in JSON or log row)
    gate: dict | None = None  # the input gate's verdict, scores and identity (edge/gate.py)
    # what the model's crop did: {"crop": none|borders|lungs|lungs_not_found, "box": [top, bottom, left, right]}
    crop: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "screened"

    def to_json(self) -> dict:
        d = self.decision
        return {
            "file": self.file,
            "sha256": self.sha256,
            "status": self.status,
            "decision": d.decision if d else None,
            "abnormality": d.abnormality if d else None,
            "probabilities": d.probabilities if d else None,
            "top_class": d.top_class if d else None,
            "threshold": d.threshold if d else None,
            "threshold_source": self.threshold_source or None,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "latency_ms": round(self.latency_ms, 3) if self.latency_ms is not None else None,
            "image": self.image or None,
            "model": self.model,
            "gate": self.gate,
            "crop": self.crop,
            "notice": NOTICE,
        }

    def to_log_row(self, source: str) -> dict:
        d = self.decision
        return {
            "source": source, "file": self.file, "sha256": self.sha256, "status": self.status,
            "reason_code": self.reason_code, "reason": self.reason,
            "decision": d.decision if d else None, "abnormality": d.abnormality if d else None,
            "top_class": d.top_class if d else None, "probabilities": d.probabilities if d else None,
            "threshold": d.threshold if d else None, "threshold_source": self.threshold_source or None,
            "latency_ms": self.latency_ms, "image": self.image or None,
            "model_name": self.model["name"], "model_version": self.model["version"],
            "model_sha256": self.model["sha256"], "gate": self.gate, "crop": self.crop,
        }


def screen_file(path: str | Path, model: TFLiteModel, threshold: float, *, threshold_source: str = "",
                allow_any_view: bool = False, on_screened: Callable | None = None,
                data: bytes | None = None, routes=None) -> ScreenResult:
    """on_screened(decoded image, model input, prediction, decision, metadata, crop), called for a screened
    image (crop: preprocess_info's {"crop", "box"}, so a heatmap is placed without cropping the film again);
    what it returns is kept as `review_images` (edge.review.images.review_images: the film and heatmap).
    `data`: the file's bytes, when the caller has read them already (then the file is not read again).
    `routes` (edge.routing.Routes, --by-age): once the file is decoded, the model (with its threshold) for the
    patient's age in the DICOM header replaces `model`; refusals before that name `model`.
    Never raises for a problem with this one file: a bug on an odd file becomes `internal_error`."""
    try:
        return _screen(Path(path), model, threshold, threshold_source, allow_any_view, on_screened, data, routes)
    except CxrError as exc:
        if exc.code != ExitCode.INPUT_NOT_SCREENED:  # the model or the station itself: not this file's fault
            raise
        status = "refused" if isinstance(exc, InputRefused) else "failed"
        return ScreenResult(shown(path), status, model.identity, sha256=getattr(exc, "sha256", None),
                            reason_code=exc.reason, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the batch
        logging.getLogger("cxr-edge").debug("unexpected error while screening %s", shown(path), exc_info=True)
        return ScreenResult(shown(path), "failed", model.identity, reason_code="internal_error",
                            reason=f"{shown(path)}: unexpected error while screening ({type(exc).__name__}: "
                                   f"{one_line(exc)}); please report this as a cxr-edge bug")


def _screen(path: Path, model: TFLiteModel, threshold: float, threshold_source: str,
            allow_any_view: bool, on_screened: Callable | None, data: bytes | None, routes) -> ScreenResult:
    image = load_image(path, allow_any_view=allow_any_view, data=data)
    name = shown(path)
    if routes is not None:
        route = routes.for_age(image.info.get("patient_age"))
        model, threshold, threshold_source = route.model, route.threshold, route.threshold_source
    too_old_or_young = None if allow_any_view else age_refusal(name, image.info.get("patient_age"),
                                                                model.metadata.ages, model.metadata.name,
                                                                by_age=routes is not None)
    if too_old_or_young:
        return ScreenResult(name, "refused", model.identity, sha256=image.sha256, reason_code="age_out_of_range",
                            reason=too_old_or_young, image=image.describe())
    gate = gate_for(model)
    checked = gate.check(image.pixels, name, allow_any_view=allow_any_view) if gate else None
    if checked is not None and checked.refused:
        return ScreenResult(name, "refused", model.identity, sha256=image.sha256, reason_code=checked.reason_code,
                            reason=checked.reason, image=image.describe(), gate=checked.to_json())
    described = image.describe()  # the file as it came, even when the gate turned or un-inverted it
    if checked is not None and checked.verdict == "corrected":
        image = replace(image, pixels=checked.pixels, width=checked.pixels.shape[1], height=checked.pixels.shape[0])
    tensor, crop = preprocess_info(image.pixels, model.metadata.preprocessing)
    prediction = model.predict(tensor)
    decision = decide(prediction.probabilities, model.metadata, threshold)
    result = ScreenResult(name, "screened", model.identity, sha256=image.sha256, decision=decision,
                          latency_ms=prediction.latency_ms, image=described, threshold_source=threshold_source,
                          gate=checked.to_json() if checked else None, crop=crop)
    if on_screened is not None:
        result.review_images = on_screened(image, tensor, prediction, decision, model.metadata, crop)
    return result
