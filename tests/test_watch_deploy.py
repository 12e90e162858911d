"""The systemd unit and docs/watch.md only use options that `cxr-edge watch` really has."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "cxr-edge-watch.service"
DOC = ROOT / "docs" / "watch.md"


@functools.lru_cache(maxsize=None)
def help_options(*command: str) -> set[str]:
    text = subprocess.run([sys.executable, "-m", "edge.cli", *command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    return set(re.findall(r"--[a-z][a-z-]+", text))


def exec_start(unit_text: str) -> str:
    match = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit_text.replace("\\\n", " "), re.M)
    assert match, "no ExecStart"
    return match.group(1)


def test_unit_runs_the_watcher_as_a_restarting_service():
    text = UNIT.read_text()
    command = exec_start(text)
    assert " watch " in command
    unknown = set(re.findall(r"--[a-z][a-z-]+", command)) - help_options("watch")
    assert not unknown, f"the unit uses options cxr-edge watch does not have: {unknown}"
    for line in ("Restart=always", "User=", "Environment=CXR_EDGE_HOME=", "WorkingDirectory=", "KillSignal=SIGTERM",
                 "WantedBy=multi-user.target"):
        assert line in text


def test_docs_only_show_real_options():
    text = DOC.read_text().replace("\\\n", " ")  # join shell line continuations
    for command in ("watch", "review list", "review export", "review verdict"):
        known = help_options(*command.split())
        used = set()
        for line in re.findall(rf"cxr-edge {command}\b[^\n`]*", text):
            used |= set(re.findall(r"--[a-z][a-z-]+", line))
        assert not used - known, f"docs/watch.md shows options `cxr-edge {command}` does not have: {used - known}"
    table = set(re.findall(r"^\| `(--[a-z-]+)`", text, re.M)) | set(re.findall(r", `(--[a-z-]+)`", text))
    assert table and not table - help_options("watch")


def test_unit_passes_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    binary = shutil.which("cxr-edge")
    if not analyze or not binary:
        pytest.skip("systemd-analyze or an installed cxr-edge script is not available here")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/cxr-edge/venv/bin/cxr-edge", binary))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and UNIT.name not in result.stderr, result.stderr
