"""The metadata every cxr-edge model carries inside its .tflite file.

It names the model, its classes, the preprocessing spec and the decision threshold, so the
edge runtime needs nothing but the one file. converters/ writes it; everything reads it here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import CxrError, ExitCode
from .preprocess import PreprocessSpec
from .tflite_file import NotTFLite, read_metadata_entries

METADATA_NAME = "cxr_edge_metadata"
SCHEMA_VERSION = 1
INTENDED_USE = ("Screening aid: flags chest X-rays for review by a doctor. "
                "Not a diagnostic device; a normal result does not rule out disease.")
NORMAL_CLASS = "normal"
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+/-]{0,63}$")  # printable as is: no markup, no controls
MAX_METADATA_BYTES = 1 << 20


@dataclass
class ModelMetadata:
    name: str
    version: str
    classes: list[str]
    preprocessing: PreprocessSpec
    threshold: float  # refer when abnormality = 1 - P(normal) >= threshold
    threshold_rule: str = ""  # how the threshold was chosen, in words
    architecture: str = ""
    quantization: str = "float32"
    source_model_sha256: str = ""
    training_data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=lambda: {"probabilities": 0})  # output name -> output index
    created: str = ""
    intended_use: str = INTENDED_USE
    schema_version: int = SCHEMA_VERSION
    task: str = "screening"  # or "gate": the input gate (edge/gate.py), whose classes are image kinds
    gate: dict = field(default_factory=dict)  # a classifier may pin its gate: {"file": ..., "sha256": ...}
    ages: list = field(default_factory=list)  # [from, below) years the model is for (null: open); [] any age

    def validate(self) -> None:
        problems = _type_problems(self)
        if problems:
            raise CxrError("model metadata is malformed: " + "; ".join(problems), code=ExitCode.MODEL,
                           reason="bad_metadata")
        if self.task == "screening" and NORMAL_CLASS not in self.classes:
            raise CxrError(f"model metadata has no '{NORMAL_CLASS}' class (classes: {self.classes})",
                           code=ExitCode.MODEL, reason="bad_metadata")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise CxrError(f"model metadata threshold {self.threshold} is outside [0, 1]",
                           code=ExitCode.MODEL, reason="bad_metadata")
        self.preprocessing.validate()

    @property
    def normal_index(self) -> int:
        return self.classes.index(NORMAL_CLASS)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMetadata":
        if not isinstance(data, dict) or not isinstance(data.get("preprocessing"), dict):
            raise CxrError("model metadata is malformed: not an object with a 'preprocessing' object",
                           code=ExitCode.MODEL, reason="bad_metadata")
        problems = [f"preprocessing {key} is {value!r}, not a whole number"
                    for key, value in data["preprocessing"].items()
                    if key in ("height", "width", "channels") and not _is_int(value)]
        problems += [f"preprocessing {key} is {value!r}, not a name" for key, value in data["preprocessing"].items()
                     if key in ("resize", "interpolation", "scale") and not isinstance(value, str)]
        if problems:
            raise CxrError("model metadata is malformed: " + "; ".join(problems), code=ExitCode.MODEL,
                           reason="bad_metadata")
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            fields["preprocessing"] = PreprocessSpec.from_dict(data["preprocessing"])
            fields["threshold"] = float(fields["threshold"])
            meta = cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise CxrError(f"model metadata is incomplete ({exc})", code=ExitCode.MODEL,
                           reason="bad_metadata") from None
        meta.validate()
        return meta


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tflite(path: str | Path) -> tuple[bytes, dict[str, bytes]]:
    """Bytes and named metadata entries of a .tflite file; CxrError (exit 3) when unreadable or not TFLite."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: model file not found", code=ExitCode.MODEL, reason="model_not_found") from None
    except OSError as exc:
        raise CxrError(f"{path}: model file cannot be read ({exc.strerror or exc})", code=ExitCode.MODEL,
                       reason="model_unreadable") from None
    try:
        return data, read_metadata_entries(data)
    except NotTFLite as exc:
        raise CxrError(f"{path}: not a TFLite model ({exc})", code=ExitCode.MODEL, reason="not_tflite") from None


def read_model_file(path: str | Path) -> tuple[bytes, ModelMetadata]:
    """Bytes and metadata of a cxr-edge .tflite file; CxrError (exit 3) on any problem."""
    path = Path(path)
    data, entries = read_tflite(path)
    if METADATA_NAME not in entries:
        raise CxrError(f"{path}: TFLite model has no cxr-edge metadata; convert it with `converters quantize`",
                       code=ExitCode.MODEL, reason="no_metadata")
    payload = entries[METADATA_NAME]
    if len(payload) > MAX_METADATA_BYTES:
        raise CxrError(f"{path}: cxr-edge metadata is {len(payload)} bytes, over {MAX_METADATA_BYTES}",
                       code=ExitCode.MODEL, reason="bad_metadata")
    try:
        raw = json.loads(payload.decode("utf-8"))
    except RecursionError:
        raise CxrError(f"{path}: cxr-edge metadata is nested too deeply to be read", code=ExitCode.MODEL,
                       reason="bad_metadata") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: cxr-edge metadata is not valid JSON ({exc})", code=ExitCode.MODEL,
                       reason="bad_metadata") from None
    return data, ModelMetadata.from_dict(raw)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problems(meta: ModelMetadata) -> list[str]:
    """What a hand-edited or hostile metadata block can get wrong that would crash later or mislead."""
    problems = []
    for key in ("name", "version"):
        value = getattr(meta, key)
        if not isinstance(value, str) or not value.isprintable() or not 0 < len(value) <= 128:
            problems.append(f"{key} must be a short printable text, not {value!r:.80}")
    classes = meta.classes
    if not isinstance(classes, list) or not 2 <= len(classes) <= 64:
        problems.append(f"classes must be a list of 2 to 64 names, not {classes!r:.80}")
    else:
        bad = [c for c in classes if not isinstance(c, str) or not CLASS_NAME.match(c)]
        if bad:
            problems.append(f"class names must be plain words (letters, digits, space, _ . + / -): {bad!r:.120}")
        elif len(set(classes)) != len(classes):
            problems.append(f"class names repeat: {classes}")
    outputs = meta.outputs
    if not isinstance(outputs, dict) or "probabilities" not in outputs:
        problems.append(f"outputs must map names to output indices and name 'probabilities', not {outputs!r:.80}")
    elif not all(isinstance(k, str) and _is_int(v) and 0 <= v < 64 for k, v in outputs.items()):
        problems.append(f"output indices must be whole numbers from 0: {outputs!r:.120}")
    elif len(set(outputs.values())) != len(outputs):
        problems.append(f"two outputs share one index: {outputs}")
    if isinstance(meta.threshold, bool) or not isinstance(meta.threshold, (int, float)):
        problems.append(f"threshold must be a number, not {meta.threshold!r:.40}")
    ages = meta.ages
    if not (isinstance(ages, list) and (not ages or (len(ages) == 2 and ages != [None, None] and all(
            a is None or (isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a < 200) for a in ages)))):
        problems.append(f"ages must be [] or [from, below] in years (null for an open end), not {ages!r:.60}")
    return problems
