"""Read the named metadata entries of a .tflite file without TensorFlow or any schema package.

A TFLite model is a FlatBuffer whose root `Model` table has `buffers` (field 4) and
`metadata` (field 6, a list of {name, buffer index}). converters/ writes the cxr-edge metadata
there; this reader only needs the few FlatBuffer rules below, so it works with LiteRT,
tflite-runtime or no runtime at all.
"""

from __future__ import annotations

import struct

MODEL_BUFFERS, MODEL_METADATA = 4, 6
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1


class NotTFLite(ValueError):
    pass


def _u32(data: bytes, pos: int) -> int:
    return struct.unpack_from("<I", data, pos)[0]


def _field(data: bytes, table: int, index: int) -> int | None:
    """Absolute position of a table field, or None when absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else None


def _deref(data: bytes, pos: int) -> int:
    return pos + _u32(data, pos)


def _vector(data: bytes, table: int, index: int) -> tuple[int, int]:
    """(start of elements, length) of a vector field; (0, 0) when absent."""
    pos = _field(data, table, index)
    if pos is None:
        return 0, 0
    vec = _deref(data, pos)
    return vec + 4, _u32(data, vec)


def _string(data: bytes, table: int, index: int) -> str:
    start, length = _vector(data, table, index)
    return data[start:start + length].decode("utf-8", "replace")


def read_metadata_entries(data: bytes) -> dict[str, bytes]:
    """All `metadata` entries of a TFLite FlatBuffer, name -> raw bytes."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise NotTFLite("no TFL3 FlatBuffer identifier")
    try:
        model = _deref(data, 0)
        buffers_start, n_buffers = _vector(data, model, MODEL_BUFFERS)
        meta_start, n_meta = _vector(data, model, MODEL_METADATA)
        entries = {}
        for i in range(n_meta):
            entry = _deref(data, meta_start + 4 * i)
            name = _string(data, entry, METADATA_NAME)
            buf_pos = _field(data, entry, METADATA_BUFFER)
            buf_index = _u32(data, buf_pos) if buf_pos is not None else 0
            if buf_index >= n_buffers:
                continue
            entries[name] = _buffer_bytes(data, _deref(data, buffers_start + 4 * buf_index))
        return entries
    except (struct.error, IndexError) as exc:
        raise NotTFLite(f"damaged FlatBuffer ({exc})") from None


def _buffer_bytes(data: bytes, buffer: int) -> bytes:
    start, length = _vector(data, buffer, BUFFER_DATA)
    if length:
        return data[start:start + length]
    # Large models keep buffer contents after the FlatBuffer, addressed by offset and size.
    off_pos, size_pos = _field(data, buffer, BUFFER_OFFSET), _field(data, buffer, BUFFER_SIZE)
    if off_pos is None or size_pos is None:
        return b""
    offset, size = struct.unpack_from("<Q", data, off_pos)[0], struct.unpack_from("<Q", data, size_pos)[0]
    return data[offset:offset + size]
