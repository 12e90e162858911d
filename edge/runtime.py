"""Load a cxr-edge .tflite file into a TFLite interpreter and run it on preprocessed images.

LiteRT (`ai_edge_litert`) first; `tflite_runtime` as a fallback for old devices that have it.
Never TensorFlow: a test imports every edge module and checks that TensorFlow stays unloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CxrError, ExitCode
from .metadata import read_model_file

EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter
        return interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter  # type: ignore[import-not-found]
        return interpreter, "tflite-runtime"
    except ImportError:
        raise CxrError("no TFLite interpreter installed: `pip install ai-edge-litert` "
                       "(or tflite-runtime on devices that pin numpy<2)",
                       code=ExitCode.RUNTIME, reason="no_runtime") from None


def _edgetpu_delegate(module):
    import ctypes
    import platform
    library = EDGETPU_LIBRARIES.get(platform.system(), "libedgetpu.so.1")
    try:
        # Probe first: LiteRT's Delegate prints an ignored-exception traceback when its own load fails.
        ctypes.CDLL(library)
        return module.load_delegate(library)
    except (ValueError, OSError) as exc:
        raise CxrError(f"Edge TPU delegate {library} could not be loaded ({exc}); install libedgetpu "
                       "and check that the Coral device is plugged in", code=ExitCode.RUNTIME,
                       reason="no_edgetpu") from None


@dataclass
class Prediction:
    outputs: dict[str, np.ndarray]  # output name (from metadata) -> float array without batch axis
    latency_ms: float  # interpreter invoke only, including input quantization

    @property
    def probabilities(self) -> np.ndarray:
        return self.outputs["probabilities"]


class TFLiteModel:
    """One loaded model: its metadata, its hash and a ready interpreter."""

    def __init__(self, path: str | Path, *, delegate: str | None = None, threads: int | None = None):
        self.path = Path(path)
        data, self.metadata = read_model_file(self.path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        if self.metadata.preprocessing.crop == "lungs":
            _load_lung_segmenter(self.path, data, self.metadata.preprocessing.lungs)
        module, self.runtime = _interpreter_module()
        delegates = []
        if delegate == "edgetpu":
            delegates.append(_edgetpu_delegate(module))
        elif delegate not in (None, "", "cpu"):
            raise CxrError(f"unknown delegate {delegate!r} (choose cpu or edgetpu)", code=ExitCode.USAGE,
                           reason="bad_option")
        try:
            with _quiet_native_stderr():
                self.interpreter = module.Interpreter(model_content=data, num_threads=threads or os.cpu_count(),
                                                      experimental_delegates=delegates or None)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CxrError(f"{self.path}: the interpreter cannot load this model ({exc})",
                           code=ExitCode.MODEL, reason="model_unloadable") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()
        self._check_shapes()

    @property
    def identity(self) -> dict:
        """What every output row carries to say which model produced it."""
        return {"name": self.metadata.name, "version": self.metadata.version, "sha256": self.sha256}

    def _check_shapes(self) -> None:
        spec = self.metadata.preprocessing
        expected = (1, spec.height, spec.width, spec.channels)
        if tuple(self.input["shape"]) != expected:
            raise CxrError(f"{self.path}: model input shape {tuple(self.input['shape'])} does not match its "
                           f"metadata {expected}", code=ExitCode.MODEL, reason="bad_metadata")
        n_classes = len(self.metadata.classes)
        for name, index in self.metadata.outputs.items():
            if index >= len(self.output_details):
                raise CxrError(f"{self.path}: metadata output {name!r} is index {index}, but the model has "
                               f"{len(self.output_details)} outputs", code=ExitCode.MODEL, reason="bad_metadata")
        probs = self.output_details[self.metadata.outputs["probabilities"]]
        if tuple(int(n) for n in probs["shape"]) != (1, n_classes):
            raise CxrError(f"{self.path}: the output the metadata names 'probabilities' has shape "
                           f"{tuple(int(n) for n in probs['shape'])}, not (1, {n_classes}) for its {n_classes} "
                           "classes (outputs swapped?)", code=ExitCode.MODEL, reason="bad_metadata")

    def predict(self, image: np.ndarray) -> Prediction:
        """image: preprocessed float32 (H, W, C) in [0, 1]."""
        start = time.perf_counter()
        self.interpreter.set_tensor(self.input["index"], _quantize(image[None], self.input))
        self.interpreter.invoke()
        outputs = {}
        for name, index in self.metadata.outputs.items():
            detail = self.output_details[index]
            outputs[name] = _dequantize(self.interpreter.get_tensor(detail["index"]), detail)[0]
        latency = (time.perf_counter() - start) * 1000.0
        return Prediction(outputs, latency)


def _load_lung_segmenter(path: Path, data: bytes, expected_sha256: str) -> None:
    """Register the lung segmenter stored inside the model file; it must be the one the spec names."""
    from . import lungs
    from .tflite_file import read_metadata_entries

    segmenter = read_metadata_entries(data).get(lungs.LUNGS_ENTRY)
    if segmenter is None or hashlib.sha256(segmenter).hexdigest() != expected_sha256:
        raise CxrError(f"{path}: the model's preprocessing needs lung segmenter {expected_sha256[:12]}..., which is "
                       "not inside the file", code=ExitCode.MODEL, reason="bad_metadata")
    lungs.register(segmenter)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide the runtime's native "INFO: Created TensorFlow Lite XNNPACK delegate" line from technicians."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (x.astype(np.float32) - zero_point) * scale
