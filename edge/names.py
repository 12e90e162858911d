"""File names as text that is safe to log, print and store, whatever bytes the name holds.

A station's file name can hold bytes that are not UTF-8 (`M\\xfcller.png` from a Latin-1 share),
a newline (which would forge a second line in a log file) or terminal escape codes (which
would repaint the operator's screen). `shown()` turns any name into one line of printable
text: undecodable bytes become `\\xNN`, non-printable characters `\\n`, `\\x1b`, `\\u202e`...
Every message, log row and table that names a file goes through it.
"""

from __future__ import annotations

import os
from pathlib import Path

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(path: str | bytes | os.PathLike) -> str:
    """One printable line for a path; readable names are unchanged."""
    raw = os.fsencode(path)  # back to the bytes on disk (surrogateescape undone)
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown_name(path: str | os.PathLike) -> str:
    """The last component of a path, shown safely."""
    return shown(Path(os.fsdecode(path)).name)


def one_line(exc: BaseException | str) -> str:
    """The whole message of an exception (or a text) on one line: never cut, whitespace folded,
    control characters escaped."""
    text = str(exc)
    if not text.strip():
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return shown(" ".join(text.split()))
