"""Finding new exam files in the watch folder: which names count, when a file is ready, events, rescans.

A file is handed to the screener only when it looks finished: its size and mtime have not changed
for `settle` seconds, or the writer has just renamed it to its final name (the usual "write to a
temporary name, then rename" pattern). With inotify, a file that was written to and not yet closed
(no IN_CLOSE_WRITE) is still being written: it waits, however long the writer stalls, up to
`write_timeout` seconds without a change. Hidden files, temporary names and special files (FIFOs,
devices, sockets, also behind symlinks) are never candidates. Whether a file really is complete is
then decided by decoding it; a failure is retried later (watch.py).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from watchdog.events import FileSystemEvent, FileSystemEventHandler

TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".filepart", ".swp",
                 ".lock", ".inprogress", ".writing", ".journal", "-journal", "-wal", "-shm", "~")
TEMP_PREFIXES = (".", "~$", "~")


def is_candidate_name(name: str) -> bool:
    """False for hidden files and names that writers use while a file is incomplete."""
    lower = name.lower()
    return not (lower.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES))


def is_excluded(path: Path, root: Path, excluded: tuple[Path, ...]) -> bool:
    """Paths in hidden folders under the root, or inside --move-done/--move-failed folders."""
    if any(path == ex or ex in path.parents for ex in excluded):
        return True
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        return True
    return any(part.startswith(".") for part in parts)


def is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def walk_candidates(root: Path, excluded: tuple[Path, ...]) -> Iterator[Path]:
    """Every candidate file below root (sorted per folder, oldest naming first)."""
    for folder, dirs, files in os.walk(root):
        folder_path = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not is_excluded(folder_path / d / "x", root, excluded))
        for name in sorted(files):
            if is_candidate_name(name):
                yield folder_path / name


@dataclass
class Entry:
    size: int
    mtime_ns: int
    stable_since: float
    not_before: float = 0.0  # retry back-off
    renamed: bool = False  # the writer renamed it to its final name: no need to wait for a stable size
    in_flight: bool = False
    attempts: int = 0  # decode failures of the same content
    last_sha256: str | None = None
    changed: bool = False  # an event arrived while the file was being processed
    writing: bool = False  # inotify saw a write and no close yet: a writer still holds the file


class Pending:
    """Files seen but not handled yet, keyed by path. Bounded: beyond `limit` entries new files are
    not tracked and `overflowed` is set, so the next rescan picks them up from the folder."""

    def __init__(self, settle: float, limit: int = 4096, write_timeout: float = 600.0):
        self.settle = settle
        self.limit = limit
        self.write_timeout = write_timeout
        self.entries: dict[Path, Entry] = {}
        self.overflowed = False
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: Path) -> bool:
        return path in self.entries

    def touch(self, path: Path, *, renamed: bool = False, writing: bool | None = None) -> None:
        """writing: True after a write event, False after a close-after-write, None when unknown."""
        now = time.monotonic()
        with self.lock:
            entry = self.entries.get(path)
            if entry is not None:
                if entry.in_flight:
                    entry.changed = True
                entry.renamed = entry.renamed or renamed
                if writing is not None:
                    entry.writing = writing and not renamed
                return
            if len(self.entries) >= self.limit:
                self.overflowed = True
                return
            self.entries[path] = Entry(-1, -1, now, renamed=renamed, writing=bool(writing) and not renamed)

    def ready(self) -> list[Path]:
        """Paths whose size and mtime are stable (or that were renamed into place) and not in flight.
        Paths that disappeared are forgotten; their content was never recorded, so nothing is lost."""
        now = time.monotonic()
        out = []
        with self.lock:
            items = [(p, e) for p, e in self.entries.items() if not e.in_flight and e.not_before <= now]
        for path, entry in items:
            try:
                st = path.stat()
            except FileNotFoundError:
                with self.lock:
                    self.entries.pop(path, None)
                continue
            except OSError:
                continue
            if not is_regular(st):  # FIFO, device, socket: never opened; the watcher reports it once
                out.append(path)
                continue
            if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns, entry.stable_since = st.st_size, st.st_mtime_ns, now
                if not entry.renamed or entry.size < 0:
                    continue
            if entry.writing and now - entry.stable_since < self.write_timeout:
                continue  # open for writing (a stalled writer too): wait for its close
            if entry.renamed or now - entry.stable_since >= self.settle:
                out.append(path)
        return out

    def mark_in_flight(self, path: Path) -> None:
        with self.lock:
            entry = self.entries.get(path)
            if entry is not None:
                entry.in_flight, entry.changed = True, False

    def release(self, path: Path) -> None:
        """Could not be queued (queue full): try again on the next round."""
        with self.lock:
            entry = self.entries.get(path)
            if entry is not None:
                entry.in_flight = False

    def done(self, path: Path) -> None:
        with self.lock:
            entry = self.entries.get(path)
            if entry is None:
                return
            if entry.changed:  # written to again while we read it: look at it afresh
                self.entries[path] = Entry(-1, -1, time.monotonic(), writing=entry.writing)
            else:
                del self.entries[path]

    def restart(self, path: Path) -> None:
        """The file changed while it was read: wait for it to settle again."""
        with self.lock:
            old = self.entries.get(path)
            self.entries[path] = Entry(-1, -1, time.monotonic(), writing=old is not None and old.writing)

    def retry(self, path: Path, sha256: str | None, delay: float, max_delay: float = 30.0) -> int:
        """A decode failure: wait `delay` (doubling, at most max_delay) and try again. Returns how many
        times this same content failed."""
        with self.lock:
            entry = self.entries.get(path)
            if entry is None:
                entry = self.entries[path] = Entry(-1, -1, time.monotonic())
            if sha256 != entry.last_sha256:
                entry.attempts, entry.last_sha256 = 0, sha256
            entry.attempts += 1
            entry.in_flight, entry.renamed = False, False
            entry.not_before = time.monotonic() + min(max_delay, delay * (2 ** min(entry.attempts - 1, 30)))
            return entry.attempts

    def attempts(self, path: Path, sha256: str | None) -> int:
        with self.lock:
            entry = self.entries.get(path)
            return entry.attempts if entry is not None and entry.last_sha256 == sha256 else 0


class FolderEvents(FileSystemEventHandler):
    """watchdog handler: every created, written, closed or renamed-into-place file goes to `touch`."""

    def __init__(self, root: Path, excluded: tuple[Path, ...], touch: Callable[..., None], *,
                 sees_close: bool = False):
        self.root, self.excluded, self.touch = root, excluded, touch
        self.sees_close = sees_close  # inotify reports IN_CLOSE_WRITE; polling does not

    def _consider(self, raw: str | bytes, renamed: bool = False, writing: bool | None = None) -> None:
        path = Path(os.fsdecode(raw))
        if is_candidate_name(path.name) and not is_excluded(path, self.root, self.excluded):
            self.touch(path, renamed=renamed, writing=writing if self.sees_close else None)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):  # a folder copied or renamed in: look inside
                folder = Path(os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path))
                for path in walk_candidates(folder, self.excluded):
                    if not is_excluded(path, self.root, self.excluded):
                        self.touch(path)
            return
        if event.event_type == "moved":
            self._consider(event.dest_path, renamed=True)
        elif event.event_type == "modified":  # IN_MODIFY: bytes written, the writer may still hold it
            self._consider(event.src_path, writing=True)
        elif event.event_type == "closed":  # IN_CLOSE_WRITE: that writer is done
            self._consider(event.src_path, writing=False)
        elif event.event_type == "created":
            self._consider(event.src_path)
