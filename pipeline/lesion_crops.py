"""Classifier inputs for the lesions of a study: grey crops per phase, or (AP, PVP) phase pairs.

Grey (the published LiLNet input): each of a lesion's largest boxes in each phase gives one
224x224 crop. Phase pairs (a ``phase-pair`` classifier manifest): each such box also gives the
window at the same patient position in the other contrast phase, so that one sample shows the
enhancement change (wash-in, washout) that a single phase cannot. The other phase's window is
the lesion's own detection on that slice when the detector found it there (it absorbs breathing
shifts); otherwise the box centre mapped through patient coordinates to the nearest slice, at the
same size in mm. Without a second phase (or a shared Frame of Reference) a pair is the crop twice,
which a phase-pair model reads exactly as the grey input.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .classify.preprocess import PreprocessError, crop_around_box
from .lesions import Box2D, Lesion
from .series import LoadedSeries

OTHER_PHASE = {"AP": "PVP", "PVP": "AP"}


@dataclass(frozen=True)
class PhaseImages:
    series: LoadedSeries
    phase: str  # AP, PVP or UNKNOWN
    windowed: np.ndarray  # [S, H, W] uint8, W400/L40


def lesion_crops(lesions: Sequence[Lesion], images: Mapping[str, PhaseImages], *, paired: bool,
                 max_per_view: int, min_px: float) -> tuple[np.ndarray | None, list[int]]:
    """Crops [M,224,224] (pairs: [M,2,224,224]) and the lesion index of each; None when nothing is big enough."""
    frames = {im.series.geometry.frame_of_reference_uid for im in images.values()}
    by_phase = {im.phase: im for im in images.values()} if len(frames) == 1 and None not in frames else {}
    crops, owners = [], []
    for lesion in lesions:
        for view in lesion.views:
            own = images[view.series_uid]
            other = by_phase.get(OTHER_PHASE.get(view.phase, ""))
            for b in sorted(view.boxes, key=lambda b: -b.area)[:max_per_view]:
                if max(b.width, b.height) < min_px:
                    continue
                crop = crop_around_box(own.windowed[b.slice_index], (b.x1, b.y1, b.x2, b.y2))
                if paired:
                    twin = _twin_crop(b, own, other, lesion) if other is not None else None
                    pair = (crop, crop if twin is None else twin)
                    crop = np.stack(pair[::-1] if view.phase == "PVP" else pair)  # channel order AP, PVP
                crops.append(crop)
                owners.append(lesion.index)
    return (np.stack(crops) if crops else None), owners


def _twin_crop(box: Box2D, own: PhaseImages, other: PhaseImages, lesion: Lesion) -> np.ndarray | None:
    """The window at ``box``'s place in the other phase, or None when that place is outside its volume."""
    cx, cy = box.center
    index = other.series.geometry.to_index(own.series.geometry.to_patient(box.slice_index, cy - 0.5, cx - 0.5))
    if index is None:
        return None
    s, row, col = index
    found = [b for v in lesion.views if v.series_uid == other.series.series_uid for b in v.boxes if b.slice_index == s]
    if found:
        b = max(found, key=lambda b: b.area)
        target = (b.x1, b.y1, b.x2, b.y2)
    else:
        (sy, sx), (oy, ox) = own.series.geometry.pixel_spacing, other.series.geometry.pixel_spacing
        half_w, half_h = box.width * sx / ox / 2, box.height * sy / oy / 2
        x, y = col + 0.5, row + 0.5  # pixel-centre index -> box-edge coordinates
        target = (x - half_w, y - half_h, x + half_w, y + half_h)
    try:
        return crop_around_box(other.windowed[s], target)
    except PreprocessError:  # mapped outside the image
        return None
