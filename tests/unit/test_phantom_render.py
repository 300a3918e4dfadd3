"""Phantom rendering: determinism, ground-truth boxes, placement, and per-class enhancement patterns."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from pipeline.phantom import Case, CaseOptions, ContrastPhase, LesionClass, render_case, sample_case
from pipeline.phantom.anatomy import liver_like
from pipeline.phantom.sampling import plan_classes
from pipeline.phantom.spec import LesionSpec
from pipeline.phantom.tissues import Tissue

ALL_PHASES = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP, ContrastPhase.DELAYED)
NC, AP, PVP, DEL = ALL_PHASES


def small_options(**kw: object) -> CaseOptions:
    base = dict(phases=ALL_PHASES, n_slices=10, slice_thickness_mm=5.0, rows=512, cols=512)
    base.update(kw)
    return CaseOptions(**base)  # type: ignore[arg-type]


@lru_cache(maxsize=None)
def class_case(cls: LesionClass) -> tuple[Case, LesionSpec]:
    """A case with one large-enough lesion of ``cls`` (first suitable seed, deterministic)."""
    options = small_options(lesion_classes=(cls,), max_lesions=1, n_slices=8)
    for seed in range(100, 400):
        spec = sample_case(seed, 0, options)
        if not spec.lesions:
            continue
        les = spec.lesions[0]
        if min(les.diameters_mm) < 20.0:
            continue
        return render_case(spec), les
    raise AssertionError(f"no seed gives a large {cls.value}")


def region_means(case: Case, les: LesionSpec) -> dict[str, dict[ContrastPhase, float]]:
    """Mean HU per phase of the lesion (all, core, shell, annulus) and of the liver around it."""
    g = case.spec.geometry
    mask = case.lesion_labels == les.lesion_id
    ks, rows, cols = np.nonzero(mask)
    x = g.origin_mm[0] + cols * g.pixel_spacing_mm - les.centre_mm[0]
    y = g.origin_mm[1] + rows * g.pixel_spacing_mm - les.centre_mm[1]
    z = g.origin_mm[2] + ks * g.slice_thickness_mm - les.centre_mm[2]
    c, s = math.cos(les.angle_rad), math.sin(les.angle_rad)
    a, b, cz = les.radii_mm
    r = np.sqrt(((c * x + s * y) / a) ** 2 + ((-s * x + c * y) / b) ** 2 + (z / cz) ** 2)
    zones = {"all": np.ones_like(r, bool), "core": r < 0.45, "shell": r > 0.8, "annulus": (r > 0.55) & (r < 0.85),
             "inner": r < 0.8}
    slices = sorted(set(ks.tolist()))
    liver = (case.tissue_labels[slices] == Tissue.LIVER) & (case.lesion_labels[slices] == 0)
    out: dict[str, dict[ContrastPhase, float]] = {name: {} for name in [*zones, "liver"]}
    for p, vol in case.volumes.items():
        values = vol[ks, rows, cols].astype(np.float64)
        for name, zone in zones.items():
            out[name][p] = float(values[zone].mean()) if zone.any() else float("nan")
        out["liver"][p] = float(vol[slices][liver].mean())
    return out


def test_same_seed_gives_identical_volumes_and_other_seed_differs() -> None:
    options = small_options(n_slices=3, lesion_classes=(LesionClass.HCC,))
    a = render_case(sample_case(7, 2, options))
    b = render_case(sample_case(7, 2, options))
    c = render_case(sample_case(8, 2, options))
    for p in ALL_PHASES:
        assert a.volumes[p].dtype == np.int16
        assert a.volumes[p].tobytes() == b.volumes[p].tobytes()
        assert a.volumes[p].tobytes() != c.volumes[p].tobytes()
    assert a.boxes == b.boxes


def test_boxes_coincide_with_lesion_pixels_and_lesions_lie_in_liver() -> None:
    case = render_case(sample_case(3, 0, small_options(lesion_classes=(LesionClass.MET, LesionClass.CYST))))
    assert len(case.lesions) >= 2
    n_boxes = 0
    for k, boxes in enumerate(case.boxes):
        ids = set(np.unique(case.lesion_labels[k]).tolist()) - {0}
        assert ids == {b.lesion_id for b in boxes}
        for b in boxes:
            rows, cols = np.nonzero(case.lesion_labels[k] == b.lesion_id)
            assert (b.x1, b.y1, b.x2, b.y2) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert b.area_px == rows.size
            n_boxes += 1
    assert n_boxes > 0
    lesion_px = case.lesion_labels > 0
    assert np.all(liver_like(case.tissue_labels[lesion_px]))
    for truth in case.lesions:
        assert truth.slices, "every placed lesion is visible on at least one slice"


def test_normal_case_has_no_lesions() -> None:
    case = render_case(sample_case(5, 1, small_options(n_slices=3, lesion_classes=())))
    assert case.lesions == ()
    assert all(b == () for b in case.boxes)
    assert not case.lesion_labels.any()


def test_random_mix_has_normal_cases_and_several_classes() -> None:
    options = CaseOptions()
    plans = [plan_classes(options, np.random.default_rng(i)) for i in range(200)]
    assert any(p == [] for p in plans)
    assert any(len(set(p)) >= 2 for p in plans)
    assert {c for p in plans for c in p} == set(LesionClass)
    mets = [p.count(LesionClass.MET) for p in plans if LesionClass.MET in p]
    assert max(mets) >= 3


def test_met_case_has_several_lesions_inside_the_slab() -> None:
    spec = sample_case(11, 0, small_options(lesion_classes=(LesionClass.MET,)))
    assert 2 <= len(spec.lesions) <= 4
    z0, z1 = spec.geometry.z_mm(0), spec.geometry.z_mm(spec.geometry.n_slices - 1)
    assert all(z0 <= les.centre_mm[2] <= z1 for les in spec.lesions)


def test_anatomy_is_plausible_ct() -> None:
    case = class_case(LesionClass.CYST)[0]
    vol = case.volumes[PVP]
    labels = case.tissue_labels
    assert vol.min() >= -1024 and vol.max() <= 3071
    means = {t: float(vol[labels == t].mean()) for t in (Tissue.AIR, Tissue.FAT, Tissue.LIVER, Tissue.AORTA)}
    assert means[Tissue.AIR] < -950
    assert -130 < means[Tissue.FAT] < -60
    assert 90 < means[Tissue.LIVER] < 150
    # noise: std inside the liver away from its edges and vessels (texture adds a few HU)
    inner = labels == Tissue.LIVER
    for shift in (3, -3):
        inner = inner & np.roll(inner, shift, axis=1) & np.roll(inner, shift, axis=2)
    inner &= case.lesion_labels == 0
    std = float(np.std(vol[inner].astype(np.float64)))
    assert 8.0 < std < 25.0
    assert 10.0 <= case.spec.acquisition(PVP).noise_std_hu <= 20.0


def test_contrast_timing_of_organs() -> None:
    case = class_case(LesionClass.HCC)[0]
    labels = case.tissue_labels

    def mean(t: Tissue, p: ContrastPhase) -> float:
        return float(case.volumes[p][labels == t].mean())

    assert mean(Tissue.AORTA, AP) > mean(Tissue.AORTA, PVP) > mean(Tissue.AORTA, NC) + 50
    assert mean(Tissue.LIVER, PVP) > mean(Tissue.LIVER, AP) > mean(Tissue.LIVER, NC)
    assert mean(Tissue.PORTAL_VEIN, PVP) > mean(Tissue.PORTAL_VEIN, NC) + 80
    spleen = case.volumes[AP][labels == Tissue.SPLEEN].astype(np.float64)
    spleen_pvp = case.volumes[PVP][labels == Tissue.SPLEEN].astype(np.float64)
    if spleen.size > 500:
        assert spleen.std() > spleen_pvp.std() + 3  # heterogeneous (arciform) in AP only


@pytest.mark.parametrize("cls", list(LesionClass))
def test_lesion_class_enhancement_pattern(cls: LesionClass) -> None:
    case, les = class_case(cls)
    m = region_means(case, les)
    liver, all_, core, shell, ann = m["liver"], m["all"], m["core"], m["shell"], m["annulus"]
    rel = {p: all_[p] - liver[p] for p in ALL_PHASES}
    if cls is LesionClass.HCC:
        assert ann[AP] > liver[AP] + 10, "arterial hyperenhancement"
        assert ann[PVP] < liver[PVP] - 5, "washout in PVP"
        assert ann[DEL] < liver[DEL] - 5
    elif cls is LesionClass.ICC:
        assert shell[AP] > core[AP] + 10, "peripheral rim enhancement"
        assert core[PVP] < liver[PVP] - 5
        assert core[DEL] - core[AP] > 15, "progressive central fill"
    elif cls is LesionClass.MET:
        assert core[PVP] < liver[PVP] - 20, "hypodense centre"
        assert shell[AP] > core[AP] + 10, "rim / target enhancement"
    elif cls is LesionClass.FNH:
        assert rel[AP] > 25, "strong arterial enhancement"
        assert abs(rel[PVP]) < 15 and abs(rel[DEL]) < 15, "near-isodense later"
    elif cls is LesionClass.HEM:
        mask = case.lesion_labels == les.lesion_id
        assert rel[NC] < -8, "blood-pool density before contrast"
        slices = sorted(set(np.nonzero(mask)[0].tolist()))
        liver_px = (case.tissue_labels[slices] == Tissue.LIVER) & (case.lesion_labels[slices] == 0)
        bright = np.percentile(case.volumes[AP][mask], 98) - np.percentile(case.volumes[AP][slices][liver_px], 98)
        assert bright > 30, "peripheral nodules follow the aorta (brighter than any liver)"
        assert core[DEL] > core[AP] + 20, "centripetal fill-in"
    elif cls is LesionClass.CYST:
        inner = m["inner"]
        for p in ALL_PHASES:
            assert abs(inner[p]) < 20, "water density (simple cysts: 0-20 HU)"
            assert abs(inner[p] - inner[NC]) < 10, "no enhancement"
    # every class differs from liver somewhere
    assert max(abs(v) for v in rel.values()) > 10


def test_placement_painting_agrees_with_image_painting() -> None:
    """Lesion placement paints only what decides liver-likeness; the mask must equal the image's."""
    from pipeline.phantom.anatomy import paint_slice
    from pipeline.phantom.shapes import Canvas

    spec = sample_case(13, 0, small_options(n_slices=40, lesion_classes=()))
    g = spec.geometry
    for k in range(0, 40, 4):
        full, quick = Canvas.grid(g.x_axis(), g.y_axis()), Canvas.grid(g.x_axis(), g.y_axis())
        paint_slice(spec.anatomy, g.z_mm(k), full)
        paint_slice(spec.anatomy, g.z_mm(k), quick, liver_only=True)
        assert np.array_equal(liver_like(full.labels), liver_like(quick.labels))


def test_anatomy_varies_between_cases() -> None:
    specs = [sample_case(0, i, small_options(n_slices=1, lesion_classes=())) for i in range(6)]
    widths = {round(s.anatomy.body.a) for s in specs}
    livers = {round(s.anatomy.liver.right.rx) for s in specs}
    noise = {round(s.acquisitions[0].noise_std_hu) for s in specs}
    assert len(widths) >= 4 and len(livers) >= 4 and len(noise) >= 3
