"""Read a .tflite file's graph (ops, op versions, tensors, weights) with the LiteRT FlatBuffer schema."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
               "INT32": np.int32, "INT16": np.int16, "INT64": np.int64}


@dataclass
class Tensor:
    index: int
    name: str
    type: str  # "INT8", "FLOAT32"...
    shape: tuple
    shape_signature: tuple  # -1 marks a dynamic dimension
    is_constant: bool
    data: bytes
    zero_point: int | None

    def values(self) -> np.ndarray | None:
        dtype = NUMPY_TYPES.get(self.type)
        if not self.is_constant or dtype is None:
            return None
        return np.frombuffer(self.data, dtype=dtype)


@dataclass
class Op:
    index: int
    name: str  # builtin name, e.g. "CONV_2D", or "CUSTOM:<code>"
    version: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    options: object  # the op's builtin options object (schema *OptionsT) or None


@dataclass
class Graph:
    ops: list[Op]
    tensors: list[Tensor]
    subgraphs: int
    min_runtime_version: str


def read_graph(data: bytes) -> Graph:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    subgraph = model.subgraphs[0]
    tensors = [_tensor(i, t, model.buffers, data) for i, t in enumerate(subgraph.tensors or [])]
    ops = []
    for i, op in enumerate(subgraph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            name = f"CUSTOM:{custom}"
        pick = lambda idx: [tensors[j] for j in (idx if idx is not None else []) if j >= 0]  # noqa: E731
        ops.append(Op(i, name, int(code.version), pick(op.inputs), pick(op.outputs), op.builtinOptions))
    return Graph(ops, tensors, len(model.subgraphs), _min_runtime(model))


def _tensor(index: int, t, buffers, data: bytes) -> Tensor:
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    buffer = buffers[t.buffer] if t.buffer < len(buffers) else None
    raw = b""
    if buffer is not None:
        if buffer.data is not None and len(buffer.data):
            raw = bytes(np.asarray(buffer.data, dtype=np.uint8))
        elif getattr(buffer, "offset", 0) > 1 and buffer.size:  # large models keep weights after the FlatBuffer
            raw = data[buffer.offset:buffer.offset + buffer.size]
    shape = tuple(int(x) for x in (t.shape if t.shape is not None else []))
    signature = tuple(int(x) for x in t.shapeSignature) if t.shapeSignature is not None else shape
    zero_point = None
    if t.quantization is not None and t.quantization.zeroPoint is not None and len(t.quantization.zeroPoint):
        zero_point = int(t.quantization.zeroPoint[0])
    return Tensor(index, name, TYPE_NAMES.get(t.type, str(t.type)), shape, signature, bool(raw), raw, zero_point)


def _min_runtime(model) -> str:
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        if name == "min_runtime_version":
            raw = bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8))
            return raw.split(b"\x00")[0].decode("ascii", "replace")
    return ""
