"""The listen systemd unit and docs/network.md only use options `cxr-edge listen` / `outbox` really have."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_watch_deploy import exec_start, help_options

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "cxr-edge-listen.service"
DOC = ROOT / "docs" / "network.md"


def test_unit_runs_the_listener_as_a_restarting_service():
    text = UNIT.read_text()
    command = exec_start(text)
    assert " listen " in command
    unknown = set(re.findall(r"--[a-z][a-z-]+", command)) - help_options("listen")
    assert not unknown, f"the unit uses options cxr-edge listen does not have: {unknown}"
    for line in ("Restart=always", "User=", "Environment=CXR_EDGE_HOME=", "KillSignal=SIGTERM",
                 "WantedBy=multi-user.target"):
        assert line in text


def test_network_doc_only_shows_real_options():
    text = DOC.read_text().replace("\\\n", " ")
    for command in ("listen", "outbox list", "outbox retry", "watch"):
        known = help_options(*command.split())
        used = set()
        for line in re.findall(rf"cxr-edge {command}\b[^\n`]*", text):
            used |= set(re.findall(r"--[a-z][a-z-]+", line))
        assert not used - known, f"docs/network.md shows options `cxr-edge {command}` does not have: {used - known}"
    table = set(re.findall(r"^\| `(--[a-z-]+)`", text, re.M)) | set(re.findall(r", `(--[a-z-]+)`", text))
    assert table and not table - help_options("listen")


def test_unit_passes_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    binary = shutil.which("cxr-edge")
    if not analyze or not binary:
        pytest.skip("systemd-analyze or an installed cxr-edge script is not available here")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/cxr-edge/venv/bin/cxr-edge", binary))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and UNIT.name not in result.stderr, result.stderr
