"""Size and speed of a .tflite file: bytes, gzip bytes, weight sparsity, LiteRT latency."""

from __future__ import annotations

import gzip
import hashlib
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from .tflite_model import read_graph

WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


def weight_sparsity(data: bytes) -> dict:
    """Fraction of exact zeros in the weight tensors (kernels of conv and dense layers).

    int8 weights are zero when they equal their zero point; float16 weights reach their op
    through a DEQUANTIZE, so the constant feeding it is counted too.
    """
    graph = read_graph(data)
    producers = {t.index: op for op in graph.ops for t in op.outputs}
    zeros = total = 0
    for op in graph.ops:
        slot = WEIGHT_OPS.get(op.name)
        if slot is None or slot >= len(op.inputs):
            continue
        weight = op.inputs[slot]
        source = producers.get(weight.index)
        if not weight.is_constant and source is not None and source.name == "DEQUANTIZE" and source.inputs:
            weight = source.inputs[0]
        values = weight.values()
        if values is None:
            continue
        zero = weight.zero_point if weight.type in ("INT8", "UINT8") and weight.zero_point is not None else 0
        zeros += int(np.count_nonzero(values == zero))
        total += int(values.size)
    return {"weights": total, "zero_weights": zeros, "sparsity": round(zeros / total, 4) if total else None}


def measure_latency(data: bytes, runs: int = 50, warmup: int = 5, threads: int | None = None) -> dict:
    """Median single-image invoke time with LiteRT (input set once, then repeated invokes)."""
    from ai_edge_litert.interpreter import Interpreter

    threads = threads or os.cpu_count() or 1
    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    image = rng.random(detail["shape"], dtype=np.float32)
    if detail["dtype"] != np.float32:
        scale, zero_point = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        image = np.clip(np.round(image / scale + zero_point), info.min, info.max).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], image)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
            "min_ms": round(times[0], 3), "runs": runs, "threads": threads, "runtime": "ai-edge-litert",
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
            "cpu_count": os.cpu_count()}


def file_report(path: str | Path, runs: int = 50, threads: int | None = None) -> dict:
    from edge.metadata import METADATA_NAME
    from edge.tflite_file import read_metadata_entries
    import json

    path = Path(path)
    data = path.read_bytes()
    meta = {}
    raw = read_metadata_entries(data).get(METADATA_NAME)
    if raw:
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    graph = read_graph(data)
    return {
        "file": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": {"name": meta.get("name"), "version": meta.get("version"),
                  "quantization": meta.get("quantization"), "source_model_sha256": meta.get("source_model_sha256")},
        "bytes": len(data),
        "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        **weight_sparsity(data),
        "ops": len(graph.ops),
        "min_runtime_version": graph.min_runtime_version,
        "latency": measure_latency(data, runs=runs, threads=threads),
    }
