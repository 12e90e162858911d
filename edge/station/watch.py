"""`cxr-edge watch DIR`: screen every exam file that appears in a folder, exactly once, into the review log.

Threads: watchdog's observer (inotify, or polling with --poll) and a scanner feed `Pending`;
the scanner also rescans the folder at start (the backlog) and every `rescan` seconds (a safety
net for missed events and for files left over when the pending set was full). Ready files go
through a bounded queue to the main thread, which screens them one at a time, so a burst of
hundreds of files holds a few paths in memory, not a few images.

Exactly once: an exam is identified by the sha256 of its bytes; the result row and the hash are
committed in one SQLite transaction (edge.station.store). Files are moved (--move-done,
--move-failed) only after that commit. The same bytes under a second name are noted as a
duplicate of the first exam, without a second result.
"""

from __future__ import annotations

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

from ..errors import CxrError, ExitCode
from ..names import one_line, shown
from ..review.log import ReviewLog
from ..routing import Routes
from .exam import SOURCE, ExamProcessor, stat_signature
from .files import FolderEvents, Pending, walk_candidates
from .move import check_move_target
from .status import StatusReporter
from .store import WatchStore


@dataclass
class WatchOptions:
    folder: Path
    log: Path
    poll: bool = False
    poll_interval: float = 1.0
    settle: float = 0.5  # seconds a file's size and mtime must stay unchanged
    retries: int = 3  # decode failures of the same bytes before quarantine
    retry_delay: float = 1.0  # first back-off; doubles each retry
    max_retry_delay: float = 30.0  # the back-off never grows beyond this
    incomplete_wait: float = 30.0  # a failing file is quarantined only once unchanged this long (seconds)
    write_timeout: float = 600.0  # inotify: a file open for writing is waited for up to this long unchanged
    rescreen_failed: bool = False  # forget internal_error/unsupported_compression quarantines at start
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


class Watcher:
    def __init__(self, options: WatchOptions, routes: Routes):
        self.options = options
        self.routes = routes
        self.stop = threading.Event()
        self.scan_now = threading.Event()
        self.pending = Pending(options.settle, options.pending_limit, options.write_timeout)
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=options.queue_size)
        self.excluded = tuple(p for p in (options.move_done, options.move_failed) if p is not None)
        self.log = ReviewLog(options.log)
        for model in routes.models:  # their limitations and validation metrics, for the bundle and stats
            self.log.remember_model(model)
        self.status = StatusReporter(routes, shown(options.folder),
                                     log_file=str(options.log_file) if options.log_file else None,
                                     live=options.live, queue_length=lambda: len(self.pending))
        self.processor = ExamProcessor(options, routes, self.log, self.pending, self.stop,
                                       warn=lambda message: self.status.warning(message))
        self.scanner_error: BaseException | None = None
        self.signal_name: str | None = None
        self.folder_identity = _identity(options.folder)
        self.backlog_scanned = threading.Event()
        self.observer = None
        self.failures: dict[Path, int] = {}  # path -> consecutive OSErrors (e.g. a move that keeps failing)
        self.given_up: dict[Path, tuple] = {}  # path -> stat signature when it was given up on

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
            signature = stat_signature(st)
            if self.processor.skipped.get(path) == signature or self.given_up.get(path) == signature:
                continue  # reported once already; looked at again when it changes
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
        polling = self._start_observer(folder)  # before the backlog scan: a file written in between is seen
        self.status.start(polling)
        scanner = threading.Thread(target=self._scanner, name="cxr-edge-scan", daemon=True)
        scanner.start()
        try:
            self._work()
        except BaseException as exc:
            self._fatal(exc)
            raise
        finally:
            self.stop.set()
            self._stop_observer()
            scanner.join(timeout=5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.signal_name:
                self.status.info(f"{self.signal_name} received: the current file was finished and recorded")
            self.status.stop()
            self.log.close()
        if self.scanner_error is not None:
            error = self.scanner_error if isinstance(self.scanner_error, CxrError) else CxrError(
                f"watcher scan failed: {one_line(self.scanner_error)}", code=ExitCode.RUNTIME, reason="watch_failed")
            self._fatal(error)
            raise error from (None if error is self.scanner_error else self.scanner_error)
        return 0

    def _fatal(self, exc: BaseException) -> None:
        """A fatal error goes to the --log-file too (run_cli prints it once on stderr)."""
        if isinstance(exc, CxrError):
            self.status.logger.error("stopping: %s", exc)
        elif not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.status.logger.error("stopping on an unexpected error", exc_info=exc)

    def _events_alive(self) -> bool:
        """False once inotify stopped watching (its folder was deleted, even if a new one, perhaps with the
        same inode number, is already there)."""
        observer = self.observer
        return observer is None or all(emitter.is_alive() for emitter in observer.emitters)

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def _start_observer(self, folder: Path) -> bool:
        """Start watching for events (again); True when polling."""
        polling = self.options.poll
        if not polling:
            try:
                observer = Observer()
                observer.schedule(FolderEvents(folder, self.excluded, self.pending.touch, sees_close=True),
                                  str(folder), recursive=True)
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
            observer.schedule(FolderEvents(folder, self.excluded, self.pending.touch), str(folder), recursive=True)
            observer.start()
        self.observer = observer
        return polling

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
        """A folder that was removed (or remounted) and is back is a new inode: events are re-armed on it."""
        identity = _identity(self.options.folder)
        if identity == self.folder_identity and (identity is None or self._events_alive()):
            return
        was_present, self.folder_identity = self.folder_identity is not None, identity
        name = shown(self.options.folder)
        if identity is None:
            self.status.warning(f"{name} is gone (unmounted or removed?); waiting for it")
            return
        self._stop_observer()
        polling = self._start_observer(self.options.folder)
        self.status.info(f"{name} is {'back' if not was_present else 'replaced'}; events re-armed "
                         f"({'polling' if polling else 'inotify'}), rescanning")
        self.scan_now.set()

    def _handle(self, path: Path) -> None:
        started = time.monotonic()
        try:
            outcome, message, decision = self.processor.process(path)
        except sqlite3.Error as exc:  # the log itself is failing (disk full, read-only): stop, lose nothing
            raise CxrError(f"{shown(self.options.log)}: review log write failed ({exc}); {shown(path)} was not "
                           "recorded and will be screened after a restart", code=ExitCode.STORAGE,
                           reason="log_unwritable") from None
        except CxrError as exc:
            if exc.code == ExitCode.STORAGE:  # the log itself is failing: stop rather than lose results
                raise
            self._failed(path, one_line(exc))
            return
        except OSError as exc:  # e.g. a move that failed; the result is already recorded
            self._failed(path, one_line(exc))
            return
        self.failures.pop(path, None)
        self.status.busy(time.monotonic() - started)
        if outcome == "changed":
            self.pending.restart(path)
        elif outcome != "retry":
            self.pending.done(path)
        self.status.outcome(outcome, message, decision=decision)

    def _failed(self, path: Path, problem: str) -> None:
        """Retried with a capped back-off; after --retries failures in a row, left alone until it changes."""
        count = self.failures[path] = self.failures.get(path, 0) + 1
        if count < self.options.retries:
            self.status.warning(f"{shown(path)}: {problem}; will retry")
            self.pending.retry(path, None, self.options.retry_delay, self.options.max_retry_delay)
            return
        self.failures.pop(path, None)
        self.pending.done(path)
        try:
            self.given_up[path] = stat_signature(path.stat())
        except OSError:
            pass
        self.status.warning(f"{shown(path)}: {problem}; failed {count} times, left in place until it changes "
                            "or the watcher restarts")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(folder) else None


def run_watch(options: WatchOptions, routes: Routes) -> int:
    folder = options.folder
    if not folder.is_dir():
        raise CxrError(f"{folder}: watch folder does not exist or is not a folder", code=ExitCode.USAGE,
                       reason="bad_option")
    for target in (options.move_done, options.move_failed):
        if target is not None:
            check_move_target(target, folder)
    watcher = Watcher(options, routes)
    if options.rescreen_failed:
        again = watcher.processor.store.forget_failed()
        watcher.status.info(f"--rescreen-failed: {again} quarantined exams will be screened again")
    return watcher.run()


def absolute(path: Path | None) -> Path | None:
    """Absolute without resolving symlinks, so logged file names are the ones the station wrote."""
    return Path(os.path.abspath(path)) if path is not None else None
