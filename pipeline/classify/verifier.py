"""The lesion verifier: a second look at every detector candidate before it is reported.

The detector sees one slice at a time and must run at a low confidence to find small and faint
lesions; at that confidence it also reports vessels, fissures and noise. The verifier is a
two-class LiLNet (``background``, ``lesion``) on the classifier's own crops of the candidate
(phase pairs when its manifest says so), trained on a detector's candidates on phantoms that the
detector never saw (``pipeline.train.verifier_data``). Its logits are averaged over a candidate's
crops, as the classifiers' are. With ``[input] zoom_window`` in its manifest it sees the central
window of each crop enlarged to 224 (``preprocess.zoom_centre``), so a lesion of a few pixels is
not lost inside one cell of the backbone's last layer (tried, not shipped: weights/README.md).
Every candidate from the verifier manifest's ``candidate_conf`` up is asked about. With a
``[candidate_score]`` table in the manifest, a logistic score over p(lesion), the detector's
confidence, the size and the crop count decides (``pipeline.reporting_rule.CandidateScore``).
Without one, two bars do: one below ``accept_conf`` (default: the detector manifest's
``lesion_conf``) is reported when p(lesion) reaches ``p_lesion``; one at or above it when p(lesion)
reaches ``p_lesion_confident`` (default 0: the verifier only adds lesions; a verifier deciding alone
at one bar lost large, confident lesions in trials). This is the
false-positive-reduction stage of two-stage detectors (it is not part of LiLNet); without
``verifier.manifest.toml`` in the weights folder the pipeline has none, as with the published
LiLNet weights.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import torch

from pipeline.classify.checkpoints import ModelLoadError, load_lilnet_checkpoint, weights_file
from pipeline.classify.classifier import ag_logits
from pipeline.classify.preprocess import CLASSIFIER_SIZE, GREY, PHASE_PAIR, zoom_centre
from pipeline.reporting_rule import CandidateScore

MANIFEST_NAME = "verifier.manifest.toml"
CLASSES = ("background", "lesion")


class LesionVerifier:
    def __init__(self, model: torch.nn.Module, *, name: str, version: str, sha256: str, threshold: float,
                 candidate_conf: float | None = None, accept_conf: float | None = None,
                 confident_threshold: float = 0.0, input_mode: str = PHASE_PAIR, zoom_window: int | None = None,
                 candidate_score: CandidateScore | None = None, device: str | None = None) -> None:
        if input_mode not in (GREY, PHASE_PAIR):
            raise ModelLoadError(f"verifier input mode {input_mode!r}; expected {GREY!r} or {PHASE_PAIR!r}")
        for label, value in (("p_lesion", threshold), ("p_lesion_confident", confident_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ModelLoadError(f"verifier {label} {value} is not a probability")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(self.device).eval()
        self.name, self.version, self.sha256 = name, version, sha256
        self.threshold = threshold
        self.candidate_conf = candidate_conf  # lowest detector confidence it is asked about (None: detector's lesion_conf)
        self.accept_conf = accept_conf  # where the lower bar starts (None: the detector's lesion_conf)
        self.confident_threshold = confident_threshold  # p(lesion) a candidate at or above accept_conf needs
        self.input_mode = input_mode
        if zoom_window is not None and not 1 <= zoom_window <= CLASSIFIER_SIZE:
            raise ModelLoadError(f"verifier zoom_window {zoom_window} must be 1-{CLASSIFIER_SIZE} px")
        self.zoom_window = zoom_window  # it looks at the centre of each crop, enlarged (preprocess.zoom_centre)
        self.candidate_score = candidate_score  # when set, it decides instead of the two bars

    @classmethod
    def from_manifest(cls, weights_dir: Path, device: str | None = None) -> "LesionVerifier":
        path = Path(weights_dir) / MANIFEST_NAME
        try:
            entry = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        try:
            classes = tuple(entry["classes"])
            threshold = float(entry["thresholds"]["p_lesion"])
            candidate_conf, accept_conf = (None if (v := entry["thresholds"].get(k)) is None else float(v)
                                           for k in ("candidate_conf", "accept_conf"))
            confident_threshold = float(entry["thresholds"].get("p_lesion_confident", 0.0))
            file, sha = str(entry["file"]), str(entry["sha256"])
            zoom = entry.get("input", {}).get("zoom_window")
            zoom_window = None if zoom is None else int(zoom)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path.name}: file, sha256, classes and [thresholds] p_lesion are required "
                                 f"({exc!r})") from exc
        try:
            score = entry.get("candidate_score")
            candidate_score = None if score is None else CandidateScore.from_table(score)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path.name}: [candidate_score] is malformed ({exc!r})") from exc
        if classes != CLASSES:
            raise ModelLoadError(f"{path.name}: classes {classes} != {CLASSES}")
        loaded = load_lilnet_checkpoint(weights_file(weights_dir, file, path.name), sha,
                                        depth=str(entry.get("depth", "resnet18")))
        if loaded.n_classes != len(CLASSES):
            raise ModelLoadError(f"{file}: {loaded.n_classes} classes, expected {len(CLASSES)}")
        return cls(loaded.model, name=str(entry.get("name", "lesion-verifier")),
                   version=str(entry.get("version", "unknown")), sha256=loaded.sha256, threshold=threshold,
                   candidate_conf=candidate_conf, accept_conf=accept_conf, confident_threshold=confident_threshold,
                   input_mode=str(entry.get("input", {}).get("mode", PHASE_PAIR)), zoom_window=zoom_window,
                   candidate_score=candidate_score, device=device)

    def logits(self, crops_u8: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """AG logits [M, 2] of crops [M,H,W] or phase pairs [M,2,H,W] (uint8)."""
        crops = np.asarray(crops_u8)
        if crops.dtype != np.uint8 or crops.ndim not in (3, 4):
            raise ValueError(f"crops must be uint8 [M,H,W] or [M,2,H,W], got {crops.dtype} {crops.shape}")
        if not len(crops):
            return np.zeros((0, len(CLASSES)), np.float32)
        if self.zoom_window is not None:
            crops = zoom_centre(crops, self.zoom_window)
        return ag_logits(self._model, crops, self.device, batch_size)


def lesion_probability(logits: np.ndarray) -> float:
    """p(lesion) of one candidate from its crops' logits [K, 2]: mean logits, then softmax."""
    mean = np.asarray(logits, dtype=np.float64).mean(axis=0)
    e = np.exp(mean - mean.max())
    return float(e[1] / e.sum())
