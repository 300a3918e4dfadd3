"""Rasterise one lesion on one slice: its geometry fields once, then its HU for any time point.

A lesion is a perturbed ellipsoid: ``rho`` is its normalised radius (<= 1 inside) after a smooth
random radial perturbation. The appearance zones are functions of ``rho`` (rim, core, necrosis,
capsule by depth from the surface), of the in-plane angle (stellate scar spokes) and of the 3D
direction (haemangioma nodules). Only liver pixels are ever changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shapes import Canvas, Region
from .spec import LesionSpec


@dataclass
class LesionFields:
    """Phase-independent geometry of one lesion on one slice."""

    lesion: LesionSpec
    region: Region
    rho: np.ndarray
    depth_mm: np.ndarray  # approximate distance inside the surface
    theta: np.ndarray  # in-plane angle in the lesion frame
    texture: np.ndarray
    fill_order: np.ndarray | None  # haemangioma: when each voxel enhances (0 first .. 1 last)
    inside_liver: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return (self.rho <= 1.0) & self.inside_liver


def _smooth(x: np.ndarray, width: float) -> np.ndarray:
    """0..1 ramp centred on 0 with the given width."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def lesion_fields(lesion: LesionSpec, canvas: Canvas, z: float, liver: np.ndarray) -> LesionFields | None:
    """Fields of ``lesion`` on the slice at ``z``; ``liver`` is the slice's liver-like mask."""
    cx, cy, cz = lesion.centre_mm
    ext = lesion.max_extent_mm + 0.5
    dz = z - cz
    if abs(dz) >= ext:
        return None
    reg = canvas.around(cx, cy, math.sqrt(ext * ext - dz * dz) + 1.0)
    if reg is None:
        return None
    a, b, c = lesion.radii_mm
    co, si = math.cos(lesion.angle_rad), math.sin(lesion.angle_rad)
    px, py = reg.x - cx, reg.y - cy
    u = (co * px + si * py) / a
    v = (-si * px + co * py) / b
    w = np.float32(dz / c)
    r = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
    du, dv, dw = u / r, v / r, w / r
    pert = np.ones_like(r)
    for wave in lesion.shape_waves:
        n = wave.direction
        pert += wave.amplitude * np.cos(wave.frequency * (du * n[0] + dv * n[1] + dw * n[2]) + wave.phase)
    rho = (r / pert).astype(np.float32)
    if float(rho.min()) > 1.3:
        return None
    mean_r = (a * b * c) ** (1.0 / 3.0)
    tex = np.zeros_like(rho)
    for wave in lesion.texture_waves:
        n = wave.direction
        tex += np.cos(wave.frequency * (px * n[0] + py * n[1] + dz * n[2]) + wave.phase)
    tex *= np.float32(1.0 / math.sqrt(len(lesion.texture_waves) / 2.0)) if lesion.texture_waves else 1.0
    fill = None
    app = lesion.appearance
    if app.fill is not None and app.nodules:
        best = np.full_like(rho, -1.0)
        for n in app.nodules:
            np.maximum(best, du * n[0] + dv * n[1] + dw * n[2], out=best)
        ang = np.arccos(np.clip(best, -1.0, 1.0))
        g = np.clip(ang / 1.0, 0.0, 1.0)
        fill = 0.5 * np.clip(1.0 - rho, 0.0, 1.0) + 0.5 * g + 0.04 * tex
    inside = liver[reg.index] if canvas.is_grid else liver[reg.index]
    return LesionFields(lesion=lesion, region=reg, rho=rho, depth_mm=(1.0 - rho) * mean_r,
                        theta=np.arctan2(v, u), texture=tex, fill_order=fill, inside_liver=inside)


def lesion_hu(f: LesionFields, t_s: float, liver_hu: float, blood_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """HU inside the lesion at ``t_s`` s after bolus start, and the blending weight (0..1)."""
    app = f.lesion.appearance
    if app.reference == "liver":
        ref = liver_hu
    else:
        ref = 0.0
    value = np.full(f.rho.shape, ref + app.body.at(t_s), dtype=np.float32)
    if app.rim is not None:
        rim_w = _smooth(f.rho - (1.0 - app.rim_fraction), 0.12)
        value += rim_w * np.float32(app.rim.at(t_s) - app.body.at(t_s))
    if app.necrosis_hu is not None:
        nec_w = _smooth(app.necrosis_fraction * (1.0 + 0.2 * f.texture) - f.rho, 0.08)
        value = value * (1 - nec_w) + nec_w * np.float32(app.necrosis_hu)
    if app.scar is not None:
        spokes = np.maximum(np.cos(app.scar_spokes * f.theta + 0.7), 0.0) ** 6
        scar_r = app.scar_fraction * (1.0 + 2.2 * spokes)
        scar_w = _smooth(scar_r - f.rho, 0.05)
        value = value * (1 - scar_w) + scar_w * np.float32(ref + app.scar.at(t_s))
    if app.fill is not None and f.fill_order is not None:
        level = app.fill.at(t_s)
        enh_w = _smooth(level - f.fill_order, 0.05) if level > 0 else np.zeros_like(value)
        enhanced = np.float32(app.blood_fraction * blood_hu + (1 - app.blood_fraction) * (ref + app.body.nc))
        value = value * (1 - enh_w) + enh_w * enhanced
    if app.capsule is not None:
        cap_w = _smooth(app.capsule_mm - f.depth_mm, 0.6)
        value = value * (1 - cap_w) + cap_w * np.float32(ref + app.capsule.at(t_s))
    value += np.float32(app.texture_hu) * f.texture
    mean_r = float(np.mean(f.lesion.radii_mm))
    weight = _smooth((1.0 - f.rho) * mean_r / max(app.edge_mm, 0.05), 1.0) * f.inside_liver
    return value, weight.astype(np.float32)
