"""What the three command-line tools share, run as real processes: help that fits 80 columns, --version,
one-line user errors, the missing [train] extra, and no TensorFlow start-up noise."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"cxr-edge": "edge.cli", "cxr-train": "train.cli", "converters": "converters.cli"}

# An edge-only install, for real: a process in which TensorFlow and its companions cannot be imported.
EDGE_ONLY = """
import sys
class EdgeOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, EdgeOnly())
"""


def run(tool: str, *args: str, edge_only: bool = False, columns: int = 80, cwd: Path = ROOT):
    code = (EDGE_ONLY if edge_only else "") + f"from {TOOLS[tool]} import main; main()"
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def commands(tool: str):
    """Every (sub)command path of a tool and its click command object."""
    module = importlib.import_module(TOOLS[tool])
    stack = [((), typer.main.get_command(module.app))]
    while stack:
        path, command = stack.pop()
        yield path, command
        stack.extend((path + (name,), sub) for name, sub in getattr(command, "commands", {}).items())


@pytest.mark.parametrize("tool", TOOLS)
def test_help_fits_80_columns_without_cutting_options_or_defaults(tool):
    for path, command in commands(tool):
        result = run(tool, *path, "--help")
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert all(len(line) <= 80 for line in text.splitlines()), (path, text)
        assert "…" not in text and "<bool>" not in text and "╭" not in text, (path, text)
        flat = " ".join(text.split())
        for param in command.params:
            for name in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                if name.startswith("-"):
                    assert re.search(rf"(^|[\s,/\[]){re.escape(name)}($|[\s,/=\]])", flat), (path, name, text)
            default = getattr(param, "default", None)
            if getattr(param, "show_default", False) and isinstance(default, (int, float, str)) \
                    and not isinstance(default, bool) and default != "":
                assert f"[default: {default}]" in flat or f"default: {default}" in flat, (path, param.name, flat)


@pytest.mark.parametrize("tool", TOOLS)
def test_version(tool):
    result = run(tool, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"{tool} 0.1.0", result


@pytest.mark.parametrize("tool, args, message", [
    ("cxr-edge", ("screen",), "Missing argument 'images'"),
    ("cxr-edge", ("screen", "x.png", "--threshold", "2"), "Invalid value for '--threshold'"),
    ("cxr-train", ("fit",), "Missing argument"),
    ("converters", ("parity", "a.keras"), "Missing argument"),
])
def test_usage_errors_are_one_line(tool, args, message):
    result = run(tool, *args)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"{tool}: error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert "╭" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("tool, args", [
    ("cxr-train", ("presets",)),
    ("converters", ("quantize", "{keras}", "--out", "{out}", "--mode", "float32")),
    ("converters", ("parity", "{keras}", "{tflite}", "--data", "{data}")),
])
def test_edge_only_install_says_the_train_extra_is_needed(tool, args, tmp_path, tiny_model):
    keras = tmp_path / "model.keras"
    keras.write_bytes(b"PK\x03\x04 not really a model")  # never read: TensorFlow is needed first
    from edge.metadata import read_model_file

    (tmp_path / "model.meta.json").write_text(read_model_file(tiny_model)[1].to_json())  # as a cxr-train run has
    args = [a.format(keras=keras, out=tmp_path / "m.tflite", tflite=tiny_model, data=ROOT / "tests" / "data" /
                     "cxr-mini") for a in args]
    result = run(tool, *args, edge_only=True)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"{tool}: error: this command needs TensorFlow") and "[train]" in result.stderr


def test_edge_only_install_still_runs_the_commands_that_need_no_tensorflow():
    result = run("cxr-train", "aliases", edge_only=True)
    assert result.returncode == 0 and "->" in result.stdout, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs the [train] extra")
def test_tensorflow_start_up_noise_is_not_printed():
    result = run("cxr-train", "presets")
    assert result.returncode == 0 and "small-cnn" in result.stdout, result.stderr
    assert result.stderr == "", result.stderr  # TensorFlow prints 8 absl/oneDNN/CUDA lines here without the filter


def test_the_noise_filter_keeps_real_errors():
    from edge.cli_common import NOISE, may_be_noise

    noise = [b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             b"I0000 00:00:1795482930.822227   27555 port.cc:153] oneDNN custom operations are on.",
             b"E0000 00:00:1732000000.1 123 cuda_executor.cc:1228] failed call to cuInit: INTERNAL: CUDA error",
             b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8",
             b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."]
    kept = [b"E0000 00:00:1732000000.1 123 op_kernel.cc:1818] OP_REQUIRES failed: out of memory",
            b"Traceback (most recent call last):", b"converters: error: x.keras: not found"]
    assert all(NOISE.match(line) for line in noise) and not any(NOISE.match(line) for line in kept)
    assert all(may_be_noise(line[:n]) for line in noise for n in (1, 5, 12))
    assert not any(may_be_noise(start) for start in (b"\rauditing: 50/5471", b"\x1b[2K", b"converters: e"))


def test_progress_written_without_a_newline_passes_the_filter_at_once():
    """A progress line (\r, no newline) must show while the command runs, not at its end: the child
    blocks on stdin until the parent has received it, so only an immediate forward lets this finish."""
    import select

    code = ("import os, sys\n"
            "from edge.cli_common import QuietStderr\n"
            "quiet = QuietStderr(); quiet.start()\n"
            "assert not sys.stderr.isatty()  # as the real stderr (a pipe here)\n"
            "os.write(2, b'I0000 00:00:1.2 1 port.cc:153] noise\\n')\n"
            "sys.stderr.write('\\rauditing: 50/100'); sys.stderr.flush()\n"
            "sys.stdin.read(1)\n"
            "quiet.stop()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready, _, _ = select.select([process.stderr], [], [], 120)
        first = os.read(process.stderr.fileno(), 100) if ready else b""
    finally:
        process.stdin.write(b"x")
        process.stdin.close()
    assert first == b"\rauditing: 50/100"  # the noise line before it was dropped
    assert process.stderr.read() == b"" and process.wait(timeout=60) == 0


def test_run_cli_also_runs_a_plain_function_with_one_line_errors():
    """train.study runs each preset through run_cli(function, ...) in a child process."""
    code = ("from edge.cli_common import run_cli\n"
            "from edge.errors import CxrError, ExitCode\n"
            "def one():\n"
            "    print('ran')\n"
            "    raise CxrError('x.keras: not found', code=ExitCode.MODEL)\n"
            "run_cli(one, 'cxr-train')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 3 and result.stdout == "ran\n", result
    assert result.stderr == "cxr-train: error: x.keras: not found\n"
