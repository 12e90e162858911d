"""The watcher's handling of one ready file: hash it, screen it, record it exactly once, move it.

Failures of a file are retried, and quarantined only when they persist: after `retries` attempts
on the same bytes AND once the file has not changed for `incomplete_wait` seconds (a writer that
stalls mid-file is waited for). Special files (FIFO, device, socket) and unreadable files are
never opened in a blocking way: they are reported once and skipped until they change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from ..decode_header import regular_file_size
from ..errors import CxrError
from ..names import one_line, shown
from ..review.images import review_images
from ..routing import Routes
from ..screening import ScreenResult
from .files import Pending, is_regular
from .move import move_into
from .store import WatchStore

SOURCE = "watch"
SKIPPED_REASONS = ("not_a_file", "unreadable")


def stat_signature(st: os.stat_result) -> tuple:
    """What must change before a skipped file is looked at again (chmod changes ctime)."""
    return st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_hash(path: Path, stop: threading.Event | None = None) -> tuple[str, int, int] | None:
    """(sha256, size, mtime_ns) of a regular file that did not change while being read; None if it did,
    vanished, or a stop was requested. CxrError (not_a_file, unreadable) when it cannot be read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        before = path.stat()
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CxrError(f"{shown(path)}: cannot be read ({exc.strerror or exc})", reason="unreadable") from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        if stat_signature(os.fstat(fd))[0] != before.st_mode:  # swapped for a special file meanwhile
            return None
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            if stop is not None and stop.is_set():
                return None
    try:
        after = path.stat()
    except FileNotFoundError:
        return None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return digest.hexdigest(), after.st_size, after.st_mtime_ns


class ExamProcessor:
    """Handles one ready file: returns an outcome (see status.OUTCOMES) and a line for the operator."""

    def __init__(self, options, routes: Routes, log, pending: Pending, stop: threading.Event | None = None,
                 warn=lambda message: None):
        self.options = options
        self.warn = warn
        self.move_failures: dict[Path, int] = {}
        self.routes = routes
        self.log = log
        self.store = WatchStore(log)
        self.pending = pending
        self.stop = stop
        self.skipped: dict[Path, tuple] = {}  # path -> stat signature when it was reported and skipped

    def process(self, path: Path) -> tuple[str, str, str | None]:
        try:
            regular_file_size(path)
            read = _read_hash(path, self.stop)
        except CxrError as exc:
            if exc.reason in SKIPPED_REASONS:
                return self._skip(path, exc)
            if exc.reason == "not_found":
                return "gone", "", None
            read = _read_hash(path, self.stop)  # too_large: hashed (bounded memory) and quarantined below
        if read is None:
            return ("gone", "", None) if not path.exists() else ("changed", "", None)
        sha256, size, mtime_ns = read
        stat = (path, size, mtime_ns)
        # also an exam `screen` recorded with one of these models
        known = self.store.known(sha256, [m.sha256 for m in self.routes.models])
        if known is not None:
            return self._known(path, sha256, stat, known)
        result = self._screen(path, sha256)
        if result.sha256 is not None and result.sha256 != sha256:
            return "changed", "", None
        if result.status == "screened":
            return self._screened(path, sha256, stat, result)
        # Refusals are retried too: a DICOM caught half-written can lack its Modality tag and look refusable.
        # A file is given up on only when it keeps failing AND has stopped changing for incomplete_wait
        # seconds, so a writer that stalls mid-file does not get its exam quarantined.
        attempts = self.pending.attempts(path, sha256) + 1
        unchanged_for = time.time() - mtime_ns / 1e9
        if attempts < self.options.retries or unchanged_for < self.options.incomplete_wait:
            self.pending.retry(path, sha256, self.options.retry_delay, self.options.max_retry_delay)
            return "retry", "", None
        result.reason = f"{result.reason} (still failing after {attempts} attempts)"
        return self._quarantine(path, sha256, stat, result)

    def _skip(self, path: Path, exc: CxrError) -> tuple[str, str, str | None]:
        """Reported once: again only when a regular file changes (a FIFO being written to stays quiet)."""
        reported = path in self.skipped
        try:
            st = os.stat(path)
            self.skipped[path] = stat_signature(st)
        except OSError:
            self.skipped.pop(path, None)
            return "gone", "", None
        if reported and not is_regular(st):
            return "known", "", None
        return "skipped", f"skipped ({exc.reason}), not recorded until it changes: {exc}", None

    def _screen(self, path: Path, sha256: str) -> ScreenResult:
        try:
            return self.routes.screen(path, allow_any_view=self.options.allow_any_view, on_screened=review_images)
        except Exception as exc:  # a bug on one odd file must not stop (and crash-loop) the watcher
            logging.getLogger("cxr-edge.station.watch").exception("unexpected error while screening %s", shown(path))
            return ScreenResult(shown(path), "failed", self.routes.primary.model.identity, sha256=sha256,
                                reason_code="internal_error",
                                reason=f"{shown(path)}: unexpected error while screening ({type(exc).__name__}: "
                                       f"{one_line(exc)}); please report this as a cxr-edge bug")

    def _screened(self, path: Path, sha256: str, stat, result: ScreenResult):
        images = result.review_images  # film + heatmap, or None when the film could not be drawn
        row = result.to_log_row(self.options.source)
        exam_id = self.store.record_exam(row, sha256, stat, images)
        if exam_id is None:  # recorded meanwhile (cannot happen with one watcher per log, but be safe)
            return self._known(path, sha256, stat, self.store.known(sha256))
        d = result.decision
        self._move(path, sha256, self.options.move_done)
        return ("screened", f"exam {exam_id}: {d.decision} abnormality {d.abnormality:.3f} ({d.top_class}) "
                f"{shown(path)}", d.decision)

    def _quarantine(self, path: Path, sha256: str, stat, result: ScreenResult):
        row = result.to_log_row(self.options.source)
        row.update(status="quarantined", sha256=sha256)
        exam_id = self.store.record_exam(row, sha256, stat)
        if exam_id is None:
            return self._known(path, sha256, stat, self.store.known(sha256))
        self._move(path, sha256, self.options.move_failed)
        return "quarantined", f"exam {exam_id}: quarantined ({result.reason_code}) {result.reason}", None

    def _known(self, path: Path, sha256: str, stat, known):
        same_file = known.file == shown(path)
        target = self.options.move_done if known.status == "screened" else self.options.move_failed
        if same_file:  # recorded before a restart or a crash: only the move may be left to do
            self.store.mark_seen(stat, sha256, known.status)
            self._move(path, sha256, target)
            return "known", "", None
        added = self.store.record_duplicate(known, path, sha256, stat)
        self._move(path, sha256, target)
        if not added:
            return "known", "", None
        return "duplicate", f"duplicate of exam {known.exam_id} ({known.file}): {shown(path)}", None

    def _move(self, path: Path, sha256: str, target: Path | None) -> None:
        """Move after the result is recorded. A failed move (read-only or full target) is reported and
        retried at the next rescans; after --retries failures the file is left in place until it changes."""
        if target is None or not path.exists():
            return
        try:
            move_into(path, self.options.folder, target,
                      on_placed=lambda destination: self.store.note_move(sha256, path, destination))
        except OSError as exc:
            count = self.move_failures[path] = self.move_failures.get(path, 0) + 1
            problem = f"{shown(path)}: result recorded, but the file cannot be moved to {shown(target)} " \
                      f"({exc.strerror or one_line(exc)})"
            if count >= self.options.retries:
                self.move_failures.pop(path, None)
                try:
                    self.skipped[path] = stat_signature(os.stat(path))
                except OSError:
                    pass
                self.warn(f"{problem}; failed {count} times, left in place until it changes or the watcher "
                          "restarts")
            else:
                self.warn(f"{problem}; will retry at the next rescan")
            return
        self.move_failures.pop(path, None)
