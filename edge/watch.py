"""`cxr-edge watch DIR`: screen every exam file that appears in a folder, exactly once, into the review log.

Threads: watchdog's observer (inotify, or polling with --poll) and a scanner feed `Pending`;
the scanner also rescans the folder at start (the backlog) and every `rescan` seconds (a safety
net for missed events and for files left over when the pending set was full). Ready files go
through a bounded queue to the main thread, which screens them one at a time, so a burst of
hundreds of files holds a few paths in memory, not a few images.

Exactly once: an exam is identified by the sha256 of its bytes; the result row and the hash are
committed in one SQLite transaction (edge.watch_store). Files are moved (--move-done,
--move-failed) only after that commit. The same bytes under a second name are noted as a
duplicate of the first exam, without a second result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .errors import CxrError, ExitCode
from .review.images import review_images
from .review_log import ReviewLog
from .runtime import TFLiteModel
from .screening import ScreenResult, screen_file
from .watch_files import FolderEvents, Pending, walk_candidates
from .watch_move import move_into
from .watch_status import StatusReporter
from .watch_store import WatchStore

SOURCE = "watch"


@dataclass
class WatchOptions:
    folder: Path
    log: Path
    threshold: float
    threshold_source: str
    poll: bool = False
    poll_interval: float = 1.0
    settle: float = 0.5  # seconds a file's size and mtime must stay unchanged
    retries: int = 3  # decode failures of the same bytes before quarantine
    retry_delay: float = 1.0  # first back-off; doubles each retry
    rescan: float = 30.0
    queue_size: int = 32
    pending_limit: int = 4096
    move_done: Path | None = None
    move_failed: Path | None = None
    log_file: Path | None = None
    allow_any_view: bool = False
    once: bool = False  # process the backlog, then exit
    live: bool | None = None
    source: str = SOURCE  # the review log's `source` column ("listen" for exams received over DICOM)


def _read_hash(path: Path) -> tuple[str, int, int] | None:
    """(sha256, size, mtime_ns) of a file that did not change while being read; None if it did or vanished."""
    try:
        before = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        after = path.stat()
    except FileNotFoundError:
        return None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return digest.hexdigest(), after.st_size, after.st_mtime_ns


class ExamProcessor:
    """Handles one ready file: returns an outcome (see watch_status.OUTCOMES) and a line for the operator."""

    def __init__(self, options: WatchOptions, model: TFLiteModel, log: ReviewLog, pending: Pending):
        self.options = options
        self.model = model
        self.log = log
        self.store = WatchStore(log)
        self.pending = pending

    def process(self, path: Path) -> tuple[str, str, str | None]:
        read = _read_hash(path)
        if read is None:
            return ("gone", "", None) if not path.exists() else ("changed", "", None)
        sha256, size, mtime_ns = read
        stat = (path, size, mtime_ns)
        known = self.store.known(sha256, self.model.sha256)  # also an exam `screen` recorded with this model
        if known is not None:
            return self._known(path, sha256, stat, known)
        result = self._screen(path, sha256)
        if result.sha256 is not None and result.sha256 != sha256:
            return "changed", "", None
        if result.status == "screened":
            return self._screened(path, sha256, stat, result)
        # Refusals are retried too: a DICOM caught half-written can lack its Modality tag and look refusable.
        if result.status in ("failed", "refused"):
            attempts = self.pending.attempts(path, sha256) + 1
            if attempts < self.options.retries:
                self.pending.retry(path, sha256, self.options.retry_delay)
                return "retry", "", None
            result.reason = f"{result.reason} (still failing after {attempts} attempts)"
        return self._quarantine(path, sha256, stat, result)

    def _screen(self, path: Path, sha256: str) -> ScreenResult:
        try:
            return screen_file(path, self.model, self.options.threshold,
                               threshold_source=self.options.threshold_source,
                               allow_any_view=self.options.allow_any_view, on_screened=review_images)
        except Exception as exc:  # a bug on one odd file must not stop (and crash-loop) the watcher
            logging.getLogger("cxr-edge.watch").exception("unexpected error while screening %s", path)
            return ScreenResult(str(path), "failed", self.model.identity, sha256=sha256, reason_code="internal_error",
                                reason=f"{path}: unexpected error while screening ({type(exc).__name__}: {exc}); "
                                       "please report this as a cxr-edge bug")

    def _screened(self, path: Path, sha256: str, stat, result: ScreenResult):
        images = result.review_images  # film + heatmap, or None when the film could not be drawn
        row = result.to_log_row(self.options.source)
        exam_id = self.store.record_exam(row, sha256, stat, images)
        if exam_id is None:  # recorded meanwhile (cannot happen with one watcher per log, but be safe)
            return self._known(path, sha256, stat, self.store.known(sha256))
        d = result.decision
        self._move(path, sha256, self.options.move_done)
        return ("screened", f"exam {exam_id}: {d.decision} abnormality {d.abnormality:.3f} ({d.top_class}) "
                f"{path}", d.decision)

    def _quarantine(self, path: Path, sha256: str, stat, result: ScreenResult):
        row = result.to_log_row(self.options.source)
        row.update(status="quarantined", sha256=sha256)
        exam_id = self.store.record_exam(row, sha256, stat)
        if exam_id is None:
            return self._known(path, sha256, stat, self.store.known(sha256))
        self._move(path, sha256, self.options.move_failed)
        return "quarantined", f"exam {exam_id}: quarantined ({result.reason_code}) {result.reason}", None

    def _known(self, path: Path, sha256: str, stat, known):
        same_file = known.file == str(path)
        target = self.options.move_done if known.status == "screened" else self.options.move_failed
        if same_file:  # recorded before a restart or a crash: only the move may be left to do
            self.store.mark_seen(stat, sha256, known.status)
            self._move(path, sha256, target)
            return "known", "", None
        added = self.store.record_duplicate(known, path, sha256, stat)
        self._move(path, sha256, target)
        if not added:
            return "known", "", None
        return "duplicate", f"duplicate of exam {known.exam_id} ({known.file}): {path}", None

    def _move(self, path: Path, sha256: str, target: Path | None) -> None:
        if target is None or not path.exists():
            return
        # recorded before the source goes: a kill -9 between the two must not lose the destination
        move_into(path, self.options.folder, target,
                  before_unlink=lambda destination: self.store.note_move(sha256, path, destination))


class Watcher:
    def __init__(self, options: WatchOptions, model: TFLiteModel):
        self.options = options
        self.model = model
        self.stop = threading.Event()
        self.scan_now = threading.Event()
        self.pending = Pending(options.settle, options.pending_limit)
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=options.queue_size)
        self.excluded = tuple(p for p in (options.move_done, options.move_failed) if p is not None)
        self.log = ReviewLog(options.log)
        self.log.remember_model(model)  # its limitations and validation metrics, for the bundle and stats
        self.status = StatusReporter(model.identity, str(options.folder),
                                     log_file=str(options.log_file) if options.log_file else None,
                                     live=options.live, queue_length=lambda: len(self.pending))
        self.processor = ExamProcessor(options, model, self.log, self.pending)
        self.scanner_error: BaseException | None = None
        self.signal_name: str | None = None
        self.folder_present = True
        self.backlog_scanned = threading.Event()

    # -- the scanner thread: rescans, and moves ready files from Pending into the bounded queue
    def _scanner(self) -> None:
        try:
            store = WatchStore(ReviewLog(self.options.log))
            next_scan = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_scan or self.scan_now.is_set() or (
                        self.pending.overflowed and len(self.pending) < self.options.pending_limit // 2):
                    self.scan_now.clear()
                    self._rescan(store)
                    self.backlog_scanned.set()
                    next_scan = now + self.options.rescan
                self._feed()
                self.stop.wait(0.05)
        except BaseException as exc:  # reported by the main loop, which then stops
            self.scanner_error = exc
            self.stop.set()

    def _rescan(self, store: WatchStore) -> None:
        self.pending.overflowed = False
        for path in walk_candidates(self.options.folder, self.excluded):
            if self.stop.is_set() or self.pending.overflowed:
                return
            if path in self.pending:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            status = store.seen(path, st.st_size, st.st_mtime_ns)
            if status is None or self._move_target(status) is not None:  # new, or recorded but not yet moved
                self.pending.touch(path)

    def _move_target(self, status: str) -> Path | None:
        return self.options.move_done if status == "screened" else self.options.move_failed

    def _feed(self) -> None:
        for path in self.pending.ready():
            self.pending.mark_in_flight(path)
            try:
                self.queue.put(path, timeout=0.05)
            except queue.Full:  # backpressure: the file stays pending and is offered again later
                self.pending.release(path)
                return

    # -- the main loop
    def run(self) -> int:
        folder = self.options.folder
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        observer = self._start_observer(folder)  # before the backlog scan: a file written in between is seen
        scanner = threading.Thread(target=self._scanner, name="cxr-edge-scan", daemon=True)
        scanner.start()
        try:
            self._work()
        finally:
            self.stop.set()
            observer.stop()
            scanner.join(timeout=5)
            observer.join(timeout=5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.signal_name:
                self.status.info(f"{self.signal_name} received: the current file was finished and recorded")
            self.status.stop()
            self.log.close()
        if self.scanner_error is not None:
            if isinstance(self.scanner_error, CxrError):
                raise self.scanner_error
            raise CxrError(f"watcher scan failed: {self.scanner_error}", code=ExitCode.RUNTIME,
                           reason="watch_failed") from self.scanner_error
        return 0

    def _start_observer(self, folder: Path):
        handler = FolderEvents(folder, self.excluded, self.pending.touch)
        polling = self.options.poll
        if not polling:
            try:
                observer = Observer()
                observer.schedule(handler, str(folder), recursive=True)
                observer.start()
            except OSError as exc:  # e.g. the inotify watch limit on a deep tree
                try:
                    observer.stop()
                except Exception:
                    pass
                self.status.warning(f"inotify unavailable ({exc}); polling every {self.options.poll_interval} s "
                                    "instead (raise fs.inotify.max_user_watches to avoid this)")
                polling = True
        if polling:
            observer = PollingObserver(timeout=self.options.poll_interval)
            observer.schedule(handler, str(folder), recursive=True)
            observer.start()
        self.status.start(self.options.threshold, self.options.threshold_source, polling)
        return observer

    def _on_signal(self, signum, frame) -> None:
        # Only set flags here: printing from a signal handler can collide with a print in progress.
        self.signal_name = signal.Signals(signum).name
        self.stop.set()

    def _work(self) -> None:
        last_tick = 0.0
        while not self.stop.is_set():
            try:
                path = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.options.once and self.backlog_scanned.is_set() and not len(self.pending) \
                        and self.queue.empty():
                    return
                if time.monotonic() - last_tick > 1.0:
                    self._check_folder()
                    self.status.tick()
                    last_tick = time.monotonic()
                continue
            self._handle(path)

    def _check_folder(self) -> None:
        present = self.options.folder.is_dir()
        if present != self.folder_present:
            self.folder_present = present
            if present:
                self.status.info(f"{self.options.folder} is back; rescanning")
                self.scan_now.set()
            else:
                self.status.warning(f"{self.options.folder} is gone (unmounted or removed?); waiting for it")

    def _handle(self, path: Path) -> None:
        started = time.monotonic()
        try:
            outcome, message, decision = self.processor.process(path)
        except sqlite3.Error as exc:  # the log itself is failing (disk full, read-only): stop, lose nothing
            raise CxrError(f"{self.options.log}: review log write failed ({exc}); {path} was not recorded and "
                           "will be screened after a restart", code=ExitCode.STORAGE, reason="log_unwritable") from None
        except CxrError as exc:
            if exc.code == ExitCode.STORAGE:  # the log itself is failing: stop rather than lose results
                raise
            self.status.warning(f"{path}: {exc}; will retry")
            self.pending.retry(path, None, self.options.retry_delay)
            return
        except OSError as exc:  # e.g. a move that failed; the result is already recorded
            self.status.warning(f"{path}: {exc}; will retry")
            self.pending.retry(path, None, self.options.retry_delay)
            return
        self.status.busy(time.monotonic() - started)
        if outcome == "changed":
            self.pending.restart(path)
        elif outcome != "retry":
            self.pending.done(path)
        self.status.outcome(outcome, message, decision=decision)


def run_watch(options: WatchOptions, model: TFLiteModel) -> int:
    folder = options.folder
    if not folder.is_dir():
        raise CxrError(f"{folder}: watch folder does not exist or is not a folder", code=ExitCode.USAGE,
                       reason="bad_option")
    for target in (options.move_done, options.move_failed):
        if target is not None:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CxrError(f"{target}: cannot create folder ({exc.strerror})", code=ExitCode.STORAGE,
                               reason="move_target_unwritable") from None
            if target.resolve() == folder.resolve():
                raise CxrError(f"{target}: --move-done/--move-failed must not be the watch folder itself",
                               code=ExitCode.USAGE, reason="bad_option")
    return Watcher(options, model).run()


def absolute(path: Path | None) -> Path | None:
    """Absolute without resolving symlinks, so logged file names are the ones the station wrote."""
    return Path(os.path.abspath(path)) if path is not None else None
