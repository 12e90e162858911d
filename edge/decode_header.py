"""Before any decoder runs: open only regular files, read a bounded number of bytes, and read the
image size from the header (PNG IHDR, JPEG SOF; DICOM in decode_dicom) to refuse decompression
bombs in milliseconds and bounded memory.

The limits are choices, documented in README ("Reasons an image is not screened"):
a chest radiograph is at most ~4300 x 4300 px (43 cm at 100 um), so 36 megapixels (6000 x 6000)
leaves room for any detector while keeping one decoded image well under the 1 GB a station
unit may use.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CxrError
from .names import shown

MAX_FILE_BYTES = 256 * 1024 * 1024  # bigger files are not read at all
MAX_PIXELS = 36_000_000  # width x height x frames
MAX_DECODED_BYTES = 256 * 1024 * 1024  # pixels x samples x bytes per sample, as the decoder allocates them

PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels OpenCV decodes (palette -> BGR)
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT/JPG/DAC)
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn carry no length
# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or RSTn; anything else is the next marker.
_NEXT_MARKER = re.compile(rb"\xff+(?=[^\x00\xd0-\xd7\xff])")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def regular_file_size(path: Path) -> int:
    """stat (following symlinks) without opening: CxrError unless it is a regular file within budget."""
    name = shown(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CxrError(f"{name}: file not found", reason="not_found") from None
    except OSError as exc:
        raise CxrError(f"{name}: cannot be read ({exc.strerror or exc})", reason="unreadable") from None
    return _check_stat(name, st)


def _check_stat(name: str, st: os.stat_result) -> int:
    if stat.S_ISDIR(st.st_mode):
        raise CxrError(f"{name}: is a folder, not an image file", reason="not_a_file")
    if not stat.S_ISREG(st.st_mode):
        raise CxrError(f"{name}: is a {_file_kind(st.st_mode)}, not a regular file; not read",
                       reason="not_a_file")
    if st.st_size > MAX_FILE_BYTES:
        raise CxrError(f"{name}: file is {st.st_size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB "
                       "limit for one image; not read", reason="too_large")
    return st.st_size


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES. FIFOs, devices and sockets (also behind
    a symlink) are refused from stat, and the open itself never blocks (O_NONBLOCK)."""
    name = shown(path)
    regular_file_size(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CxrError(f"{name}: file not found", reason="not_found") from None
    except OSError as exc:
        raise CxrError(f"{name}: cannot be read ({exc.strerror or exc})", reason="unreadable") from None
    with os.fdopen(fd, "rb") as handle:
        _check_stat(name, os.fstat(fd))  # replaced by a FIFO between stat and open: still refused
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise CxrError(f"{name}: cannot be read ({exc.strerror or exc})", reason="unreadable") from None
    if len(data) > MAX_FILE_BYTES:
        raise CxrError(f"{name}: file grew past the {MAX_FILE_BYTES // 2**20} MiB limit while being read",
                       reason="too_large")
    if not data:
        raise CxrError(f"{name}: file is empty (0 bytes)", reason="empty_file")
    return data


@dataclass
class Header:
    width: int
    height: int
    samples: int  # channels the decoder will allocate
    bytes_per_sample: int
    complete: bool  # the end marker (PNG IEND, JPEG EOI) was reached by walking the structure
    frames: int = 1


def check_budget(path: Path, header: Header) -> None:
    """Refuse (reason too_large) an image whose decoded size is over budget, before decoding it."""
    w, h, frames = header.width, header.height, header.frames
    pixels = w * h * frames
    if pixels > MAX_PIXELS or pixels * header.samples * header.bytes_per_sample > MAX_DECODED_BYTES:
        what = f"{w}x{h} px" + (f" x {frames} frames" if frames > 1 else "")
        raise CxrError(f"{shown(path)}: image is {what} ({pixels / 1e6:.0f} megapixels, {header.samples} "
                       f"samples of {header.bytes_per_sample * 8} bits), over the limit of "
                       f"{MAX_PIXELS / 1e6:.0f} megapixels / {MAX_DECODED_BYTES // 2**20} MiB decoded; "
                       "refused before decoding", reason="too_large")


def png_header(path: Path, data: bytes) -> Header:
    """Walk the PNG chunks: size from IHDR; complete when IEND is reached (trailing bytes are ignored)."""
    pos, header = 8, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        if kind == b"IHDR" and length >= 13:
            width, height, depth, colour = struct.unpack(">IIBB", data[pos + 8:pos + 18])
            header = Header(width, height, PNG_CHANNELS.get(colour, 4), 2 if depth == 16 else 1, False)
        elif kind == b"IEND":
            if header is not None:
                header.complete = True
            break
        pos = end
    if header is None:
        raise CxrError(f"{shown(path)}: PNG has no readable IHDR header", reason="corrupt")
    return header


def jpeg_header(path: Path, data: bytes) -> Header:
    """Walk the JPEG markers: size from the SOF segment; complete when EOI follows the last scan."""
    pos, header = 2, None
    while pos < len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: find the next marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
            continue
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            break
        marker, pos = data[pos], pos + 1
        if marker == 0xD9:
            if header is not None:
                header.complete = True
            break
        if marker in JPEG_STANDALONE:
            continue
        if pos + 2 > len(data):
            break
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if marker in JPEG_SOF and pos + 8 <= len(data) and header is None:
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 2:pos + 8])
            header = Header(width, height, components, 2 if precision > 8 else 1, False)
        pos += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data up to the next marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    if header is None:
        raise CxrError(f"{shown(path)}: JPEG has no readable frame header (SOF)", reason="corrupt")
    if header.height == 0:
        raise CxrError(f"{shown(path)}: JPEG gives its height only after the scan (DNL marker); not supported",
                       reason="corrupt")
    return header
