"""The systemd unit and docs/watch.md only use options that `cxr-edge watch` really has."""

from __future__ import annotations

from pathlib import Path

from deploy_checks import check_doc_options, check_systemd_analyze, check_unit

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "cxr-edge-watch.service"
DOC = ROOT / "docs" / "watch.md"


def test_unit_runs_the_watcher_as_a_restarting_service():
    check_unit(UNIT, "watch", ("Restart=always", "User=", "Environment=CXR_EDGE_HOME=", "WorkingDirectory=", "KillSignal=SIGTERM",
                                "WantedBy=multi-user.target"))


def test_docs_only_show_real_options():
    check_doc_options(DOC, ("watch", "review list", "review export", "review verdict"), "watch")


def test_unit_passes_systemd_analyze(tmp_path):
    check_systemd_analyze(UNIT, tmp_path)
