"""What the three command-line tools (cxr-edge, cxr-train, converters) share: how they run, how a
user error prints (one line), `--version`, plain help that fits 80 columns, and, for the two
TensorFlow tools, the one-line message when the `[train]` extra is missing and a stderr without
TensorFlow's start-up noise. Imports no TensorFlow."""

from __future__ import annotations

import os
import re
import select
import sys
import threading

import typer

from . import __version__
from .errors import CxrError, ExitCode

# What the `[train]` extra installs (pyproject.toml); importing any of them without it means that extra.
TRAIN_EXTRA_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "matplotlib", "keras")


def add_version_option(app: typer.Typer, prog: str) -> None:
    """`PROG --version` prints `PROG <version>` and exits 0."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {__version__}")
            raise typer.Exit(0)

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=show, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        pass


def _plain_help(command) -> None:
    """Plain click help and errors, not rich panels: nothing cut at 80 columns, no `<bool>` on flags."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


def run_cli(app: typer.Typer, prog: str, *, on_interrupt: str = "interrupted", train_extra: bool = False) -> None:
    """Run a typer app. A CxrError or a usage mistake becomes one line on stderr and its exit code
    (README, "Exit codes"); Ctrl-C exits 130. train_extra: the tool needs TensorFlow (cxr-train,
    converters): a missing `[train]` extra is one line (exit 4), and TensorFlow's log noise is dropped."""
    if not isinstance(app, typer.Typer):  # a plain function (e.g. train.study's child process): run it as is
        try:
            app()
        except CxrError as exc:
            _fail(prog, str(exc), int(exc.code))
        except KeyboardInterrupt:
            _fail(prog, on_interrupt, 130, label="")
        return
    command = typer.main.get_command(app)
    _plain_help(command)
    quiet = QuietStderr() if train_extra else None
    if quiet is not None:
        quiet.start()
    try:
        code = command.main(prog_name=prog, standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else is a bug and re-raised
        _user_error(exc, prog, train_extra)
        raise
    finally:
        if quiet is not None:
            quiet.stop()
    if code == 130:  # typer turns Ctrl-C into exit code 130
        _fail(prog, on_interrupt, 130, label="")
    sys.exit(code if isinstance(code, int) else 0)


def _kind(exc: BaseException, name: str) -> bool:
    """Click's exception classes by name: typer >= 0.2x vendors its own click, older typer uses click's."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _user_error(exc: Exception, prog: str, train_extra: bool) -> None:
    """Exit with one line for a user's mistake; return (so the caller re-raises) for a bug."""
    if isinstance(exc, CxrError):
        _fail(prog, str(exc), int(exc.code))
    if isinstance(exc, ModuleNotFoundError):
        if train_extra and (exc.name or "").split(".")[0] in TRAIN_EXTRA_MODULES:
            _fail(prog, f"this command needs TensorFlow, which the edge-only install leaves out (no module "
                        f"named {exc.name!r}); install the [train] extra: pip install '.[train]' (in a clone)",
                  ExitCode.RUNTIME)
        return
    if _kind(exc, "NoArgsIsHelpError"):  # the command's help, as click prints it
        exc.show()
        sys.exit(exc.exit_code)
    if _kind(exc, "UsageError"):
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else prog
        _fail(prog, f"{' '.join(exc.format_message().split())} (see: {where} --help)", ExitCode.USAGE)
    if _kind(exc, "ClickException"):
        _fail(prog, " ".join(exc.format_message().split()), exc.exit_code)
    if _kind(exc, "Abort"):
        _fail(prog, "aborted", 1, label="")


def _fail(prog: str, message: str, code: int, label: str = "error: ") -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{prog}: {label}{message}\n")
    sys.stderr.flush()
    sys.exit(code)


# TensorFlow's C++ start-up and converter chatter, written straight to file descriptor 2 (so neither
# TF_CPP_MIN_LOG_LEVEL in TF 2.21 nor Python's logging reaches it): absl INFO/WARNING lines, the
# absl pre-initialisation notice, the CPU-instructions hint, CUDA probing on machines without a GPU,
# the TFLite calibrator's "fully_quantize: 0, inference_type: 6, ..." line, the interpreter's XNNPACK
# notice. Errors that are not about CUDA probing pass through, as does everything else.
NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.\-]+:\d+\] .*"
    rb"|E\d{4} [\d:.]+ +\d+ [\w.\-]+:\d+\] .*(?:cuInit|CUDA|cuda|cuDNN|cuFFT|cuBLAS|TensorRT).*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: .*"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|WARNING:absl:.*)\r?$")


NOISE_STARTS = (b"WARNING: All log messages", b"To enable the following", b"fully_quantize: ",
                b"INFO: Created TensorFlow Lite", b"WARNING:absl:")


def may_be_noise(start: bytes) -> bool:
    """Could a line beginning with these bytes (no newline yet) turn out to be NOISE?"""
    if start[:1] in (b"I", b"W", b"E") and (len(start) < 2 or start[1:2].isdigit()):
        return True
    return any(start[:len(prefix)] == prefix[:len(start)] for prefix in NOISE_STARTS)


class _TtyAs:
    """sys.stderr as before, except that isatty() answers for the terminal behind the filter, so
    progress output still shows on a terminal."""

    def __init__(self, stream, tty: bool):
        self._stream, self._tty = stream, tty

    def isatty(self) -> bool:
        return self._tty

    def __getattr__(self, name):
        return getattr(self._stream, name)


class QuietStderr:
    """Route file descriptor 2 through a pipe and forward every line that is not TensorFlow noise.
    A partial line (a progress bar) is forwarded at once unless it may still become noise; then it
    waits for its newline, or 0.2 s."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sys.stderr.flush()
        self._original = os.dup(2)
        self._stream = sys.stderr
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        sys.stderr = _TtyAs(self._stream, os.isatty(self._original))
        self._thread = threading.Thread(target=self._pump, args=(read,), name="stderr-filter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        sys.stderr.flush()
        sys.stderr = self._stream
        os.dup2(self._original, 2)  # closes the pipe's write end: the pump sees the end and drains it
        self._thread.join(timeout=5)
        os.close(self._original)
        self._thread = None

    def _pump(self, read: int) -> None:
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([read], [], [], 0.2)
                if not ready:
                    if pending:
                        self._emit(pending)
                        pending = b""
                    continue
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                self._emit(b"".join(line + b"\n" for line in lines if not NOISE.match(line)))
                if pending and not may_be_noise(pending):
                    self._emit(pending)
                    pending = b""
        finally:
            if pending and not NOISE.match(pending):
                self._emit(pending)
            os.close(read)

    def _emit(self, data: bytes) -> None:
        if data:
            try:
                os.write(self._original, data)
            except OSError:
                pass
