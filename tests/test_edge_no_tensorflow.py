"""edge/ must run on a Raspberry Pi without TensorFlow: nothing it imports may pull it in."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge
from images import NORMAL_SAMPLE

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, pkgutil, sys
import edge
for info in pkgutil.walk_packages(edge.__path__, "edge."):
    importlib.import_module(info.name)
from edge.runtime import TFLiteModel
from edge.screening import screen_file
model = TFLiteModel(sys.argv[1])
result = screen_file(sys.argv[2], model, 0.5)
assert result.ok, result.reason
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "tf_keras", "keras", "train", "converters", "tensorflow_model_optimization"})
print("FORBIDDEN:" + ",".join(bad))
"""


def test_every_edge_module_imports_and_screens_without_tensorflow(tiny_model):
    modules = [info.name for info in pkgutil.walk_packages(edge.__path__, "edge.")]
    assert "edge.cli" in modules and "edge.runtime" in modules
    run = subprocess.run([sys.executable, "-c", PROBE, str(tiny_model), str(NORMAL_SAMPLE)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("FORBIDDEN:"), run.stdout


def test_edge_sources_never_name_tensorflow():
    for source in Path(edge.__file__).parent.rglob("*.py"):
        text = source.read_text()
        for forbidden in ("import tensorflow", "from tensorflow", "import tf_keras", "from train", "from converters",
                          "import train", "import converters"):
            assert forbidden not in text, f"{source} contains {forbidden!r}"
