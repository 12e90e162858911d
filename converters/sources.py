"""Load what train/ produced: the Keras model file and the metadata JSON beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.errors import CxrError, ExitCode
from edge.metadata import ModelMetadata, file_sha256
from edge.metadata import read_tflite as edge_read_tflite

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class SourceModel:
    path: Path
    model: object  # tf_keras.Model
    metadata: ModelMetadata
    sha256: str
    extra: dict = None  # named buffers to embed beside the metadata (the lung segmenter)


def load_source(model_path: str | Path, meta_path: str | Path | None = None) -> SourceModel:
    """The Keras model, its metadata (checked against the model) and the model file's sha256."""
    model_path = Path(model_path)
    metadata = load_source_metadata(model_path, meta_path)
    extra = lung_segmenter_entry(metadata, [model_path.parent] + ([Path(meta_path).parent] if meta_path else []))
    model = load_keras_model(model_path)
    check_model_matches(model, metadata, model_path)
    return SourceModel(model_path, model, metadata, file_sha256(model_path), extra)


SEGMENTER_FILE = "lungs.tflite"  # cxr-train fit --crop lungs copies the segmenter into the run folder


def lung_segmenter_entry(metadata: ModelMetadata, folders) -> dict[str, bytes]:
    """{} or {LUNGS_ENTRY: segmenter bytes} for a model whose preprocessing crops to the lungs; the segmenter
    (RUN/lungs.tflite) is registered for the preprocessing and checked against the sha256 the spec names."""
    import hashlib

    from edge import lungs

    spec = metadata.preprocessing
    if spec.crop != "lungs":
        return {}
    for folder in folders:
        candidate = Path(folder) / SEGMENTER_FILE
        if candidate.is_file():
            data = candidate.read_bytes()
            if hashlib.sha256(data).hexdigest() == spec.lungs:
                lungs.register(data)
                return {lungs.LUNGS_ENTRY: data}
    raise CxrError(f"the model crops to the lungs with segmenter {spec.lungs[:12]}..., but no {SEGMENTER_FILE} with "
                   f"that sha256 is in {', '.join(str(f) for f in folders)} (cxr-train fit puts it in the run folder)",
                   code=ExitCode.MODEL, reason="no_metadata")


def load_keras_model(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise CxrError(f"{path}: Keras model file not found", code=ExitCode.MODEL, reason="model_not_found")
    if path.is_dir():
        raise CxrError(f"{path}: is a folder; give the model.keras file that train/ wrote",
                       code=ExitCode.MODEL, reason="not_keras")
    head = path.read_bytes()[:8]
    if head[4:8] == b"TFL3":
        raise CxrError(f"{path}: is a TFLite model, not a Keras model; converters start from the "
                       "model.keras that train/ wrote", code=ExitCode.MODEL, reason="not_keras")
    if not (head.startswith(b"PK") or head.startswith(b"\x89HDF")):
        raise CxrError(f"{path}: not a Keras model file (expected a .keras zip or .h5 file)",
                       code=ExitCode.MODEL, reason="not_keras")
    keras = _keras()
    _register_custom_layers()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for foreign or damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CxrError(f"{path}: cannot be loaded as a Keras model ({first})", code=ExitCode.MODEL,
                       reason="not_keras") from None


def load_source_metadata(model_path: Path, meta_path: str | Path | None) -> ModelMetadata:
    candidates = [Path(meta_path)] if meta_path else [model_path.with_suffix(".meta.json"),
                                                      model_path.parent / "model.meta.json"]
    for candidate in candidates:
        if candidate.is_file():
            return read_metadata_json(candidate)
    shown = " or ".join(str(c) for c in candidates)
    raise CxrError(f"{model_path}: no model metadata found ({shown}); train/ writes model.meta.json beside "
                   "the model, or give --meta PATH", code=ExitCode.MODEL, reason="no_metadata")


def read_metadata_json(path: Path) -> ModelMetadata:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{path}: model metadata is not readable JSON ({exc})", code=ExitCode.MODEL,
                       reason="bad_metadata") from None
    if not isinstance(raw, dict):
        raise CxrError(f"{path}: model metadata must be a JSON object", code=ExitCode.MODEL, reason="bad_metadata")
    try:
        return ModelMetadata.from_dict(raw)
    except CxrError as exc:
        raise CxrError(f"{path}: {exc}", code=exc.code, reason=exc.reason) from None


def check_model_matches(model, metadata: ModelMetadata, path: Path) -> None:
    spec = metadata.preprocessing
    shape = tuple(model.inputs[0].shape[1:])
    if shape != (spec.height, spec.width, spec.channels):
        raise CxrError(f"{path}: model input {shape} does not match its metadata's preprocessing "
                       f"({spec.height}, {spec.width}, {spec.channels})", code=ExitCode.MODEL, reason="bad_metadata")
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(metadata.classes):
        raise CxrError(f"{path}: model has {n_out} outputs but its metadata names {len(metadata.classes)} classes",
                       code=ExitCode.MODEL, reason="bad_metadata")


def read_tflite(path: str | Path) -> bytes:
    """Bytes of a .tflite file, with one-line errors (it need not carry cxr-edge metadata)."""
    return edge_read_tflite(path)[0]


def _keras():
    import tf_keras as keras
    return keras


def _register_custom_layers() -> None:
    """models.architectures registers the custom layers train/ uses; older runs may predate it."""
    try:
        import models.architectures  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "models.architectures":
            raise
