"""Which model screens a film: the one `--model` names, or, with `--by-age`, the bundled model whose stated
ages cover the patient's age in the DICOM header.

A mobile unit screens adults and children in one session. cxr-default is for people aged 15 and over and
cxr-pediatric for children under 15 (each model's `ages` metadata); one station process holds both and
sends each film to the one that is for its patient. A film without an age (PNG, JPEG, a DICOM without
PatientAge or birth date) goes to the `--model` model, as without `--by-age`. Each model keeps its own
threshold (this site's calibration for that model file, else the one stored in it), and every result,
log row and DICOM result names the model that actually screened the film.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .calibration import resolve_threshold
from .errors import CxrError, ExitCode
from .names import shown
from .patient_age import bundled_ages, covers, describe_ages, overlap
from .paths import bundled_models, resolve_model
from .runtime import TFLiteModel
from .screening import ScreenResult, screen_file


@dataclass(frozen=True)
class Route:
    model: TFLiteModel
    threshold: float
    threshold_source: str

    def describe(self) -> str:
        """For a station's start line; a threshold nobody calibrated for this site says so."""
        meta = self.model.metadata
        bundled = meta.name in bundled_models() and resolve_model(meta.name).resolve() == self.model.path.resolve()
        name = meta.name if bundled else shown(self.model.path)
        uncalibrated = (f" (not calibrated for this site: cxr-edge calibrate -m {name})"
                        if self.threshold_source == "model metadata" else "")
        return (f"model {meta.name} {meta.version} sha256 {self.model.sha256[:12]} ({describe_ages(meta.ages)}), "
                f"threshold {self.threshold:.3f} from {self.threshold_source}{uncalibrated}")


class Routes:
    """The models one process screens with. The first is `--model`'s: films without an age, and ages no
    other model covers, go to it (whose own age check then refuses a film outside its ages)."""

    def __init__(self, routes: list[Route]):
        if not routes:
            raise ValueError("at least one model")
        self.routes = routes

    @property
    def primary(self) -> Route:
        return self.routes[0]

    @property
    def by_age(self) -> bool:
        return len(self.routes) > 1

    @property
    def models(self) -> list[TFLiteModel]:
        return [r.model for r in self.routes]

    def for_age(self, age: float | None) -> Route:
        if age is None:
            return self.primary
        return next((r for r in self.routes if covers(r.model.metadata.ages, age)), self.primary)

    def screen(self, path: str | Path, **kwargs) -> ScreenResult:
        """edge.screening.screen_file with the model (and its threshold) this film's age selects."""
        p = self.primary
        return screen_file(path, p.model, p.threshold, threshold_source=p.threshold_source,
                           routes=self if self.by_age else None, **kwargs)

    def describe(self) -> str:
        """One line for the operator: each model, its ages and its threshold."""
        if not self.by_age:
            return self.primary.describe()
        return ("by patient age (DICOM header; films without an age: the first): "
                + "; ".join(r.describe() for r in self.routes))


def load_routes(model: str | Path | None, threshold: float | None = None, *, by_age: bool = False,
                delegate: str = "cpu", threads: int | None = None) -> Routes:
    """--model (a path or a bundled name), and with by_age each other bundled model that states ages none of the
    models before it covers (--model first: a site's own children's model replaces cxr-pediatric)."""
    first = TFLiteModel(resolve_model(model), delegate=delegate, threads=threads)
    if not by_age:
        return Routes([Route(first, *resolve_threshold(first, threshold))])
    if threshold is not None:
        raise CxrError("--threshold sets one model's cutoff and --by-age screens with several: leave it out (each "
                       "model uses this site's calibration for it, else its own threshold; set one with "
                       "`cxr-edge calibrate -m NAME`)", code=ExitCode.USAGE, reason="bad_option")
    routes = [Route(first, *resolve_threshold(first, None))]
    for name, ages in bundled_ages():
        if not ages or any(overlap(r.model.metadata.ages, ages) for r in routes):
            continue  # no ages stated (it cannot be chosen by age), or ages a model before it covers
        other = TFLiteModel(resolve_model(name), delegate=delegate, threads=threads)
        routes.append(Route(other, *resolve_threshold(other, None)))
    if len(routes) == 1:
        raise CxrError(f"--by-age: {first.metadata.name} is for {describe_ages(first.metadata.ages)} and no other "
                       "bundled model is for ages it leaves out, so there is nothing to route to (bundled: "
                       + ", ".join(bundled_models()) + ")", code=ExitCode.USAGE, reason="bad_option")
    return Routes(routes)

