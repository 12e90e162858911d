"""Write cxr-edge metadata into a .tflite file (the edge reads it back with edge.metadata)."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edge.metadata import METADATA_NAME, ModelMetadata


def embed_metadata(tflite_bytes: bytes, metadata: ModelMetadata) -> bytes:
    """Return the model with `metadata` stored as a named metadata buffer (replacing an older one)."""
    import flatbuffers

    metadata.validate()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite_bytes, 0))
    payload = np.frombuffer(metadata.to_json().encode("utf-8"), dtype=np.uint8)
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = payload
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(tflite_bytes) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)
