"""A patient's age from the DICOM header, and the ages a model is for.

A model may state the ages it is for in its metadata (`ages`: [from, below) in years, either end open with
null): cxr-default is for people aged 15 and over, cxr-pediatric for children under 15. A film whose DICOM
header gives an age outside that range is refused (`age_out_of_range`, overridable with --any-view) rather
than given a score the model card says cannot be trusted. PNG and JPEG files carry no age: they are screened.
"""

from __future__ import annotations

import datetime as dt
import functools
import re


_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_DATE_TAGS = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")


def dicom_age_years(ds) -> float | None:
    """PatientAge (AS: 034Y, 005M, 010W, 003D), else PatientBirthDate to the study's date; None if neither."""
    text = str(ds.get("PatientAge", "") or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", text)
    if match:
        return round(int(match[1]) * _UNIT_YEARS[match[2]], 2)
    birth = _date(ds.get("PatientBirthDate"))
    taken = next((d for d in (_date(ds.get(tag)) for tag in _DATE_TAGS) if d is not None), None)
    if birth is not None and taken is not None and taken >= birth:
        return round((taken - birth).days / 365.25, 2)
    return None


def _date(value) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(value or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def covers(ages, age: float) -> bool:
    """Whether a model's `ages` ([] or [from, below), either end None) include `age`."""
    if not ages:
        return True
    low, high = ages
    return (low is None or age >= low) and (high is None or age < high)


def overlap(a, b) -> bool:
    """Whether two models' `ages` share an age (no ages stated: every age)."""
    if not a or not b:
        return True
    low = max(a[0] or 0, b[0] or 0)
    high = min(x for x in (a[1], b[1], float("inf")) if x is not None)
    return low < high


def describe_ages(ages) -> str:
    if not ages:
        return "any age"
    low, high = ages
    low = low or None  # from 0 is no lower bound
    if low is not None and high is not None:
        return f"ages {low:g} to under {high:g}"
    if low is not None:
        return f"ages {low:g} and over"
    return f"ages under {high:g}"


@functools.lru_cache(maxsize=1)
def bundled_ages() -> tuple[tuple[str, list], ...]:
    """(name, ages) of each bundled model, read once: for naming the one that is for a refused film's age, and
    for choosing the models of --by-age (edge.routing)."""
    from .errors import CxrError
    from .metadata import read_model_file
    from .paths import bundled_models, resolve_model

    found = []
    for name in bundled_models():
        try:
            found.append((name, read_model_file(resolve_model(name))[1].ages))
        except CxrError:  # an unreadable bundled file is not a model to point anyone to
            continue
    return tuple(found)


def age_refusal(name: str, age: float | None, ages, model_name: str, by_age: bool = False) -> str | None:
    """Why a film whose header gives `age` is refused by a model for `ages`; None when it is not.
    by_age: the station already routes by age (and none of its models is for this age)."""
    if age is None or covers(ages, age):
        return None
    other = next((n for n, a in bundled_ages() if n != model_name and covers(a, age)), None)
    advice = (f"screen it with -m {other}{'' if by_age else ' (or --by-age)'}, or use --any-view to override"
              if other else "use --any-view to override")
    if by_age:
        advice = f"none of the models of --by-age is for that age; {advice}"
    return f"{name}: patient aged {age:g} y (DICOM header), and {model_name} is for {describe_ages(ages)}; {advice}"
