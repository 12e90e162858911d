"""Benchmark the shipped edge model against the Keras model it came from, on this machine, in one run.

Measures (nothing here is asserted by tests; results go to the model card):
- single-image latency (median, p95) and throughput: int8 .tflite with LiteRT vs the Keras float model
  with TensorFlow, on the same preprocessed image;
- whole-process wall time and peak RSS: `cxr-edge screen` on one full-resolution image vs a TensorFlow
  process that loads the Keras model and predicts the same image;
- bytes and gzip bytes of the Keras model and every .tflite given.

Usage:
  python scripts/benchmark.py --keras RUN/model.keras --tflite models/cxr-default.tflite \
      --extra float32=RUN/model-float32.tflite --extra pruned-int8=RUN/pruned-int8.tflite \
      --image ../shared/data/fullres/adult-cr-1.png --out models/benchmark.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TF_PROCESS = """
import os, sys
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np, tensorflow as tf, tf_keras as keras
import models.architectures  # registers custom layers, if any
from edge.decode import load_image
from edge.metadata import ModelMetadata
from edge.preprocess import preprocess
import json
from pathlib import Path
from converters.sources import lung_segmenter_entry  # a lung-cropping model needs its segmenter (RUN/lungs.tflite)
meta = ModelMetadata.from_dict(json.load(open(sys.argv[2])))
lung_segmenter_entry(meta, [Path(sys.argv[1]).parent, Path(sys.argv[2]).parent])
spec = meta.preprocessing
model = keras.models.load_model(sys.argv[1], compile=False)
x = preprocess(load_image(sys.argv[3]).pixels, spec)[None]
print(model.predict(x, verbose=0)[0].tolist())
"""


def run_measured(cmd: list[str]) -> dict:
    """Wall time and peak RSS (MB) of one child process.

    posix_spawn (vfork + exec), not fork: a forked child is charged the parent's resident pages until it
    execs, which would add this benchmark's own memory to the child's peak RSS.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    start = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, dict(os.environ), file_actions=[
        (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd[:4])}... failed with {os.waitstatus_to_exitcode(status)}")
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def time_calls(fn, repeats: int) -> dict:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    median = statistics.median(times)
    return {"median_ms": round(median, 3), "p95_ms": round(percentile(times, 0.95), 3),
            "images_per_s": round(1000.0 / median, 1), "repeats": repeats}


def sizes(path: Path) -> dict:
    if path.is_dir():
        data = b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())
    else:
        data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9))}


def latency_litert(tflite: Path, image: Path, repeats: int) -> dict:
    from edge.decode import load_image
    from edge.preprocess import preprocess
    from edge.runtime import TFLiteModel

    model = TFLiteModel(tflite)
    x = preprocess(load_image(image).pixels, model.metadata.preprocessing)
    return time_calls(lambda: model.predict(x), repeats)


def latency_keras(keras_path: Path, meta_path: Path, image: Path, repeats: int) -> dict:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras
    import models.architectures  # noqa: F401  (registers custom layers)
    from edge.decode import load_image
    from edge.metadata import ModelMetadata
    from edge.preprocess import preprocess

    from converters.sources import lung_segmenter_entry

    meta = ModelMetadata.from_dict(json.loads(meta_path.read_text()))
    lung_segmenter_entry(meta, [keras_path.parent, meta_path.parent])
    spec = meta.preprocessing
    model = keras.models.load_model(keras_path, compile=False)
    x = preprocess(load_image(image).pixels, spec)[None]
    # model(x) is Keras' fastest single-image path; model.predict adds per-call overhead.
    return time_calls(lambda: model(x, training=False), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras", type=Path, required=True)
    parser.add_argument("--meta", type=Path, help="metadata JSON beside the Keras model (default: model.meta.json)")
    parser.add_argument("--tflite", type=Path, required=True, help="the shipped int8 model")
    parser.add_argument("--extra", action="append", default=[], help="NAME=PATH of another .tflite to size")
    parser.add_argument("--image", type=Path, required=True, help="one full-resolution image")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    meta = args.meta or args.keras.with_name("model.meta.json")

    result = {"machine": {"platform": platform.platform(), "processor": platform.machine(),
                          "cpus": os.cpu_count(), "python": platform.python_version()},
              "image": str(args.image)}
    screen = [sys.executable, "-m", "edge.cli", "screen", "--no-log", "--json", "--model", str(args.tflite),
              str(args.image)]
    tf_cmd = [sys.executable, "-c", TF_PROCESS, str(args.keras), str(meta), str(args.image)]
    result["process"] = {"cxr_edge_screen": [run_measured(screen) for _ in range(3)],
                         "tensorflow_keras": [run_measured(tf_cmd) for _ in range(3)]}
    edge_wall = statistics.median(r["wall_s"] for r in result["process"]["cxr_edge_screen"])
    tf_wall = statistics.median(r["wall_s"] for r in result["process"]["tensorflow_keras"])
    result["process"]["speedup"] = round(tf_wall / edge_wall, 2)
    result["latency"] = {"int8_litert": latency_litert(args.tflite, args.image, args.repeats),
                         "keras_tensorflow": latency_keras(args.keras, meta, args.image, args.repeats // 4)}
    result["latency"]["speedup"] = round(result["latency"]["keras_tensorflow"]["median_ms"]
                                         / result["latency"]["int8_litert"]["median_ms"], 2)
    files = {"keras": args.keras, "shipped_int8": args.tflite}
    files.update({name: Path(path) for name, path in (e.split("=", 1) for e in args.extra)})
    result["sizes"] = {name: sizes(path) for name, path in files.items()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
