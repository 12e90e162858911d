"""Turn class probabilities into the screening decision: refer for a doctor's review, or normal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metadata import ModelMetadata

REFER, NORMAL = "refer", "normal"


@dataclass
class Decision:
    decision: str
    abnormality: float  # 1 - P(normal), in [0, 1]
    top_class: str
    probabilities: dict[str, float]
    threshold: float


def decide(probabilities: np.ndarray, metadata: ModelMetadata, threshold: float) -> Decision:
    probs = np.asarray(probabilities, dtype=np.float64)
    probs = np.clip(probs, 0.0, 1.0)
    total = probs.sum()
    if total > 0:
        probs = probs / total  # int8 outputs do not sum exactly to 1
    abnormality = float(1.0 - probs[metadata.normal_index])
    named = {name: round(float(p), 6) for name, p in zip(metadata.classes, probs)}
    top = metadata.classes[int(np.argmax(probs))]
    decision = REFER if abnormality >= threshold else NORMAL
    return Decision(decision, round(abnormality, 6), top, named, float(threshold))
