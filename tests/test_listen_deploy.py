"""The listen systemd unit and docs/network.md only use options `cxr-edge listen` / `outbox` really have."""

from __future__ import annotations

from pathlib import Path

from deploy_checks import check_doc_options, check_systemd_analyze, check_unit

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "cxr-edge-listen.service"
DOC = ROOT / "docs" / "network.md"


def test_unit_runs_the_listener_as_a_restarting_service():
    check_unit(UNIT, "listen", ("Restart=always", "User=", "Environment=CXR_EDGE_HOME=", "KillSignal=SIGTERM",
                                 "WantedBy=multi-user.target"))


def test_network_doc_only_shows_real_options():
    check_doc_options(DOC, ("listen", "outbox list", "outbox retry", "watch"), "listen")


def test_unit_passes_systemd_analyze(tmp_path):
    check_systemd_analyze(UNIT, tmp_path)
