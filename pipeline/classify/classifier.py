"""The three-model lesion classifier (BM, B, M) behind one object, returning AG logits.

``LesionClassifier.from_manifest(weights_dir)`` loads our phantom-trained weights listed in
``classifiers.manifest.toml`` (tables ``bm``, ``benign``, ``malignant``: file, sha256, depth,
classes, version, name); ``from_published`` loads the user-supplied LiLNet ``Time_BM``,
``Time_B``, ``Time_M`` files (resnet50). Both go through ``load_lilnet_checkpoint``, which
verifies the sha256 before unpickling. Class index orders (docs/lilnet-reference.md A1):
BM 0 benign / 1 malignant; B 0 FNH / 1 HEM / 2 CYST; M 0 HCC / 1 ICC / 2 MET.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from pipeline.classify.checkpoints import LoadedClassifier, ModelLoadError, load_lilnet_checkpoint, weights_file
from pipeline.classify.preprocess import GREY, PHASE_PAIR, classifier_input
from pipeline.hierarchy import Decision, HierarchyLogits  # the one type the analyzer aggregates

TASK_KEYS = ("bm", "benign", "malignant")
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "bm": ("benign", "malignant"),
    "benign": ("FNH", "HEM", "CYST"),
    "malignant": ("HCC", "ICC", "MET"),
}
PUBLISHED_ALIASES = {"bm": ("bm", "BM", "Time_BM"), "benign": ("benign", "B", "Time_B"),
                     "malignant": ("malignant", "M", "Time_M")}
MANIFEST_NAME = "classifiers.manifest.toml"
INPUT_MODES = (GREY, PHASE_PAIR)


@torch.no_grad()
def ag_logits(model: torch.nn.Module, crops_u8: np.ndarray, device: str, batch_size: int = 32) -> np.ndarray:
    """One LiLNet's AG logits [M, N] of uint8 crops or phase pairs, in batches (M >= 1)."""
    model.eval()
    outs = [model.aggregated_logits(classifier_input(crops_u8[i:i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(crops_u8), batch_size)]
    return torch.cat(outs).numpy()


class LesionClassifier:
    def __init__(self, models: Mapping[str, LoadedClassifier], names: Mapping[str, str],
                 versions: Mapping[str, str], device: str | None = None, input_mode: str = GREY) -> None:
        missing = [k for k in TASK_KEYS if k not in models]
        if missing:
            raise ModelLoadError(f"classifier models missing: {', '.join(missing)}")
        if input_mode not in INPUT_MODES:
            raise ModelLoadError(f"classifier input mode {input_mode!r}; expected one of {INPUT_MODES}")
        self.input_mode = input_mode
        for key in TASK_KEYS:
            want = len(TASK_CLASSES[key])
            if models[key].n_classes != want:
                raise ModelLoadError(f"{key} model has {models[key].n_classes} classes, expected {want}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._loaded = dict(models)
        self._models = {k: m.model.to(self.device).eval() for k, m in models.items()}
        self._names = dict(names)
        self._versions = dict(versions)

    @classmethod
    def from_manifest(cls, weights_dir: Path, device: str | None = None) -> "LesionClassifier":
        weights_dir = Path(weights_dir)
        manifest_path = weights_dir / MANIFEST_NAME
        try:
            manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ModelLoadError(f"cannot read {manifest_path}: {exc}") from exc
        models, names, versions, modes = {}, {}, {}, set()
        for key in TASK_KEYS:
            entry = manifest.get(key)
            if not isinstance(entry, dict) or not all(k in entry for k in ("file", "sha256")):
                raise ModelLoadError(f"{manifest_path.name}: table [{key}] with file and sha256 is required")
            modes.add(str(entry.get("input", {}).get("mode", GREY)))
            classes = tuple(entry.get("classes", TASK_CLASSES[key]))
            if classes != TASK_CLASSES[key]:
                raise ModelLoadError(f"{manifest_path.name}: [{key}] classes {classes} != {TASK_CLASSES[key]}")
            depth = entry.get("depth") or str(entry.get("architecture", "lilnet-resnet50")).removeprefix("lilnet-")
            models[key] = load_lilnet_checkpoint(weights_file(weights_dir, entry["file"], manifest_path.name),
                                                 str(entry["sha256"]), depth=depth)
            names[key] = str(entry.get("name", key))
            versions[key] = str(entry.get("version", "unknown"))
        if len(modes) != 1:  # the analyzer cuts one kind of input for all three models
            raise ModelLoadError(f"{manifest_path.name}: the three models must share one input mode, got {sorted(modes)}")
        return cls(models, names, versions, device, input_mode=modes.pop())

    @classmethod
    def from_published(cls, paths: Mapping[str, str | Path], sha256s: Mapping[str, str],
                       device: str | None = None) -> "LesionClassifier":
        """Published LiLNet weights (resnet50). Keys: bm/benign/malignant, or BM/B/M, or Time_BM/Time_B/Time_M."""
        models, names, versions = {}, {}, {}
        for key in TASK_KEYS:
            alias = next((a for a in PUBLISHED_ALIASES[key] if a in paths), None)
            if alias is None:
                raise ModelLoadError(f"no path given for the {key} model (keys {PUBLISHED_ALIASES[key]})")
            sha_alias = next((a for a in PUBLISHED_ALIASES[key] if a in sha256s), None)
            if sha_alias is None:
                raise ModelLoadError(f"no sha256 given for the {key} model")
            models[key] = load_lilnet_checkpoint(paths[alias], sha256s[sha_alias], depth="resnet50")
            names[key] = Path(paths[alias]).name
            versions[key] = "lilnet-zenodo-12646854"
        return cls(models, names, versions, device)

    @property
    def names(self) -> dict[str, str]:
        return dict(self._names)

    @property
    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    @property
    def sha256s(self) -> dict[str, str]:
        return {k: m.sha256 for k, m in self._loaded.items()}

    @torch.no_grad()
    def logits(self, crops_u8: np.ndarray, batch_size: int = 32) -> HierarchyLogits:
        """AG logits from all three models of uint8 grey crops [M,224,224] (or [M,H,W], resized), or, for a
        phase-pair model, of (AP, PVP) pairs [M,2,H,W] (a grey crop is then taken as its phase twice)."""
        crops = np.asarray(crops_u8)
        pairs = self.input_mode == PHASE_PAIR and crops.ndim == 4 and crops.shape[1] == 2
        if crops.dtype != np.uint8 or not (crops.ndim == 3 or pairs):
            want = "[M,H,W] or [M,2,H,W]" if self.input_mode == PHASE_PAIR else "[M,H,W]"
            raise ValueError(f"crops must be uint8 {want}, got {crops.dtype} {crops.shape}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out: dict[str, list[np.ndarray]] = {k: [] for k in TASK_KEYS}
        for i in range(0, len(crops), batch_size):
            inputs = classifier_input(crops[i:i + batch_size]).to(self.device)
            for key, model in self._models.items():
                out[key].append(model.aggregated_logits(inputs).float().cpu().numpy())
        result = {k: (np.concatenate(v) if v else np.zeros((0, len(TASK_CLASSES[k])), np.float32))
                  for k, v in out.items()}
        return HierarchyLogits(bm=result["bm"], benign=result["benign"], malignant=result["malignant"])

    def heatmap(self, crop_u8: np.ndarray, decision: Decision) -> np.ndarray:
        """Grad-CAM [224, 224] in [0, 1] of the decided subtype, from that branch's model (the one
        whose logit names the class shown), for one uint8 crop [H,W] or phase pair [2,H,W]."""
        from pipeline.report.heatmap import grad_cam

        key = "malignant" if decision.malignant else "benign"
        x = classifier_input(np.asarray(crop_u8, dtype=np.uint8)[None]).to(self.device)
        return grad_cam(self._models[key], x, TASK_CLASSES[key].index(decision.cls))
