"""Which detector candidates a study reports: one rule for the analyzer and for re-scoring saved runs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def is_reported(detector_confidence: float, p_lesion: float | None, accept_conf: float, p_threshold: float,
                p_confident: float = 0.0) -> bool:
    """Two bars for the verifier's p(lesion): a candidate the detector is sure of (``accept_conf``) needs only
    ``p_confident``, one below it needs ``p_threshold``. With ``p_confident`` 0 the verifier can only add
    lesions to what the detector reports alone; above 0 it can also veto a confident candidate it scores
    far below a lesion. Without a verifier probability there is nothing to overrule."""
    if p_lesion is None:
        return True
    return p_lesion >= p_threshold or (detector_confidence >= accept_conf and p_lesion >= p_confident)


# Without a clip, a verifier sure to many decimals would outweigh every other feature (the clip also
# bounds what p(lesion) alone can veto: a confident, persistent detection can outweigh it).
_P_CLIP = 1e-4
FEATURES = ("logit_p_lesion", "detector_confidence", "log_long_axis_mm", "log_crops")


def candidate_features(detector_confidence: float, p_lesion: float, long_axis_mm: float, crops: int) -> np.ndarray:
    """What the candidate score weighs: the verifier's opinion, the detector's best box, the size (large
    false candidates are fissures and vessel bundles) and how many crops the candidate yields (a lesion
    persists over slices and phases, noise rarely does)."""
    p = min(max(float(p_lesion), _P_CLIP), 1.0 - _P_CLIP)
    return np.array([math.log(p / (1.0 - p)), float(detector_confidence),
                     math.log(max(float(long_axis_mm), 1.0)), math.log(max(int(crops), 1))])


@dataclass(frozen=True)
class CandidateScore:
    """A logistic score over ``candidate_features`` (standardised), fitted on validation phantoms by
    ``pipeline.train.candidate_score``; a candidate is reported when it reaches ``threshold``. It replaces
    the two bars of ``is_reported`` when the verifier manifest has a ``[candidate_score]`` table."""
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    max_crops_per_view: int | None = None  # the analyzer setting the crop counts were fitted with

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.scale) == len(self.weights) == len(FEATURES):
            raise ValueError(f"candidate_score needs {len(FEATURES)} means, scales and weights ({', '.join(FEATURES)})")
        numbers = (*self.mean, *self.scale, *self.weights, self.bias, self.threshold)
        if not all(math.isfinite(v) for v in numbers):  # TOML allows nan and inf: either would decide every candidate
            raise ValueError("candidate_score numbers must be finite")
        if not all(s > 0 for s in self.scale):
            raise ValueError("candidate_score scales must be positive")

    @classmethod
    def from_table(cls, table: dict) -> "CandidateScore":
        """From a manifest table; its ``features`` must name ``FEATURES`` in order (a table written for other
        features is refused rather than misread)."""
        if not isinstance(table, dict):
            raise ValueError("candidate_score must be a table")
        if tuple(table.get("features", ())) != FEATURES:
            raise ValueError(f"candidate_score features {table.get('features')} != {list(FEATURES)}")
        crops = table.get("max_crops_per_view")
        return cls(*(tuple(float(v) for v in table[k]) for k in ("mean", "scale", "weights")),
                   bias=float(table["bias"]), threshold=float(table["threshold"]),
                   max_crops_per_view=None if crops is None else int(crops))

    def to_table(self) -> dict:
        table = {"features": list(FEATURES), "mean": list(self.mean), "scale": list(self.scale),
                 "weights": list(self.weights), "bias": self.bias, "threshold": self.threshold}
        return table | ({} if self.max_crops_per_view is None else {"max_crops_per_view": self.max_crops_per_view})

    def score(self, features: np.ndarray) -> float:
        z = (np.asarray(features) - self.mean) / np.asarray(self.scale)
        return float(z @ np.asarray(self.weights) + self.bias)

    def __call__(self, detector_confidence: float, p_lesion: float, long_axis_mm: float, crops: int) -> float:
        return self.score(candidate_features(detector_confidence, p_lesion, long_axis_mm, crops))
