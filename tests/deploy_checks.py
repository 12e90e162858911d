"""Shared checks for the systemd units in deploy/ and the docs that show CLI options."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def help_options(*command: str) -> set[str]:
    text = subprocess.run([sys.executable, "-m", "edge.cli", *command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    return set(re.findall(r"--[a-z][a-z-]+", text))


def exec_start(unit_text: str) -> str:
    match = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit_text.replace("\\\n", " "), re.M)
    assert match, "no ExecStart"
    return match.group(1)


def check_unit(unit: Path, command: str, lines: tuple[str, ...]) -> None:
    """The unit runs `cxr-edge COMMAND` with options it really has, and holds the given lines."""
    text = unit.read_text()
    start = exec_start(text)
    assert f" {command} " in start
    unknown = set(re.findall(r"--[a-z][a-z-]+", start)) - help_options(command)
    assert not unknown, f"the unit uses options cxr-edge {command} does not have: {unknown}"
    for line in lines:
        assert line in text


def check_doc_options(doc: Path, commands: tuple[str, ...], table_command: str) -> None:
    """Every `cxr-edge COMMAND --option` shown in the doc, and its options table, exist."""
    text = doc.read_text().replace("\\\n", " ")  # join shell line continuations
    for command in commands:
        known = help_options(*command.split())
        used = set()
        for line in re.findall(rf"cxr-edge {command}\b[^\n`]*", text):
            used |= set(re.findall(r"--[a-z][a-z-]+", line))
        assert not used - known, f"{doc.name} shows options `cxr-edge {command}` does not have: {used - known}"
    table = set(re.findall(r"^\| `(--[a-z-]+)`", text, re.M)) | set(re.findall(r", `(--[a-z-]+)`", text))
    assert table and not table - help_options(table_command)


def check_systemd_analyze(unit_path: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    binary = shutil.which("cxr-edge")
    if not analyze or not binary:
        pytest.skip("systemd-analyze or an installed cxr-edge script is not available here")
    unit = tmp_path / unit_path.name
    unit.write_text(unit_path.read_text().replace("/opt/cxr-edge/venv/bin/cxr-edge", binary))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and unit_path.name not in result.stderr, result.stderr
