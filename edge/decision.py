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


def normalized(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities clipped to [0, 1], each row summing to 1 (int8 outputs do not sum exactly to 1)."""
    probs = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    total = probs.sum(axis=-1, keepdims=True)
    return np.divide(probs, total, out=probs.copy(), where=total > 0)


def abnormality_scores(probabilities: np.ndarray, normal_index: int) -> np.ndarray:
    """1 - P(normal) for one probability vector or a batch of them."""
    return 1.0 - normalized(probabilities)[..., normal_index]


def decide(probabilities: np.ndarray, metadata: ModelMetadata, threshold: float) -> Decision:
    probs = normalized(probabilities)
    abnormality = float(1.0 - probs[metadata.normal_index])
    named = {name: round(float(p), 6) for name, p in zip(metadata.classes, probs)}
    top = metadata.classes[int(np.argmax(probs))]
    decision = REFER if abnormality >= threshold else NORMAL
    return Decision(decision, round(abnormality, 6), top, named, float(threshold))
