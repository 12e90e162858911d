"""Would the Coral Edge TPU compiler (v16) map this .tflite onto the TPU? A static check.

edgetpu_compiler only runs on x86-64 Linux with Coral's apt repository, so it cannot run here;
this reads the graph and applies the rules Coral documents
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations):
- every op must be in the supported-op table, with int8/uint8 tensors (int32 bias and shapes);
- every tensor shape must be static (no -1 in the shape signature), batch 1;
- the compiler cuts the graph once: from the first op it cannot map, that op and everything after
  it run on the CPU, even ops it could map.
Op versions: compiler v16 parses only the op versions its TFLite copy knows. Users report it
rejecting CONV_2D v6 (needs TFLite 2.9, google-coral/edgetpu#631) and TRANSPOSE_CONV v4
(google-coral/edgetpu#845). MAX_VERSION below is, per op, the newest version that TFLite's
runtime_version.cc assigns to a runtime <= 2.5 (compiler v16's era); it agrees with both reports.
It is an estimate: a model that passes here still has to go through edgetpu_compiler.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .tflite_model import Graph, Op

MAX_VERSION = {
    "ADD": 3, "AVERAGE_POOL_2D": 3, "CONCATENATION": 3, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 6,
    "EXPAND_DIMS": 1, "FULLY_CONNECTED": 9, "L2_NORMALIZATION": 2, "LOGISTIC": 3, "LSTM": 4,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": 3, "MAXIMUM": 4, "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4,
    "MUL": 4, "PACK": 3, "PAD": 3, "PRELU": 1, "QUANTIZE": 2, "REDUCE_MAX": 3, "REDUCE_MIN": 3,
    "RELU": 3, "RELU6": 3, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4,
    "RESIZE_NEAREST_NEIGHBOR": 4, "RSQRT": 2, "SLICE": 5, "SOFTMAX": 3, "SPACE_TO_DEPTH": 2,
    "SPLIT": 4, "SQUEEZE": 2, "STRIDED_SLICE": 5, "SUB": 5, "SUM": 2, "SQUARED_DIFFERENCE": 2,
    "TANH": 3, "TRANSPOSE": 5, "TRANSPOSE_CONV": 3,
}
SUPPORTED_OPS = frozenset(MAX_VERSION)
QUANTIZED_TYPES = {"INT8", "UINT8"}
INDEX_TYPES = {"INT32"}  # bias vectors, shapes and axes
NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}


@dataclass
class OpCheck:
    index: int
    op: str
    version: int
    on_tpu: bool
    problems: list[str] = field(default_factory=list)  # why this op itself cannot be mapped

    def to_dict(self) -> dict:
        return {"index": self.index, "op": self.op, "version": self.version,
                "device": "edgetpu" if self.on_tpu else "cpu", "problems": self.problems}


@dataclass
class EdgeTPUReport:
    ops: list[OpCheck]
    notes: list[str]

    @property
    def unsupported(self) -> list[OpCheck]:
        return [op for op in self.ops if op.problems]

    @property
    def cpu_ops(self) -> list[OpCheck]:
        return [op for op in self.ops if not op.on_tpu]

    @property
    def compatible(self) -> bool:
        return not self.unsupported and not self.notes

    def summary(self) -> str:
        if self.compatible:
            return f"all {len(self.ops)} ops map to the Edge TPU"
        reasons = Counter(f"{op.op} v{op.version}: {'; '.join(op.problems)}" for op in self.unsupported)
        listed = ", ".join(f"{text} (x{n})" if n > 1 else text for text, n in reasons.items())
        parts = [p for p in (listed, "; ".join(self.notes)) if p]
        return (f"{'; '.join(parts)}; {len(self.cpu_ops)} of {len(self.ops)} ops would run on the CPU")

    def to_dict(self) -> dict:
        return {"compatible": self.compatible, "ops_total": len(self.ops), "ops_on_cpu": len(self.cpu_ops),
                "unsupported": [op.to_dict() for op in self.unsupported], "notes": self.notes,
                "cpu_fallback": sorted({op.op for op in self.cpu_ops}), "summary": self.summary(),
                "compiler": "edgetpu_compiler v16 rules (static check; the compiler itself was not run)"}


def check_edgetpu(graph: Graph) -> EdgeTPUReport:
    notes = []
    if graph.subgraphs > 1:
        notes.append(f"{graph.subgraphs} subgraphs (the Edge TPU maps only the first)")
    checks, cut = [], False
    for op in graph.ops:
        problems = op_problems(op)
        cut = cut or bool(problems)
        checks.append(OpCheck(op.index, op.name, op.version, on_tpu=not cut, problems=problems))
    return EdgeTPUReport(checks, notes)


def op_problems(op: Op) -> list[str]:
    if op.name not in SUPPORTED_OPS:
        return ["not supported by the Edge TPU"]
    problems = []
    if op.version > MAX_VERSION[op.name]:
        problems.append(f"op version {op.version} is newer than compiler v16 accepts (max {MAX_VERSION[op.name]})")
    bad_types = sorted({t.type for t in op.inputs + op.outputs
                        if t.type not in QUANTIZED_TYPES and not (t.type in INDEX_TYPES and t.is_constant)})
    if bad_types:
        problems.append(f"{'/'.join(bad_types)} tensors (needs int8)")
    if any(-1 in t.shape_signature for t in op.inputs + op.outputs):
        problems.append("dynamic shape")
    if any(len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]) for t in op.inputs + op.outputs
           if not t.is_constant):
        problems.append("more than 3 dimensions larger than 1 (batch must be 1)")
    activation = getattr(op.options, "fusedActivationFunction", 0)
    if op.name in NO_FUSED_ACTIVATION and activation:
        problems.append("fused activation")
    return problems
