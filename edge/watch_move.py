"""Moving an original out of the watch folder after its result is durably recorded.

Never overwrites: a name that exists at the destination gets a numbered suffix. Across
filesystems the file is copied, fsynced and renamed into place before the source is removed,
so a power cut leaves the original, or a complete copy beside it, never a half file only.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path
from typing import Callable


def _same_content(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def move_into(source: Path, root: Path, target_folder: Path,
              before_unlink: Callable[[Path], None] | None = None) -> Path:
    """Move source (a file below root) to the same relative path below target_folder.

    before_unlink(destination) runs once the destination is complete and durable and before the
    source is removed: the watcher records the destination there, so a kill -9 at any point leaves
    either the source (and a restart redoes the move) or a recorded destination, never a moved
    file whose destination nobody knows. When a previous run was killed after copying but before
    removing the source, the finished copy is found (same content) and only the rest is redone.
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
    if before_unlink is not None:
        before_unlink(destination)
    os.unlink(source)
    _fsync_folder(source.parent)
    return destination


def _copy_durably(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.cxr-edge-copy")
    shutil.copy2(source, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, destination)


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
