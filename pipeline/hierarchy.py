"""LiLNet's hierarchical decision: benign vs malignant first, then that branch's subtype.

Per lesion the aggregated (AG) logits of every crop, over all its slices and phases, are averaged
and then soft-maxed (lilnet-reference A5: "average, then softmax"). The six-class distribution
reported beside the decision is P(branch) x P(subtype | branch), so it sums to one and its argmax
within the chosen branch is the hierarchy's answer. The same function gives the case-level answer
from all crops of all lesions of the patient, as the paper averages per patient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BENIGN_CLASSES = ("FNH", "HEM", "CYST")  # index order of the published B model
MALIGNANT_CLASSES = ("HCC", "ICC", "MET")  # index order of the published M model
ALL_CLASSES = MALIGNANT_CLASSES + BENIGN_CLASSES


@dataclass(frozen=True)
class HierarchyLogits:
    """AG logits per crop from the three models."""

    bm: np.ndarray  # [M, 2]: benign, malignant
    benign: np.ndarray  # [M, 3]: FNH, HEM, CYST
    malignant: np.ndarray  # [M, 3]: HCC, ICC, MET

    def select(self, rows: np.ndarray | list[int]) -> "HierarchyLogits":
        return HierarchyLogits(self.bm[rows], self.benign[rows], self.malignant[rows])

    def __len__(self) -> int:
        return int(self.bm.shape[0])


@dataclass(frozen=True)
class Decision:
    cls: str
    malignant: bool
    p_malignant: float
    probabilities: dict[str, float]  # the six classes, summing to 1
    crops: int


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def decide(logits: HierarchyLogits) -> Decision:
    if len(logits) == 0:
        raise ValueError("no crops to classify")
    if not all(np.isfinite(z).all() for z in (logits.bm, logits.benign, logits.malignant)):
        # a failing model or GPU (fp16 overflow): never a quiet "benign FNH" from NaN comparisons
        raise ValueError("the classifier returned non-finite logits")
    p_bm = softmax(logits.bm.mean(axis=0))
    p_b = softmax(logits.benign.mean(axis=0))
    p_m = softmax(logits.malignant.mean(axis=0))
    malignant = bool(p_bm[1] > p_bm[0])
    probabilities = {c: float(p_bm[1] * p) for c, p in zip(MALIGNANT_CLASSES, p_m)}
    probabilities |= {c: float(p_bm[0] * p) for c, p in zip(BENIGN_CLASSES, p_b)}
    cls = MALIGNANT_CLASSES[int(np.argmax(p_m))] if malignant else BENIGN_CLASSES[int(np.argmax(p_b))]
    return Decision(cls, malignant, float(p_bm[1]), probabilities, len(logits))
