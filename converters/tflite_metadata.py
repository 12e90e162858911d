"""Write cxr-edge metadata into a .tflite file (the edge reads it back with edge.metadata)."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edge.metadata import METADATA_NAME, ModelMetadata


def embed_metadata(tflite_bytes: bytes, metadata: ModelMetadata, extra: dict[str, bytes] | None = None) -> bytes:
    """Return the model with `metadata` stored as a named metadata buffer (replacing an older one), and each
    `extra` name -> bytes as another named buffer (the lung segmenter travels this way)."""
    import flatbuffers

    metadata.validate()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite_bytes, 0))
    entries = {METADATA_NAME: metadata.to_json().encode("utf-8"), **(extra or {})}
    model.metadata = [m for m in (model.metadata or []) if _name(m) not in entries]
    for name, payload in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    _drop_unused_buffers(model)
    builder = flatbuffers.Builder(len(tflite_bytes) + sum(len(p) for p in entries.values()) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _drop_unused_buffers(model) -> None:
    """Remove buffers nothing refers to (the replaced metadata), renumbering tensors and metadata entries;
    without this every re-embedding kept the old metadata's bytes in the file."""
    used = {0}  # buffer 0 is the empty sentinel every TFLite file starts with
    for subgraph in model.subgraphs or []:
        used.update(t.buffer for t in subgraph.tensors or [])
    used.update(m.buffer for m in model.metadata or [])
    if len(used) == len(model.buffers):
        return
    new_index = {old: new for new, old in enumerate(sorted(used))}
    model.buffers = [model.buffers[old] for old in sorted(used)]
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            tensor.buffer = new_index[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new_index[entry.buffer]


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)
