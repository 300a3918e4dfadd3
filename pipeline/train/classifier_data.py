"""Crop datasets for the three LiLNet tasks (BM, B, M), built from phantom cases in memory.

Each case is forced to one lesion class (cycling through the six classes, so classes are
balanced by case count). Every lesion cross-section of at least ``min_side`` px on both sides
is a candidate; at most ``max_slices`` evenly spaced slices per lesion per phase are kept.
Each AP and PVP crop is a separate sample (label = the lesion's class); crops are cut with
``crop_around_box`` around a jittered ground-truth box (centre shift up to ``jitter_shift``
of the box size, scale 0.85-1.2) so the classifier tolerates detector boxes. With ``paired``,
each lesion slice is one sample instead: its AP and PVP windows stacked (the input of a
``phase-pair`` classifier, see ``pipeline.lesion_crops``).

Task label index orders follow ``docs/lilnet-reference.md`` A1:
BM: 0 benign (FNH/HEM/CYST), 1 malignant (HCC/ICC/MET); B: 0 FNH, 1 HEM, 2 CYST;
M: 0 HCC, 1 ICC, 2 MET.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.classify.preprocess import crop_around_box
from pipeline.imaging import window_u8
from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, render_case, sample_case

log = logging.getLogger(__name__)

# Global class order used inside a CropSet (index into this tuple).
ALL_CLASSES: tuple[LesionClass, ...] = (
    LesionClass.FNH, LesionClass.HEM, LesionClass.CYST, LesionClass.HCC, LesionClass.ICC, LesionClass.MET,
)
BENIGN = (LesionClass.FNH, LesionClass.HEM, LesionClass.CYST)
MALIGNANT = (LesionClass.HCC, LesionClass.ICC, LesionClass.MET)

TASKS: dict[str, tuple[str, ...]] = {
    "bm": ("benign", "malignant"),
    "benign": ("FNH", "HEM", "CYST"),
    "malignant": ("HCC", "ICC", "MET"),
    "lesion": ("background", "lesion"),  # the verifier: is a detector candidate a lesion at all
}
BACKGROUND = len(ALL_CLASSES)  # CropSet.cls of a sample that is no lesion (verifier training data)
PHASES = (ContrastPhase.AP, ContrastPhase.PVP)
PAIRED = 2  # CropSet.phase of an (AP, PVP) pair sample


def task_label(task: str, cls: LesionClass | None) -> int | None:
    """Label index of a lesion class (None: no lesion) in a task, or None when it is not in that task."""
    if task == "lesion":
        return 0 if cls is None else 1
    if cls is None:
        return None
    if task == "bm":
        return 0 if cls in BENIGN else 1
    if task == "benign":
        return BENIGN.index(cls) if cls in BENIGN else None
    if task == "malignant":
        return MALIGNANT.index(cls) if cls in MALIGNANT else None
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")


@dataclass(frozen=True)
class CropSet:
    """Crops [M,224,224] (or phase pairs [M,2,224,224]) uint8 with class (index into ALL_CLASSES), lesion key,
    phase, case."""

    crops: np.ndarray
    cls: np.ndarray  # int64 index into ALL_CLASSES, or BACKGROUND
    lesion: np.ndarray  # int64, unique per (case, lesion)
    phase: np.ndarray  # int64, 0 AP, 1 PVP, 2 (PAIRED) an AP+PVP pair
    case: np.ndarray  # int64 case index

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def take(self, rows: np.ndarray) -> "CropSet":
        """The samples at ``rows`` (indices or a boolean mask), every field alike."""
        return CropSet(*(getattr(self, f.name)[rows] for f in fields(self)))

    @classmethod
    def concat(cls, sets: "list[CropSet]") -> "CropSet":
        return cls(*(np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(cls)))

    def for_task(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crops, labels, lesion keys) of the crops that belong to ``task``."""
        classes = (*ALL_CLASSES, None)  # index BACKGROUND -> None
        labels = np.array([-1 if (lab := task_label(task, classes[c])) is None else lab for c in self.cls],
                          dtype=np.int64)
        keep = labels >= 0
        return self.crops[keep], labels[keep], self.lesion[keep]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, crops=self.crops, cls=self.cls, lesion=self.lesion, phase=self.phase, case=self.case)

    @classmethod
    def load(cls, path: Path) -> "CropSet":
        with np.load(path) as z:
            return cls(z["crops"], z["cls"], z["lesion"], z["phase"], z["case"])


def jitter_box(box: tuple[float, float, float, float], rng: np.random.Generator,
               shift: float = 0.15, scale: tuple[float, float] = (0.85, 1.2)) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.uniform(-shift, shift) * w
    cy = (y1 + y2) / 2 + rng.uniform(-shift, shift) * h
    s = rng.uniform(*scale)
    return cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2


def shift_box(box: tuple[float, float, float, float], rng: np.random.Generator,
              max_px: float) -> tuple[float, float, float, float]:
    dx, dy = rng.uniform(-max_px, max_px, size=2)
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def _box(b, rng: np.random.Generator | None) -> tuple[float, float, float, float]:
    box = (float(b.x1), float(b.y1), float(b.x2), float(b.y2))
    return box if rng is None else jitter_box(box, rng)


def build_crops(seed: int, cases_per_class: int, *, max_slices: int = 3, min_side: int = 8,
                n_slices: int = 40, jitter: bool = True, classes: tuple[LesionClass, ...] = ALL_CLASSES,
                paired: bool = False, pair_shift_px: float = 3.0) -> CropSet:
    """Render ``cases_per_class * len(classes)`` phantom cases (seed ``seed``) and cut crops.

    ``paired``: one sample per lesion slice, [2, 224, 224] = (AP, PVP) at the same place, the PVP
    window moved by up to ``pair_shift_px`` (the registration error between two detections).
    """
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    meta: list[tuple[int, int, int, int]] = []
    n_cases = cases_per_class * len(classes)
    for index in range(n_cases):
        forced = classes[index % len(classes)]
        spec = sample_case(seed, index, CaseOptions(phases=PHASES, n_slices=n_slices, slice_thickness_mm=5.0,
                                                    lesion_classes=(forced,)))
        case = render_case(spec)
        per_lesion: dict[int, list] = {}
        for slice_boxes in case.boxes:
            for b in slice_boxes:
                if (b.x2 - b.x1) >= min_side and (b.y2 - b.y1) >= min_side:
                    per_lesion.setdefault(b.lesion_id, []).append(b)
        for lesion_id, boxes in per_lesion.items():
            boxes.sort(key=lambda bb: bb.slice_index)
            if len(boxes) > max_slices:
                picks = np.linspace(0, len(boxes) - 1, max_slices + 2)[1:-1].round().astype(int)
                boxes = [boxes[i] for i in picks]
            key = index * 1000 + lesion_id
            if paired:
                for b in boxes:
                    box = _box(b, rng if jitter else None)
                    moved = shift_box(box, rng, pair_shift_px)  # the other phase, as a detector would place it
                    crops.append(np.stack([crop_around_box(window_u8(case.volumes[ph][b.slice_index]), bx)
                                           for ph, bx in zip(PHASES, (box, moved))]))
                    meta.append((ALL_CLASSES.index(b.cls), key, PAIRED, index))
                continue
            for p, phase in enumerate(PHASES):
                vol = case.volumes[phase]
                for b in boxes:
                    crops.append(crop_around_box(window_u8(vol[b.slice_index]), _box(b, rng if jitter else None)))
                    meta.append((ALL_CLASSES.index(b.cls), key, p, index))
    if not crops:
        raise RuntimeError("no lesion crops were produced")
    m = np.asarray(meta, dtype=np.int64)
    log.info("crops seed=%d cases=%d crops=%d", seed, n_cases, len(crops))
    return CropSet(np.stack(crops).astype(np.uint8), m[:, 0], m[:, 1], m[:, 2], m[:, 3])


def cached_crops(cache_dir: Path, seed: int, cases_per_class: int, **kwargs) -> CropSet:
    """``build_crops`` with an .npz cache keyed on the arguments."""
    extra = "-".join(f"{k}{''.join(c.value for c in v) if k == 'classes' else v}" for k, v in sorted(kwargs.items()))
    path = cache_dir / f"crops-s{seed}-k{cases_per_class}{'-' + extra if extra else ''}.npz"
    if path.is_file():
        return CropSet.load(path)
    data = build_crops(seed, cases_per_class, **kwargs)
    data.save(path)
    return data
