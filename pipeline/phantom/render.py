"""Render a ``CaseSpec`` into per-phase HU volumes with exact lesion ground truth (no DICOM)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .anatomy import liver_like, paint_slice
from .imaging import ct_noise, gaussian_blur
from .lesion_render import LesionFields, lesion_fields, lesion_hu
from .shapes import Canvas, wave_field
from .spec import CaseSpec, ContrastPhase, LesionClass
from .tissues import Tissue, blood_pool_hu, sample_base_hu, spleen_heterogeneity, tissue_lut

log = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class LesionBox:
    """A lesion's bounding box on one slice, in pixel indices.

    ``x1, y1`` are the first column/row containing lesion pixels and ``x2, y2`` one past the last
    (so the box is ``[x1, x2) x [y1, y2)``, equivalently pixel-edge coordinates).
    """

    lesion_id: int
    cls: LesionClass
    slice_index: int
    x1: int
    y1: int
    x2: int
    y2: int
    area_px: int


@dataclass(frozen=True)
class LesionTruth:
    lesion_id: int
    cls: LesionClass
    centre_mm: tuple[float, float, float]
    diameters_mm: tuple[float, float, float]
    slices: tuple[int, ...]
    contrast_hu: dict[ContrastPhase, float]  # mean lesion HU minus mean of the surrounding liver


@dataclass
class Case:
    """One rendered study: HU volumes (slices, rows, cols), slice 0 most inferior."""

    spec: CaseSpec
    volumes: dict[ContrastPhase, np.ndarray]  # int16 HU
    lesion_labels: np.ndarray  # uint8: 0 none, else lesion_id
    tissue_labels: np.ndarray  # uint8 ``Tissue``
    boxes: tuple[tuple[LesionBox, ...], ...]  # per slice
    lesions: tuple[LesionTruth, ...]

    @property
    def phases(self) -> tuple[ContrastPhase, ...]:
        return tuple(self.volumes)

    @property
    def liver_mask(self) -> np.ndarray:
        return self.tissue_labels == Tissue.LIVER


def _coarse_field(waves: tuple[tuple[float, float, float, float], ...], x: np.ndarray, y: np.ndarray, z: float,
                  factor: int = 4) -> np.ndarray:
    """A smooth texture evaluated on a coarse grid and repeated up (cheap; amplitude << noise)."""
    xc, yc = x[::factor], y[::factor]
    coarse = wave_field(waves, xc[None, :], yc[:, None], z)
    full = np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)
    return full[: len(y), : len(x)]


def _liver_waves(spec: CaseSpec) -> tuple[tuple[float, float, float, float], ...]:
    rng = np.random.default_rng([spec.seed & 0xFFFFFFFF, spec.index, 11])
    return tuple((*(float(k) for k in rng.normal(0, 0.09, 3)), float(rng.uniform(0, 2 * math.pi))) for _ in range(5))


def _box(mask: np.ndarray, lesion_id: int, cls: LesionClass, k: int, r0: int, c0: int) -> LesionBox | None:
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size == 0:
        return None
    cols = np.nonzero(mask.any(axis=0))[0]
    return LesionBox(lesion_id, cls, k, int(c0 + cols[0]), int(r0 + rows[0]), int(c0 + cols[-1] + 1),
                     int(r0 + rows[-1] + 1), int(mask.sum()))


def render_case(spec: CaseSpec) -> Case:
    """Render all phases of a case. Deterministic: equal specs give byte-identical volumes."""
    g = spec.geometry
    xs, ys = g.x_axis(), g.y_axis()
    canvas = Canvas.grid(xs, ys)
    base = sample_base_hu(np.random.default_rng([spec.seed & 0xFFFFFFFF, spec.index, 5]))
    cf = spec.contrast_factor
    phases = [a.phase for a in spec.acquisitions]
    luts = {a.phase: tissue_lut(base, a.delay_s, cf) for a in spec.acquisitions}
    liver_ref = {a.phase: float(luts[a.phase][Tissue.LIVER]) for a in spec.acquisitions}
    blood_ref = {a.phase: blood_pool_hu(float(base[Tissue.AORTA]), a.delay_s, cf) for a in spec.acquisitions}
    spleen_amp = {a.phase: cf * spleen_heterogeneity(a.delay_s) for a in spec.acquisitions}
    liver_waves = _liver_waves(spec)
    liver_tex_hu = spec.anatomy.liver.texture_hu

    shape = (g.n_slices, g.rows, g.cols)
    volumes = {p: np.empty(shape, dtype=np.int16) for p in phases}
    lesion_labels = np.zeros(shape, dtype=np.uint8)
    tissue_labels = np.empty(shape, dtype=np.uint8)
    boxes: list[tuple[LesionBox, ...]] = []
    # sums for contrast: per lesion, per phase: [lesion sum, lesion n, ring sum, ring n]
    sums = {(les.lesion_id, p): np.zeros(4) for les in spec.lesions for p in phases}
    slices_of: dict[int, list[int]] = {les.lesion_id: [] for les in spec.lesions}
    ring_px = max(2, int(round(8.0 / g.pixel_spacing_mm)))

    for k in range(g.n_slices):
        z = g.z_mm(k)
        paint_slice(spec.anatomy, z, canvas)
        labels = canvas.labels
        tissue_labels[k] = labels
        liver = liver_like(labels)
        fields: list[LesionFields] = []
        slice_boxes: list[LesionBox] = []
        for les in spec.lesions:
            f = lesion_fields(les, canvas, z, liver)
            if f is None:
                continue
            fields.append(f)
            m = f.mask
            (rs, cs) = f.region.index
            box = _box(m, les.lesion_id, les.cls, k, rs.start or 0, cs.start or 0)
            if box is not None:
                lesion_labels[k][f.region.index][m] = les.lesion_id
                slice_boxes.append(box)
                slices_of[les.lesion_id].append(k)
        boxes.append(tuple(slice_boxes))
        is_liver = labels == Tissue.LIVER
        liver_tex = _coarse_field(liver_waves, xs, ys, z) * np.float32(liver_tex_hu) if is_liver.any() else None
        is_spleen = labels == Tissue.SPLEEN
        spleen_tex = _coarse_field(spec.anatomy.spleen_waves, xs, ys, z, 2) if is_spleen.any() else None

        for p_i, acq in enumerate(spec.acquisitions):
            p = acq.phase
            img = luts[p][labels]
            if liver_tex is not None:
                img += liver_tex * is_liver
            if spleen_tex is not None and spleen_amp[p] > 0:
                img += np.float32(spleen_amp[p]) * spleen_tex * is_spleen
            for f in fields:
                value, weight = lesion_hu(f, acq.delay_s, liver_ref[p], blood_ref[p])
                sub = img[f.region.index]
                sub += weight * (value - sub)
            img = gaussian_blur(img, spec.blur_sigma_px)
            if acq.noise_std_hu > 0:
                rng = np.random.default_rng([spec.seed & 0xFFFFFFFF, spec.index, p_i, k, 17])
                img += ct_noise(rng, img.shape, acq.noise_std_hu, spec.noise_grain_px)
            np.clip(np.rint(img), HU_MIN, HU_MAX, out=img)
            volumes[p][k] = img.astype(np.int16)
            for f in fields:
                _accumulate(sums[(f.lesion.lesion_id, p)], volumes[p][k], lesion_labels[k], is_liver,
                            f.lesion.lesion_id, f.region.index, ring_px)

    truths = []
    for les in spec.lesions:
        contrast = {}
        for p in phases:
            s = sums[(les.lesion_id, p)]
            contrast[p] = float(s[0] / s[1] - s[2] / s[3]) if s[1] > 0 and s[3] > 0 else float("nan")
        truths.append(LesionTruth(les.lesion_id, les.cls, les.centre_mm, les.diameters_mm,
                                  tuple(slices_of[les.lesion_id]), contrast))
    log.debug("rendered case=%s slices=%d lesions=%d", spec.case_id, g.n_slices, len(spec.lesions))
    return Case(spec=spec, volumes=volumes, lesion_labels=lesion_labels, tissue_labels=tissue_labels,
                boxes=tuple(boxes), lesions=tuple(truths))


def _accumulate(acc: np.ndarray, img: np.ndarray, lesion_labels: np.ndarray, is_liver: np.ndarray,
                lesion_id: int, index: tuple[slice, slice], ring_px: int) -> None:
    rs, cs = index
    r0, r1 = max(0, (rs.start or 0) - ring_px), min(img.shape[0], (rs.stop or img.shape[0]) + ring_px)
    c0, c1 = max(0, (cs.start or 0) - ring_px), min(img.shape[1], (cs.stop or img.shape[1]) + ring_px)
    win = img[r0:r1, c0:c1]
    lab = lesion_labels[r0:r1, c0:c1]
    inside = lab == lesion_id
    ring = is_liver[r0:r1, c0:c1] & (lab == 0)
    acc[0] += float(win[inside].sum())
    acc[1] += int(inside.sum())
    acc[2] += float(win[ring].sum())
    acc[3] += int(ring.sum())
