"""Draw a complete ``CaseSpec`` from (seed, case index, options): deterministic for equal inputs."""
from __future__ import annotations

import datetime as dt
import logging
import math

import numpy as np

from .anatomy_spec import AnatomySpec, sample_anatomy
from .lesions import sample_appearance, sample_count, sample_diameter, sample_shape
from .naming import AGENTS, VENDORS, describe
from .placement import find_centre
from .spec import (CaseOptions, CaseSpec, ContrastPhase, Geometry, HeaderSpec, LesionClass, LesionSpec,
                   PhaseAcquisition)

log = logging.getLogger(__name__)

_DELAY_RANGES: dict[ContrastPhase, tuple[float, float]] = {
    ContrastPhase.AP: (20.0, 42.0),
    ContrastPhase.PVP: (55.0, 95.0),
    ContrastPhase.DELAYED: (180.0, 300.0),
}
_PHASE_ORDER = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP, ContrastPhase.DELAYED)


def _streams(seed: int, index: int) -> list[np.random.Generator]:
    children = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(index)]).spawn(4)
    return [np.random.default_rng(c) for c in children]


def plan_classes(options: CaseOptions, rng: np.random.Generator) -> list[LesionClass]:
    """The lesion classes of one case (repeats for multiple lesions of a class)."""
    if options.lesion_classes is not None:
        chosen = list(options.lesion_classes)
    elif rng.random() < options.normal_fraction:
        return []
    else:
        k = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
        chosen = [LesionClass(c) for c in rng.choice([c.value for c in LesionClass], size=k, replace=False)]
    plan: list[LesionClass] = []
    for cls in chosen:
        plan.extend([cls] * sample_count(cls, rng))
    # keep at least one of every requested class within the cap
    firsts = list(dict.fromkeys(plan))
    rest = plan.copy()
    for c in firsts:
        rest.remove(c)
    return (firsts + rest)[:max(options.max_lesions, len(firsts))]


def sample_geometry(options: CaseOptions, liver_z: tuple[float, float], body_half_width: float,
                    rng: np.random.Generator) -> Geometry:
    fov = 5.0 * math.ceil(max(340.0, 2.0 * (body_half_width + 12.0)) / 5.0) + 5.0 * int(rng.integers(0, 8))
    ps = fov / options.cols
    off_x, off_y = round(float(rng.uniform(-8, 8)), 1), round(float(rng.uniform(-2, 14)), 1)
    thk, n = options.slice_thickness_mm, options.n_slices
    cover = n * thk
    z_lo, z_hi = liver_z
    length = z_hi - z_lo
    if cover >= length + 10.0:
        top = z_hi + float(rng.uniform(-10.0, 5.0))  # the dome, not the chest above it
    else:
        top = z_lo + length * float(rng.uniform(0.45, 0.62)) + cover / 2.0
    z0 = round(top - cover + thk / 2.0, 2)
    return Geometry(rows=options.rows, cols=options.cols, pixel_spacing_mm=ps, slice_thickness_mm=thk,
                    n_slices=n, origin_mm=(round(-fov / 2 + ps / 2 + off_x, 4), round(-fov / 2 + ps / 2 + off_y, 4), z0))


def sample_lesions(spec_anatomy: AnatomySpec, geometry: Geometry, classes: list[LesionClass],
                   rng: np.random.Generator) -> tuple[LesionSpec, ...]:
    liver = spec_anatomy.liver
    z_first, z_last = geometry.z_mm(0), geometry.z_mm(geometry.n_slices - 1)
    taken: list[tuple[np.ndarray, float]] = []
    lesions: list[LesionSpec] = []
    for cls in classes:
        diameter = sample_diameter(cls, rng)
        appearance = sample_appearance(cls, diameter, rng)
        for _attempt in range(6):
            radii, angle, shape, texture = sample_shape(cls, diameter / 2.0, rng)
            probe = LesionSpec(len(lesions) + 1, cls, (0.0, 0.0, 0.0), radii, angle, shape, texture, appearance)
            ext = probe.max_extent_mm
            z_range = (max(liver.z_lo + ext, z_first), min(liver.z_hi - ext, z_last))
            centre = find_centre(spec_anatomy, rng, ext, z_range, taken, tries=25)
            if centre is not None:
                lesions.append(LesionSpec(len(lesions) + 1, cls, (float(centre[0]), float(centre[1]), float(centre[2])),
                                          radii, angle, shape, texture, appearance))
                taken.append((centre, ext))
                break
            diameter = max(5.0, diameter * 0.8)
        else:
            log.warning("lesion not placed cls=%s diameter_mm=%.1f", cls.value, diameter)
    return tuple(lesions)


def sample_acquisitions(options: CaseOptions, rng: np.random.Generator, vendor_index: int,
                        thickness: float) -> tuple[PhaseAcquisition, ...]:
    vendor = VENDORS[vendor_index]
    start, step = [(2, 1), (3, 1), (4, 1), (5, 1), (101, 100), (201, 100), (2, 2)][int(rng.integers(0, 7))]
    kernel = str(rng.choice(vendor.kernels))
    base_noise = float(rng.uniform(10.0, 20.0))
    out: list[PhaseAcquisition] = []
    for i, phase in enumerate(p for p in _PHASE_ORDER if p in options.phases):
        if phase is ContrastPhase.NC:
            delay = -float(rng.uniform(60.0, 240.0))
        else:
            delay = float(rng.uniform(*_DELAY_RANGES[phase]))
        number = start + i * step
        noise = float(np.clip(base_noise * rng.uniform(0.92, 1.08), 10.0, 20.0)) * options.noise_scale
        out.append(PhaseAcquisition(phase=phase, delay_s=round(delay, 1), series_number=number,
                                    series_description=describe(vendor, phase, thickness, number, rng),
                                    kernel=kernel, noise_std_hu=noise))
    return tuple(out)


def sample_header(seed: int, index: int, rng: np.random.Generator, vendor_index: int,
                  acquisitions: tuple[PhaseAcquisition, ...]) -> HeaderSpec:
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    study_start = float(rng.uniform(7.5, 17.5)) * 3600.0
    nc = [a for a in acquisitions if a.phase is ContrastPhase.NC]
    first_delay = nc[0].delay_s if nc else -float(rng.uniform(60.0, 240.0))
    bolus = round(study_start + float(rng.uniform(60.0, 300.0)) - first_delay)
    agent, concentration = AGENTS[int(rng.integers(0, len(AGENTS)))]
    pixrep, intercept, bits = [(0, -1024.0, 12), (0, -1024.0, 16), (1, -1024.0, 16), (1, 0.0, 16)][int(rng.integers(0, 4))]
    return HeaderSpec(
        patient_name=f"PHANTOM^CASE{index + 1:04d}", patient_id=f"PH{index + 1:04d}",
        patient_sex=str(rng.choice(["M", "F", "O"])), patient_age=f"{int(rng.integers(30, 86)):03d}Y",
        study_date=day.strftime("%Y%m%d"), bolus_start_s=float(bolus), nc_start_s=float(bolus + first_delay),
        accession=f"PH{index + 1:04d}S{seed % 100000:05d}", study_id=str(index + 1),
        manufacturer_model=VENDORS[vendor_index].model, station=f"CTSYN{int(rng.integers(1, 9))}",
        kvp=float(rng.choice([100.0, 120.0])), agent=agent, agent_volume_ml=float(5 * rng.integers(16, 27)),
        agent_concentration=concentration, flow_rate_ml_s=float(0.5 * rng.integers(6, 11)),
        pixel_representation=pixrep, rescale_intercept=intercept, bits_stored=bits,
        instances_head_first=bool(rng.random() < 0.7), scan_duration_s=round(float(rng.uniform(3.0, 10.0)), 2),
    )


def sample_case(seed: int, index: int, options: CaseOptions | None = None) -> CaseSpec:
    """The spec of case ``index`` of the set made with ``seed``."""
    options = options or CaseOptions()
    rng_anatomy, rng_lesions, rng_header, rng_misc = _streams(seed, index)
    anatomy = sample_anatomy(rng_anatomy, z_centre=float(rng_misc.uniform(-220.0, -60.0)))
    geometry = sample_geometry(options, (anatomy.liver.z_lo, anatomy.liver.z_hi), anatomy.body.a, rng_misc)
    classes = plan_classes(options, rng_lesions)
    lesions = sample_lesions(anatomy, geometry, classes, rng_lesions)
    vendor_index = int(rng_header.integers(0, len(VENDORS)))
    acquisitions = sample_acquisitions(options, rng_header, vendor_index, geometry.slice_thickness_mm)
    header = sample_header(seed, index, rng_header, vendor_index, acquisitions)
    return CaseSpec(seed=seed, index=index, geometry=geometry, anatomy=anatomy, lesions=lesions,
                    acquisitions=acquisitions, header=header, contrast_factor=float(rng_misc.uniform(0.82, 1.18)),
                    blur_sigma_px=float(rng_misc.uniform(0.5, 0.85)), noise_grain_px=float(rng_misc.uniform(0.6, 0.95)),
                    options=options)
