"""The worker behind the outbox: builds each screened DICOM exam's SR and Secondary Capture, and
sends pending objects to the PACS by C-STORE. It runs in its own thread with its own review-log
connection and its own interpreter, so screening never waits for it.

What to build is read from the review log (screened DICOM exams without outbox rows for this
destination), not handed over in memory: an exam recorded just before a crash is built after the
restart. The heatmap needs the model's class activation maps, which the log does not keep, so the
worker runs the model once more on the stored original (the logged scores are what the SR reports).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from ..errors import CxrError, ExitCode
from ..review.log import ReviewLog, decode_row
from . import outbox

ERROR_PAUSE = 30.0
MISSING_PASSES = 5  # passes a source file may be missing (being moved) before its build is marked failed


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def valid_ae_title(name: str) -> bool:
    """DICOM AE titles: 1 to 16 printable ASCII characters, no backslash, not only spaces."""
    return 0 < len(name) <= 16 and name.strip() != "" and all(" " <= c <= "~" and c != "\\" for c in name)


def parse_destination(text: str) -> Destination:
    """AE@host:port -> Destination; a CxrError naming the expected form otherwise."""
    ae, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536 and valid_ae_title(ae)):
        raise CxrError(f"--forward {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104 (AE title: 1 to 16 "
                       "printable ASCII characters)", code=ExitCode.USAGE, reason="bad_option")
    return Destination(ae, host.strip("[]"), int(port))


def _lower_priority() -> None:
    """Linux schedules threads as tasks: give this one a lower CPU priority than the screener."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))
    except (AttributeError, OSError):  # not Linux, or not permitted: same priority, still correct
        pass


def say(line: str) -> None:
    sys.stderr.write(f"cxr-edge forward: {line}\n")
    sys.stderr.flush()


class Forwarder(threading.Thread):
    def __init__(self, log_path: Path, destination: Destination, models: dict[str, Path], *,
                 calling_ae: str = "CXREDGE",
                 first_delay: float = outbox.FIRST_DELAY, max_delay: float = outbox.MAX_DELAY,
                 poll: float = 1.0, timeout: float = 30.0, busy=None, moved: tuple[Path, Path] | None = None):
        super().__init__(name="cxr-edge-forward", daemon=True)
        # sha256 -> file of each model the station screens with (--by-age: several); each loaded when first needed
        self.log_path, self.destination, self.model_paths = log_path, destination, models
        self.calling_ae, self.first_delay, self.max_delay = calling_ae, first_delay, max_delay
        self.poll, self.timeout = poll, timeout
        self.busy = busy  # () -> True while exams wait to be screened: building waits, screening goes first
        self.moved = moved  # (watched folder, --move-done folder): where a screened original may have gone
        self.stop_event = threading.Event()
        self.loaded: dict = {}
        self.missing: dict[int, int] = {}
        log = outbox.open_outbox(ReviewLog(log_path))
        try:
            self.first_id = outbox.forward_from(log, str(destination))
        finally:
            log.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=self.timeout + 5)

    def run(self) -> None:
        _lower_priority()
        log = ReviewLog(self.log_path)
        try:
            while not self.stop_event.is_set():
                try:
                    built = self._build_some(log)
                    sent = self._send_due(log)
                except Exception as exc:  # e.g. the log is locked or the disk full: everything stays queued
                    say(f"error ({type(exc).__name__}: {exc}); trying again in {ERROR_PAUSE:.0f} s")
                    self.stop_event.wait(ERROR_PAUSE)
                    continue
                if not built and not sent:
                    self.stop_event.wait(self.poll)
        finally:
            log.close()

    # -- building
    def _build_some(self, log: ReviewLog) -> int:
        if self.busy is not None and self.busy():
            return 0
        done = 0
        for exam in outbox.exams_to_build(log, str(self.destination), self.first_id):
            if self.stop_event.is_set():
                break
            exam = decode_row(exam) | {"moved_to": exam.get("moved_to")}
            source = next((p for p in self._locations(exam) if p.is_file()), None)
            if source is None:
                self.missing[exam["id"]] = self.missing.get(exam["id"], 0) + 1
                if self.missing[exam["id"]] >= MISSING_PASSES:
                    outbox.record_build_failure(log, exam["id"], str(self.destination),
                                                f"source file {exam['file']} is gone; results cannot be built")
                    say(f"exam {exam['id']}: source file {exam['file']} is gone; results not built")
                continue
            try:
                objects = self._build(source, exam)
            except CxrError as exc:
                outbox.record_build_failure(log, exam["id"], str(self.destination), str(exc))
                say(f"exam {exam['id']}: results not built: {exc}")
                continue
            except Exception as exc:  # a bug on one exam must not block the ones after it
                logging.getLogger("cxr-edge.forward").exception("building results of exam %s", exam["id"])
                outbox.record_build_failure(log, exam["id"], str(self.destination),
                                            f"unexpected error ({type(exc).__name__}: {exc}); please report this "
                                            "as a cxr-edge bug")
                say(f"exam {exam['id']}: results not built: unexpected {type(exc).__name__}: {exc}")
                continue
            outbox.enqueue(log, exam["id"], str(self.destination), objects)
            self.missing.pop(exam["id"], None)
            done += 1
            if self.busy is not None and self.busy():
                break
        return done

    def _locations(self, exam: dict) -> list[Path]:
        """Where the original is: its recorded destination, its name, or (a crash between the move and
        its note in the log) the same relative path under the --move-done folder."""
        places = [Path(p) for p in (exam["moved_to"], exam["file"]) if p]
        if self.moved is not None:
            folder, done = self.moved
            try:
                places.append(done / Path(exam["file"]).relative_to(folder))
            except ValueError:
                pass
        return places

    def _build(self, source: Path, exam: dict) -> list:
        import pydicom

        from ..runtime import TFLiteModel
        from ..screening import screen_file
        from .results import banner_text, build_sc, build_sr, overlay_picture

        path = self.model_paths.get(exam["model_sha256"])
        if path is None:
            running = ", ".join(sha[:12] for sha in self.model_paths)
            raise CxrError(f"exam {exam['id']} was screened by model sha256 {exam['model_sha256'][:12]}, not by "
                           f"the running model {running}; results not built", reason="model_changed")
        if path not in self.loaded:
            self.loaded[path] = TFLiteModel(path, threads=1)
        model = self.loaded[path]
        meta = model.metadata
        # The screening path once more with the model that screened it, keeping the decoded film and the
        # model's outputs (its checks passed when the exam was screened, hence allow_any_view); the SR reports
        # the logged scores.
        again = screen_file(source, model, exam["threshold"], allow_any_view=True,
                            on_screened=lambda image, tensor, prediction, decision, metadata, crop:
                            (image, prediction, crop))
        if not again.ok or again.review_images is None:
            raise CxrError(f"{source}: cannot be read again ({again.reason})", reason="unreadable")
        image, prediction, crop = again.review_images
        try:
            dataset = pydicom.dcmread(BytesIO(source.read_bytes()), stop_before_pixels=True)
        except Exception as exc:
            raise CxrError(f"{source}: DICOM header cannot be read again ({exc})", reason="corrupt") from None
        probabilities = [exam["probabilities"][c] for c in meta.classes]
        with warnings.catch_warnings():  # highdicom warns about odd person names copied from the source
            warnings.simplefilter("ignore", UserWarning)
            picture, note = overlay_picture(image.pixels, prediction.outputs.get("cam"), probabilities,
                                            meta.normal_index, meta.preprocessing, banner_text(exam), crop["box"])
            try:
                return [("sr", build_sr(dataset, exam, list(meta.classes))),
                        ("sc", build_sc(dataset, exam, picture, note))]
            except (ValueError, AttributeError, TypeError) as exc:  # the source lacks a required attribute
                raise CxrError(f"{source}: results cannot be built from this DICOM ({exc})",
                               reason="bad_source") from None

    # -- sending
    def _send_due(self, log: ReviewLog) -> int:
        items = outbox.due(log, str(self.destination))
        if not items:
            return 0
        from .sender import deliver

        return deliver(log, items, self.destination, calling_ae=self.calling_ae, timeout=self.timeout,
                       first_delay=self.first_delay, max_delay=self.max_delay, stop=self.stop_event, say=say)


@contextmanager
def forwarding(destination: Destination | None, log: Path, models, *, calling_ae: str = "CXREDGE",
               first_delay: float = outbox.FIRST_DELAY, max_delay: float = outbox.MAX_DELAY, busy=None,
               moved: tuple[Path, Path] | None = None):
    """Run the outbox worker for the duration of the block (nothing when destination is None).
    models: the TFLiteModels the station screens with."""
    if destination is None:
        yield None
        return
    worker = Forwarder(log, destination, {m.sha256: m.path for m in models}, calling_ae=calling_ae,
                       first_delay=first_delay, max_delay=max_delay, busy=busy, moved=moved)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
