"""Moving an original out of the watch folder after its result is durably recorded.

Never overwrites: a name that exists at the destination gets a numbered suffix. Across
filesystems the file is copied, fsynced and renamed into place before the source is removed,
so a power cut leaves the original, or a complete copy beside it, never a half file only.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import CxrError, ExitCode
from ..names import shown

PARTIAL_SUFFIX = ".cxr-edge-copy"


def check_move_target(target: Path, folder: Path) -> int:
    """At start: the --move-done/--move-failed folder exists (created if needed), is not the watch folder,
    and is writable (a file is created and removed in it). Partial copies left by a killed watcher are
    removed. Returns how many were removed. CxrError (one line) otherwise."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrError(f"{shown(target)}: cannot create folder ({exc.strerror or exc})", code=ExitCode.STORAGE,
                       reason="move_target_unwritable") from None
    if target.resolve() == folder.resolve():
        raise CxrError(f"{shown(target)}: --move-done/--move-failed must not be the watch folder itself",
                       code=ExitCode.USAGE, reason="bad_option")
    try:
        with tempfile.TemporaryFile(dir=target, prefix=".cxr-edge-probe-"):
            pass
    except OSError as exc:
        raise CxrError(f"{shown(target)}: files cannot be moved here ({exc.strerror or exc}); fix the folder's "
                       "permissions or mount, or choose another --move-done/--move-failed",
                       code=ExitCode.STORAGE, reason="move_target_unwritable") from None
    removed = 0
    for partial in target.rglob(f".*{PARTIAL_SUFFIX}"):
        try:
            partial.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _same_content(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def move_into(source: Path, root: Path, target_folder: Path, on_placed=None) -> Path:
    """Move source (a file below root) to the same relative path below target_folder.

    When a previous run was killed after copying but before removing the source, the finished
    copy is found (same content) and only the source removal is redone. on_placed(destination) runs
    once the copy is durable and before the source is removed, so the caller can note where the file
    went without a window in which a kill loses that note.
    """
    try:
        relative = source.relative_to(root)
    except ValueError:
        relative = Path(source.name)
    wanted = target_folder / relative
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for n in range(100000):
        destination = wanted if n == 0 else wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}")
        if destination.exists():
            if _same_content(source, destination):
                break
            continue
        try:
            os.link(source, destination)  # atomic, and fails rather than overwrite
        except FileExistsError:
            continue
        except OSError:  # another filesystem, or one without hard links (FAT on a USB stick)
            _copy_durably(source, destination)
        break
    else:
        raise OSError(f"no free name for {wanted}")
    _fsync_folder(destination.parent)
    if on_placed is not None:
        on_placed(destination)
    os.unlink(source)
    _fsync_folder(source.parent)
    return destination


def _copy_durably(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}{PARTIAL_SUFFIX}")
    try:
        shutil.copy2(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    except BaseException:  # disk full, read-only, interrupted: leave no partial copy behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
