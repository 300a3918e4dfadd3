"""From 2D detections to 3D lesions: grouping across slices, measuring, matching across phases.

Grouping: a box joins the track whose last box lies on one of the previous ``max_skip + 1`` slices
and overlaps it (IoU >= ``min_iou``, or one centre inside the other box); otherwise it starts a new
track. Matching: lesions of two phases in the same Frame of Reference pair up greedily by distance
between their centres in patient coordinates, within ``max(match_mm, 0.5 x long axis)``.
Sizes come from the boxes (long and short side of the key slice's box, in mm; volume as a stack of
ellipses): a box-based approximation, stated in the result, since the detector gives no outline.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .series import LoadedSeries


@dataclass(frozen=True)
class Box2D:
    slice_index: int
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0

    def contains(self, x: float, y: float) -> bool:
        return self.x1 <= x <= self.x2 and self.y1 <= y <= self.y2


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0) + max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0) - inter
    return inter / union if union > 0 else 0.0


def iou(a: Box2D, b: Box2D) -> float:
    return box_iou((a.x1, a.y1, a.x2, a.y2), (b.x1, b.y1, b.x2, b.y2))


def _linked(a: Box2D, b: Box2D, min_iou: float) -> bool:
    return iou(a, b) >= min_iou or a.contains(*b.center) or b.contains(*a.center)


def group_boxes(boxes_per_slice: list[list[Box2D]], min_iou: float = 0.2, max_skip: int = 1) -> list[list[Box2D]]:
    """Group per-slice boxes into tracks (one per 3D lesion), each sorted by slice."""
    tracks: list[list[Box2D]] = []
    for slice_boxes in boxes_per_slice:
        taken: set[int] = set()
        for box in sorted(slice_boxes, key=lambda b: -b.confidence):
            best, best_score = None, 0.0
            for t, track in enumerate(tracks):
                last = track[-1]
                if t in taken or not 0 < box.slice_index - last.slice_index <= max_skip + 1:
                    continue
                if _linked(last, box, min_iou):
                    score = iou(last, box) + 1e-3
                    if score > best_score:
                        best, best_score = t, score
            if best is None:
                tracks.append([box])
                taken.add(len(tracks) - 1)
            else:
                tracks[best].append(box)
                taken.add(best)
    return tracks


def _side_by_side(a: list[Box2D], b: list[Box2D], min_iou: float) -> bool:
    """Two groups of boxes with a slice where both have boxes and none of one links to any of the
    other: two lesions beside each other, however a third box may bridge them elsewhere."""
    slices = {x.slice_index for x in a} & {y.slice_index for y in b}
    return any(not any(_linked(x, y, min_iou) for x in a if x.slice_index == s for y in b if y.slice_index == s)
               for s in slices)


def merge_fragments(tracks: list[list[Box2D]], min_iou: float = 0.5, max_gap: int = 1) -> list[list[Box2D]]:
    """Join tracks of one series that are fragments of one lesion: some box of one and some box of the
    other lie at most ``max_gap`` slices apart and link (IoU >= ``min_iou``, or one centre inside the other
    box), and on no slice do both have boxes that do not link (lesions side by side, which one wide box
    may cover elsewhere). A joined track keeps one box per slice, the box around that slice's boxes, at
    their highest confidence. Chosen on the validation phantoms (8100 + 8200), where it removed most
    duplicate reports of one lesion; two true lesions overlapping in-plane can still be joined."""
    groups: list[list[Box2D]] = [list(t) for t in tracks]
    i = 0
    while i < len(groups):  # groups shrinks as it joins
        j = i + 1
        while j < len(groups):
            a, b = groups[i], groups[j]
            if (any(abs(x.slice_index - y.slice_index) <= max_gap and _linked(x, y, min_iou) for x in a for y in b)
                    and not _side_by_side(a, b, min_iou)):
                groups[i] = a + b
                del groups[j]
                j = i + 1  # the grown group may now reach tracks already passed over
            else:
                j += 1
        i += 1
    merged = []
    for boxes in groups:
        per_slice: dict[int, Box2D] = {}
        for b in boxes:
            o = per_slice.get(b.slice_index)
            per_slice[b.slice_index] = b if o is None else Box2D(
                b.slice_index, min(o.x1, b.x1), min(o.y1, b.y1), max(o.x2, b.x2), max(o.y2, b.y2),
                max(o.confidence, b.confidence))
        merged.append([per_slice[k] for k in sorted(per_slice)])
    return merged


@dataclass(frozen=True)
class SeriesLesion:
    """One lesion as seen in one series (phase)."""

    series_uid: str
    phase: str
    boxes: tuple[Box2D, ...]
    key: Box2D  # the slice where the lesion's box is largest
    key_sop_instance_uid: str
    box_sop_instance_uids: tuple[str, ...]  # the image of each box
    center_mm: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    volume_ml: float
    mean_hu: float
    confidence: float  # highest detector confidence over its boxes
    key_frame_number: int | None = None  # 1-based frame of the key image in a multi-frame (Enhanced CT) instance
    box_frame_numbers: tuple[int | None, ...] = ()  # per box, as box_sop_instance_uids

    @property
    def key_image(self) -> tuple[str, int | None]:
        """The key image: SOP Instance UID and, for a multi-frame instance, its frame."""
        return self.key_sop_instance_uid, self.key_frame_number

    @property
    def box_images(self) -> list[tuple[str, int | None]]:
        frames = self.box_frame_numbers or (None,) * len(self.box_sop_instance_uids)
        return list(zip(self.box_sop_instance_uids, frames))

    @property
    def key_area_mm2(self) -> float:
        """The key box's area in mm2 (long x short side), comparable across series of different pixel spacing."""
        return self.long_axis_mm * self.short_axis_mm


def _ellipse_mean(image: np.ndarray, box: Box2D) -> float:
    rows, cols = image.shape
    y0, y1 = max(int(np.floor(box.y1)), 0), min(int(np.ceil(box.y2)), rows)
    x0, x1 = max(int(np.floor(box.x1)), 0), min(int(np.ceil(box.x2)), cols)
    if y1 <= y0 or x1 <= x0:
        return float("nan")
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cx, cy = box.center
    rx, ry = max(box.width / 2.0, 0.5), max(box.height / 2.0, 0.5)
    inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
    values = image[y0:y1, x0:x1][inside]
    return float(values.mean()) if values.size else float("nan")


def measure(track: list[Box2D], series: LoadedSeries, phase: str) -> SeriesLesion:
    geo = series.geometry
    key = max(track, key=lambda b: b.area)
    sy, sx = geo.pixel_spacing
    w_mm, h_mm = key.width * sx, key.height * sy
    thickness = abs(geo.slice_spacing) or 1.0
    ordered = sorted(track, key=lambda b: b.slice_index)
    areas = [np.pi / 4.0 * b.width * sx * b.height * sy for b in ordered]
    # a slice the detector skipped inside the track (group_boxes bridges one) counts as the mean of its neighbours
    bridged = sum(max(0, b.slice_index - a.slice_index - 1) * (area_a + area_b) / 2.0
                  for a, b, area_a, area_b in zip(ordered, ordered[1:], areas, areas[1:]))
    volume = (sum(areas) + bridged) * thickness / 1000.0
    cx, cy = key.center
    center = geo.to_patient(key.slice_index, cy - 0.5, cx - 0.5)  # box edges -> pixel-centre index
    return SeriesLesion(
        series_uid=series.series_uid,
        phase=phase,
        boxes=tuple(track),
        key=key,
        key_sop_instance_uid=series.sop_instance_uids[key.slice_index],
        box_sop_instance_uids=tuple(series.sop_instance_uids[b.slice_index] for b in track),
        key_frame_number=series.frame_numbers[key.slice_index],
        box_frame_numbers=tuple(series.frame_numbers[b.slice_index] for b in track),
        center_mm=tuple(float(v) for v in center),
        long_axis_mm=float(max(w_mm, h_mm)),
        short_axis_mm=float(min(w_mm, h_mm)),
        volume_ml=float(volume),
        mean_hu=_ellipse_mean(series.hu[key.slice_index], key),
        confidence=float(max(b.confidence for b in track)),
    )


@dataclass(frozen=True)
class Lesion:
    """One lesion with its evidence from every phase where it was found."""

    index: int
    views: tuple[SeriesLesion, ...]

    @property
    def primary(self) -> SeriesLesion:
        return max(self.views, key=lambda v: v.key_area_mm2)

    @property
    def center_mm(self) -> tuple[float, float, float]:
        c = np.mean([v.center_mm for v in self.views], axis=0)
        return tuple(float(v) for v in c)

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(v.phase for v in self.views)


def match_phases(per_phase: list[list[SeriesLesion]], match_mm: float = 10.0) -> list[Lesion]:
    """Merge lesions seen in several series into one lesion each (greedy, nearest first). A negative
    ``match_mm`` merges nothing (series without a shared Frame of Reference: their coordinates are unrelated)."""
    groups: list[list[SeriesLesion]] = []
    for lesions in per_phase:
        if match_mm < 0:
            groups.extend([lesion] for lesion in lesions)
            continue
        candidates = []
        for li, lesion in enumerate(lesions):
            for gi, group in enumerate(groups):
                if any(v.phase == lesion.phase for v in group):
                    continue
                ref = max(group, key=lambda v: v.key_area_mm2)
                dist = float(np.linalg.norm(np.subtract(ref.center_mm, lesion.center_mm)))
                limit = max(match_mm, 0.5 * max(ref.long_axis_mm, lesion.long_axis_mm))
                if dist <= limit:
                    candidates.append((dist, li, gi))
        used_l, used_g = set(), set()
        for dist, li, gi in sorted(candidates):
            if li in used_l or gi in used_g:
                continue
            groups[gi].append(lesions[li])
            used_l.add(li)
            used_g.add(gi)
        groups.extend([lesion] for li, lesion in enumerate(lesions) if li not in used_l)
    ordered = sorted(groups, key=lambda g: -max(v.key_area_mm2 for v in g))
    return [Lesion(i + 1, tuple(g)) for i, g in enumerate(ordered)]
