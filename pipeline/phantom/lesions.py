"""The per-class lesion table (textbook multiphase CT appearance) and sampling of one lesion.

HU values are ranges per phase (NC, AP, PVP, DELAYED); each lesion draws its own values, so a
class is a pattern, not a number. Unless a profile says otherwise values are relative to the
liver parenchyma in the same phase. Sources: the standard LI-RADS / radiology-textbook
descriptions of each entity.

- HCC: arterial phase hyperenhancement (APHE), washout in PVP/delayed, enhancing capsule,
  mosaic texture, central necrosis when large.
- ICC: irregular, peripheral rim enhancement in AP, progressive (delayed) central fill.
- MET: hypovascular; rim / target enhancement with a hypodense centre, often several.
- FNH: strong homogeneous APHE, near-isodense in PVP/delayed, lobulated, central stellate scar
  that is hypodense early and enhances late.
- HEM: peripheral nodular discontinuous enhancement that follows the blood pool, centripetal
  fill-in over time (small ones may flash-fill).
- CYST: water density, sharp margin, no enhancement, homogeneous.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import LesionAppearance, LesionClass, PhaseValues, Wave

Range = tuple[float, float]


@dataclass(frozen=True)
class ZoneProfile:
    nc: Range
    ap: Range
    pvp: Range
    delayed: Range

    def sample(self, rng: np.random.Generator) -> PhaseValues:
        return PhaseValues(*(float(rng.uniform(*r)) for r in (self.nc, self.ap, self.pvp, self.delayed)))


@dataclass(frozen=True)
class ClassProfile:
    diameter_mm: Range
    count: tuple[int, int]  # lesions of this class when the class is drawn for a case
    irregularity: Range  # amplitude of the low-frequency boundary perturbation
    elongation: Range  # ratio of the shortest to the longest semi-axis
    texture_hu: Range
    edge_mm: Range
    reference: str
    body: ZoneProfile
    rim: ZoneProfile | None = None
    rim_fraction: Range = (0.0, 0.0)
    capsule: ZoneProfile | None = None
    capsule_prob: float = 0.0
    capsule_mm: Range = (0.0, 0.0)
    scar: ZoneProfile | None = None
    scar_prob: float = 0.0
    scar_min_diameter: float = 0.0
    scar_fraction: Range = (0.0, 0.0)
    necrosis_prob: float = 0.0
    necrosis_min_diameter: float = 0.0
    necrosis_hu: Range = (10.0, 30.0)
    necrosis_fraction: Range = (0.0, 0.0)
    fill: ZoneProfile | None = None
    flash_prob: float = 0.0
    nodules: tuple[int, int] = (0, 0)
    blood_fraction: Range = (1.0, 1.0)


PROFILES: dict[LesionClass, ClassProfile] = {
    LesionClass.HCC: ClassProfile(
        diameter_mm=(10, 60), count=(1, 1), irregularity=(0.03, 0.08), elongation=(0.75, 1.0),
        texture_hu=(6, 16), edge_mm=(0.6, 1.2), reference="liver",
        body=ZoneProfile(nc=(-18, -6), ap=(28, 60), pvp=(-32, -12), delayed=(-36, -14)),
        capsule=ZoneProfile(nc=(-8, 0), ap=(-6, 4), pvp=(18, 38), delayed=(22, 42)),
        capsule_prob=0.75, capsule_mm=(1.2, 2.5),
        necrosis_prob=0.45, necrosis_min_diameter=30, necrosis_hu=(12, 30), necrosis_fraction=(0.2, 0.4),
    ),
    LesionClass.ICC: ClassProfile(
        diameter_mm=(20, 60), count=(1, 1), irregularity=(0.08, 0.15), elongation=(0.7, 0.95),
        texture_hu=(4, 10), edge_mm=(1.0, 2.0), reference="liver",
        body=ZoneProfile(nc=(-24, -12), ap=(-38, -22), pvp=(-30, -14), delayed=(-4, 14)),
        rim=ZoneProfile(nc=(-20, -10), ap=(15, 38), pvp=(2, 20), delayed=(-6, 8)),
        rim_fraction=(0.2, 0.32),
    ),
    LesionClass.MET: ClassProfile(
        diameter_mm=(6, 35), count=(2, 5), irregularity=(0.03, 0.08), elongation=(0.8, 1.0),
        texture_hu=(3, 8), edge_mm=(0.6, 1.2), reference="liver",
        body=ZoneProfile(nc=(-30, -16), ap=(-38, -20), pvp=(-62, -38), delayed=(-50, -28)),
        rim=ZoneProfile(nc=(-18, -8), ap=(10, 32), pvp=(-8, 10), delayed=(-14, 4)),
        rim_fraction=(0.18, 0.32),
    ),
    LesionClass.FNH: ClassProfile(
        diameter_mm=(12, 60), count=(1, 1), irregularity=(0.05, 0.11), elongation=(0.75, 1.0),
        texture_hu=(1, 4), edge_mm=(0.5, 1.0), reference="liver",
        body=ZoneProfile(nc=(-10, 0), ap=(40, 80), pvp=(-2, 10), delayed=(-4, 5)),
        scar=ZoneProfile(nc=(-26, -14), ap=(-30, -12), pvp=(-22, -8), delayed=(8, 22)),
        scar_prob=0.75, scar_min_diameter=20, scar_fraction=(0.12, 0.2),
    ),
    LesionClass.HEM: ClassProfile(
        diameter_mm=(8, 60), count=(1, 2), irregularity=(0.02, 0.06), elongation=(0.75, 1.0),
        texture_hu=(1, 4), edge_mm=(0.4, 0.8), reference="blood",
        body=ZoneProfile(nc=(30, 40), ap=(30, 40), pvp=(30, 40), delayed=(30, 40)),
        fill=ZoneProfile(nc=(0, 0), ap=(0.2, 0.32), pvp=(0.5, 0.72), delayed=(0.85, 1.05)),
        flash_prob=0.25, nodules=(4, 8), blood_fraction=(0.85, 1.0),
    ),
    LesionClass.CYST: ClassProfile(
        diameter_mm=(5, 50), count=(1, 3), irregularity=(0.0, 0.025), elongation=(0.85, 1.0),
        texture_hu=(0, 1.5), edge_mm=(0.15, 0.3), reference="water",
        body=ZoneProfile(nc=(-4, 14), ap=(0, 0), pvp=(0, 0), delayed=(0, 0)),
    ),
}


def _same_all_phases(values: PhaseValues) -> PhaseValues:
    return PhaseValues(values.nc, values.nc, values.nc, values.nc)


def _unit(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v) or 1.0
    return (float(v[0]), float(v[1]), float(v[2]))


def sample_appearance(cls: LesionClass, diameter_mm: float, rng: np.random.Generator) -> LesionAppearance:
    p = PROFILES[cls]
    body = p.body.sample(rng)
    if cls in (LesionClass.CYST, LesionClass.HEM):
        body = _same_all_phases(body)  # unenhanced content keeps its density
    kwargs: dict[str, object] = {}
    if p.rim is not None:
        kwargs.update(rim=p.rim.sample(rng), rim_fraction=float(rng.uniform(*p.rim_fraction)))
    if p.capsule is not None and diameter_mm >= 15.0 and rng.random() < p.capsule_prob:
        thickness = min(float(rng.uniform(*p.capsule_mm)), 0.05 * diameter_mm + 0.3)
        kwargs.update(capsule=p.capsule.sample(rng), capsule_mm=thickness)
    if p.scar is not None and diameter_mm >= p.scar_min_diameter and rng.random() < p.scar_prob:
        kwargs.update(scar=p.scar.sample(rng), scar_fraction=float(rng.uniform(*p.scar_fraction)),
                      scar_spokes=int(rng.integers(3, 7)))
    if p.necrosis_prob and diameter_mm >= p.necrosis_min_diameter and rng.random() < p.necrosis_prob:
        kwargs.update(necrosis_hu=float(rng.uniform(*p.necrosis_hu)),
                      necrosis_fraction=float(rng.uniform(*p.necrosis_fraction)))
    if p.fill is not None:
        fill = p.fill.sample(rng)
        if diameter_mm < 20 and rng.random() < p.flash_prob:
            fill = PhaseValues(0.0, 1.1, 1.1, 1.1)
        kwargs.update(fill=fill, nodules=tuple(_unit(rng) for _ in range(int(rng.integers(*p.nodules) + 1))),
                      blood_fraction=float(rng.uniform(*p.blood_fraction)))
    return LesionAppearance(reference=p.reference, body=body, texture_hu=float(rng.uniform(*p.texture_hu)),
                            edge_mm=float(rng.uniform(*p.edge_mm)), **kwargs)  # type: ignore[arg-type]


def sample_shape(cls: LesionClass, radius_mm: float, rng: np.random.Generator
                 ) -> tuple[tuple[float, float, float], float, tuple[Wave, ...], tuple[Wave, ...]]:
    """Semi-axes, in-plane angle, boundary waves and texture waves of one lesion."""
    p = PROFILES[cls]
    e1, e2 = (float(rng.uniform(*p.elongation)) for _ in range(2))
    radii = (radius_mm, radius_mm * e1, radius_mm * e2)
    radii = tuple(float(r) for r in rng.permutation(radii))  # type: ignore[assignment]
    irregular = float(rng.uniform(*p.irregularity))
    shape = tuple(Wave(_unit(rng), float(rng.uniform(1.5, 4.5)), float(rng.uniform(0, 2 * math.pi)),
                       irregular * float(rng.uniform(0.4, 1.0))) for _ in range(4))
    texture = tuple(Wave(_unit(rng), float(2 * math.pi / rng.uniform(0.3, 0.8) / max(radius_mm, 3.0)),
                         float(rng.uniform(0, 2 * math.pi)), 1.0) for _ in range(6))
    return radii, float(rng.uniform(0, math.pi)), shape, texture  # type: ignore[return-value]


def sample_diameter(cls: LesionClass, rng: np.random.Generator) -> float:
    lo, hi = PROFILES[cls].diameter_mm
    # log-uniform: small lesions are more common than large ones
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_count(cls: LesionClass, rng: np.random.Generator) -> int:
    lo, hi = PROFILES[cls].count
    return int(rng.integers(lo, hi + 1))
