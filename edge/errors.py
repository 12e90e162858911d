"""The one error type for user mistakes, and the exit codes the CLI turns them into."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    INPUT_NOT_SCREENED = 1  # at least one input was unreadable or refused; the rest were screened
    USAGE = 2  # bad command-line usage (typer/click's own code)
    MODEL = 3  # model file missing, not a TFLite model, or without cxr-edge metadata
    RUNTIME = 4  # no TFLite interpreter, or a requested delegate (Edge TPU) is missing
    STORAGE = 5  # the review log or another output cannot be written or read
    DATA = 6  # a dataset folder is empty, unlabelled or has unknown class names
    CHECK_FAILED = 7  # a check ran and failed its tolerance (parity, leakage refusal)


class CxrError(Exception):
    """A problem the user can fix: printed as one line, never with a traceback.

    `reason` is a stable machine-readable code that JSON output and the review log record.
    """

    def __init__(self, message: str, *, code: ExitCode = ExitCode.INPUT_NOT_SCREENED, reason: str = "error"):
        super().__init__(message)
        self.code = code
        self.reason = reason


class InputRefused(CxrError):
    """A readable image that a chest X-ray screener must not score (wrong modality, lateral view...)."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message, code=ExitCode.INPUT_NOT_SCREENED, reason=reason)


def run_cli(app, prog: str, **options) -> None:
    """See edge.cli_common.run_cli (kept here for the callers that import it from edge.errors)."""
    from .cli_common import run_cli as run

    run(app, prog, **options)
