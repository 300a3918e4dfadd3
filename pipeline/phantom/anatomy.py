"""Paint one axial slice of a case's anatomy into a tissue label map (``Tissue`` values).

Painting order matters (later wins): body layers, table, lungs, ribs, spine and back muscles,
bowel, stomach, pancreas, liver, gallbladder, kidneys, spleen, vessels. Intrahepatic vessel
branches are painted only over liver. The same code serves the image grid and the scattered
points used to check lesion placement, so the placement test and the pixels always agree.
"""
from __future__ import annotations

import math

import numpy as np

from .anatomy_spec import AnatomySpec, Blob, BodySpec, KidneySpec, LiverSpec
from .shapes import Canvas, Region, blob_extent, blob_rho, harmonic_factor, mottle, segment_distance, zblob_region
from .tissues import Tissue

_BODY_LAYERS = ("outer", "fat", "cavity")


def _body_radii(body: BodySpec, layer: str) -> tuple[float, float, float]:
    if layer == "outer":
        return body.a, body.b_ant, body.b_post
    if layer == "fat":
        return body.a - 1.3 * body.fat_mm, body.b_ant - body.fat_mm, body.b_post - body.fat_post_mm
    return body.cavity


def _body_rho_unit(body: BodySpec, layer: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, b_ant, b_post = _body_radii(body, layer)
    u = np.abs(x / a)
    v = np.abs(y / np.where(y < 0, b_ant, b_post))
    rho = (u ** body.n + v ** body.n) ** (1.0 / body.n)
    if body.harmonics:
        rho = rho / harmonic_factor(np.arctan2(y, x), body.harmonics)
    return rho.astype(np.float32)


def body_rho(canvas: Canvas, body: BodySpec, layer: str, reg: Region) -> np.ndarray:
    """Normalised radius of a body layer at scale 1 (cached for the full grid)."""
    if canvas.is_grid:
        key = f"body:{layer}"
        if key not in canvas.cache:
            full = canvas.full()
            canvas.cache[key] = _body_rho_unit(body, layer, full.x, full.y)
        return canvas.cache[key][reg.index]
    return _body_rho_unit(body, layer, reg.x, reg.y)


def body_scale(body: BodySpec, z: float) -> float:
    return 1.0 + body.z_rate * (z - body.z_ref)


def _angle(canvas: Canvas, reg: Region) -> np.ndarray:
    if canvas.is_grid:
        if "angle" not in canvas.cache:
            full = canvas.full()
            canvas.cache["angle"] = np.arctan2(full.y, full.x).astype(np.float32)
        return canvas.cache["angle"][reg.index]
    return np.arctan2(reg.y, reg.x)


def paint_slice(spec: AnatomySpec, z: float, canvas: Canvas, liver_only: bool = False) -> None:
    """Fill ``canvas.labels`` with the tissue labels of the axial slice at height ``z``.

    ``liver_only`` skips every structure painted under the liver or that cannot change whether a
    point is liver-like (used by lesion placement; the liver-like mask is the same either way).
    """
    canvas.reset()
    full = canvas.full()
    s = body_scale(spec.body, z)
    rho_cav = body_rho(canvas, spec.body, "cavity", full)
    if not liver_only:
        rho_out = body_rho(canvas, spec.body, "outer", full)
        rho_fat = body_rho(canvas, spec.body, "fat", full)
        canvas.paint(full, rho_out <= s, Tissue.FAT)
        canvas.paint(full, (rho_out <= s) & (rho_out > s * (1 - 2.0 / spec.body.b_ant)), Tissue.SKIN)
        canvas.paint(full, rho_fat <= s, Tissue.MUSCLE)
    cavity = rho_cav <= s
    canvas.paint(full, cavity, Tissue.FAT)
    if not liver_only:
        _paint_under_liver(spec, z, s, canvas, cavity, rho_cav)
    _paint_liver(spec.liver, z, canvas, cavity, s)
    if spec.gallbladder is not None:
        hit = zblob_region(canvas, spec.gallbladder, z)
        if hit:
            canvas.paint(hit[0], hit[1] <= 1.0, Tissue.GALLBLADDER)
    for kidney in spec.kidneys:
        _paint_kidney(kidney, z, canvas)
    hit = zblob_region(canvas, spec.spleen, z)
    if hit:
        canvas.paint(hit[0], hit[1] <= 1.0, Tissue.SPLEEN)
    for seg in spec.vessels:
        if liver_only and seg.over is not None:
            continue  # branches over liver stay liver-like; mesenteric ones never touch it
        got = segment_distance(seg, canvas, z)
        if got is None:
            continue
        reg, dist = got
        inside = dist <= seg.radius
        if seg.over is not None:
            inside = inside & (canvas.get(reg) == seg.over)
        canvas.paint(reg, inside, seg.tissue)


def _paint_under_liver(spec: AnatomySpec, z: float, s: float, canvas: Canvas, cavity: np.ndarray,
                       rho_cav: np.ndarray) -> None:
    full = canvas.full()
    _paint_table(spec.body, s, canvas)
    if z > spec.lung_z_lo:
        # costophrenic recesses: a crescent along the posterior and lateral wall, deepest posteriorly
        width = min(0.45, 0.06 + (z - spec.lung_z_lo) / 120.0)
        reach = np.clip(np.sin(_angle(canvas, full)) + 0.35, 0.0, 1.0)
        canvas.paint(full, cavity & (rho_cav > s * (1.0 - width * reach)), Tissue.LUNG)
    _paint_ribs(spec, z, s, canvas)
    _paint_spine(spec, z, canvas)
    _paint_bowel(spec, z, canvas, cavity)
    _paint_stomach(spec, z, canvas, cavity)
    hit = zblob_region(canvas, spec.pancreas, z)
    if hit:
        canvas.paint(hit[0], hit[1] <= 1.0, Tissue.PANCREAS)


def _paint_table(body: BodySpec, s: float, canvas: Canvas) -> None:
    top = body.b_post * s + body.table_gap_mm
    for y0, thick in ((top, 2.5), (top + 28.0, 3.5)):
        reg = canvas.region(-0.95 * body.a, 0.95 * body.a, y0, y0 + thick)
        if reg is not None:
            canvas.paint(reg, np.ones((1, 1), bool) if canvas.is_grid else np.ones(len(reg.x), bool), Tissue.TABLE)


def _ring_point(body: BodySpec, angle: float, s: float) -> tuple[float, float]:
    af, bfa, bfp = (body.a - 1.3 * body.fat_mm, body.b_ant - body.fat_mm, body.b_post - body.fat_post_mm)
    ca, cba, cbp = body.cavity
    c, sn = math.cos(angle), math.sin(angle)
    rx = 0.5 * (af + ca)
    ry = 0.5 * ((bfa + cba) if sn < 0 else (bfp + cbp))
    # point on a superellipse along direction (c, sn)
    n = body.n
    r = 1.0 / ((abs(c) / rx) ** n + (abs(sn) / ry) ** n) ** (1.0 / n)
    return r * c * s, r * sn * s


def _paint_ribs(spec: AnatomySpec, z: float, s: float, canvas: Canvas) -> None:
    sp = spec.spine
    if z < sp.rib_z_lo:
        return
    for i, base in enumerate(sp.rib_angles):
        if ((z / 28.0) + sp.rib_phases[i]) % 1.0 > 0.45:
            continue
        angle = base + sp.rib_z_rate * (z - sp.rib_z_lo) * (1 if math.cos(base) > 0 else -1)
        cx, cy = _ring_point(spec.body, angle, s)
        rib = Blob(cx=cx, cy=cy, rx=7.0, ry=4.5, n=2.0, angle=angle + math.pi / 2)
        reg = canvas.around(cx, cy, 8.0)
        if reg is None:
            continue
        rho = blob_rho(rib, reg.x, reg.y)
        canvas.paint(reg, rho <= 1.0, Tissue.BONE_CORTEX)
        canvas.paint(reg, rho <= 0.6, Tissue.BONE_MARROW)


def _paint_ellipse(canvas: Canvas, blob: Blob, tissue: Tissue, cortex: float = 0.0) -> None:
    reg = canvas.around(blob.cx, blob.cy, blob_extent(blob))
    if reg is None:
        return
    rho = blob_rho(blob, reg.x, reg.y)
    if cortex > 0:
        canvas.paint(reg, rho <= 1.0, Tissue.BONE_CORTEX)
        canvas.paint(reg, rho <= 1.0 - cortex / min(blob.rx, blob.ry), tissue)
    else:
        canvas.paint(reg, rho <= 1.0, tissue)


def _paint_spine(spec: AnatomySpec, z: float, canvas: Canvas) -> None:
    sp = spec.spine
    y_canal = sp.y_vb + sp.ry + sp.canal_r + 1.5
    for side in (-1, 1):
        _paint_ellipse(canvas, Blob(side * (sp.canal_r + 19), y_canal + 16, sp.paraspinal_r[0], sp.paraspinal_r[1],
                                    2.0, side * 0.2), Tissue.MUSCLE)
        if z < spec.psoas_z_hi:
            r = min(24.0, 7.0 + 0.18 * (spec.psoas_z_hi - z))
            _paint_ellipse(canvas, Blob(side * (sp.rx + r * 0.8), sp.y_vb - 2, r, r * 0.8, 2.0, side * 0.5),
                           Tissue.MUSCLE)
    level = (z - sp.level_phase) % sp.level_period
    vb = Blob(0.0, sp.y_vb, sp.rx, sp.ry, 2.0, 0.0)
    if level < sp.disc_mm:
        _paint_ellipse(canvas, vb, Tissue.DISC)
    else:
        _paint_ellipse(canvas, vb, Tissue.BONE_MARROW, cortex=sp.cortex_mm)
    _paint_ellipse(canvas, Blob(0.0, y_canal, sp.canal_r + 5, sp.canal_r + 4, 2.0, 0.0), Tissue.BONE_MARROW, cortex=1.5)
    _paint_ellipse(canvas, Blob(0.0, y_canal + sp.canal_r + 16, 4.0, 15.0, 2.0, 0.0), Tissue.BONE_MARROW, cortex=1.2)
    if level > sp.level_period * 0.55:
        for side in (-1, 1):
            _paint_ellipse(canvas, Blob(side * (sp.canal_r + 16), y_canal - 1, 15.0, 4.5, 2.0, side * -0.25),
                           Tissue.BONE_MARROW, cortex=1.2)
    _paint_ellipse(canvas, Blob(0.0, y_canal, sp.canal_r, sp.canal_r * 0.85, 2.0, 0.0), Tissue.CSF)


def _paint_bowel(spec: AnatomySpec, z: float, canvas: Canvas, cavity: np.ndarray) -> None:
    for loop in spec.bowel:
        got = segment_distance(loop.path, canvas, z)
        if got is None:
            continue
        reg, dist = got
        current = canvas.get(reg)
        in_cav = cavity[reg.index] & ((current == Tissue.FAT) | (current == Tissue.BOWEL_WALL)
                                      | (current == Tissue.BOWEL_CONTENT) | (current == Tissue.GAS))
        r = loop.path.radius
        outer = (dist <= r) & in_cav
        lumen = (dist <= r - loop.wall_mm) & in_cav
        canvas.paint(reg, outer, Tissue.BOWEL_WALL)
        if loop.content == "gas":
            canvas.paint(reg, lumen, Tissue.GAS)
        elif loop.content == "fluid":
            canvas.paint(reg, lumen, Tissue.BOWEL_CONTENT)
        elif loop.content == "level":
            canvas.paint(reg, lumen, Tissue.BOWEL_CONTENT)
            cy = loop.path.p0[1] + 0.5 * (loop.path.p1[1] - loop.path.p0[1])
            canvas.paint(reg, lumen & (reg.y < cy - 0.2 * r), Tissue.GAS)
        else:
            canvas.paint(reg, lumen, Tissue.BOWEL_CONTENT)
            bubbles = mottle(reg.x, reg.y, z, 3.1 * loop.path.p0[0] + loop.path.p0[1]) > 0.9
            canvas.paint(reg, lumen & bubbles, Tissue.GAS)


def _paint_stomach(spec: AnatomySpec, z: float, canvas: Canvas, cavity: np.ndarray) -> None:
    hit = zblob_region(canvas, spec.stomach, z)
    if hit is None:
        return
    reg, rho, scale = hit
    in_cav = cavity[reg.index]
    blob = spec.stomach.blob
    wall = 4.0 / (min(blob.rx, blob.ry) * scale)
    canvas.paint(reg, (rho <= 1.0) & in_cav, Tissue.STOMACH_WALL)
    lumen = (rho <= 1.0 - wall) & in_cav
    canvas.paint(reg, lumen, Tissue.BOWEL_CONTENT)
    level = blob.cy - blob.ry * scale * (1.0 - 2.0 * spec.stomach_gas)
    canvas.paint(reg, lumen & (reg.y < level), Tissue.GAS)


def liver_profile(liver: LiverSpec, z: float) -> tuple[float, float, float]:
    """Scales of the right lobe, left lobe and caudate at height z (0 where absent)."""
    t = (z - liver.z_lo) / (liver.z_hi - liver.z_lo)
    if not 0.0 < t < 1.0:
        return 0.0, 0.0, 0.0
    if t >= liver.t_peak:
        right = math.sqrt(max(0.0, 1.0 - ((t - liver.t_peak) / (1.0 - liver.t_peak)) ** 2))
    else:
        right = liver.s_bottom + (1.0 - liver.s_bottom) * (t / liver.t_peak) ** 0.7
    left = 0.0
    if t > liver.left_t_lo:
        left = math.sin(math.pi * (t - liver.left_t_lo) / (1.0 - liver.left_t_lo)) ** 0.6
    lo, hi = liver.caudate_t
    caudate = math.sin(math.pi * (t - lo) / (hi - lo)) ** 0.5 if lo < t < hi else 0.0
    return right, left, caudate


def _paint_liver(liver: LiverSpec, z: float, canvas: Canvas, cavity: np.ndarray, s: float) -> None:
    right, left, caudate = liver_profile(liver, z)
    shift = liver.harmonic_drift * (z - liver.z_lo)
    for blob, scale in ((liver.right, right), (liver.left, left), (liver.caudate, caudate)):
        if scale < 0.08:
            continue
        # As the right lobe shrinks it keeps to the lateral wall.
        dx = (1.0 - scale) * blob.rx * 0.6 * (-1.0 if blob is liver.right else 0.0)
        dy = (1.0 - scale) * blob.ry * 0.25 * (1.0 if blob is liver.right else 0.0)
        reg = canvas.around(blob.cx + dx, blob.cy + dy, blob_extent(blob, scale))
        if reg is None:
            continue
        rho = blob_rho(blob, reg.x, reg.y, scale, dx, dy, shift)
        canvas.paint(reg, (rho <= 1.0) & cavity[reg.index], Tissue.LIVER)


def _paint_kidney(kidney: KidneySpec, z: float, canvas: Canvas) -> None:
    hit = zblob_region(canvas, kidney.body, z)
    if hit is None:
        return
    reg, rho, scale = hit
    blob = kidney.body.blob
    canvas.paint(reg, rho <= 1.0, Tissue.KIDNEY_CORTEX)
    c, s_ = math.cos(blob.angle), math.sin(blob.angle)
    px, py = reg.x - blob.cx, reg.y - blob.cy
    theta = np.arctan2(-s_ * px + c * py, c * px + s_ * py)
    pyramids = np.cos(7.0 * theta) > -0.3
    canvas.paint(reg, (rho <= kidney.cortex_frac) & pyramids, Tissue.KIDNEY_MEDULLA)
    hx = blob.cx + math.cos(kidney.hilum_angle) * blob.rx * scale * 0.55
    hy = blob.cy + math.sin(kidney.hilum_angle) * blob.ry * scale * 0.55
    sinus_r = kidney.sinus_frac * min(blob.rx, blob.ry) * scale
    d2 = (reg.x - hx) ** 2 + (reg.y - hy) ** 2
    sinus = (d2 <= sinus_r ** 2) & (rho <= 1.0)
    canvas.paint(reg, sinus, Tissue.FAT)
    mid = 0.5 * (kidney.body.z_lo + kidney.body.z_hi)
    if abs(z - mid) < 0.25 * (kidney.body.z_hi - kidney.body.z_lo):
        canvas.paint(reg, sinus & (d2 <= (0.55 * sinus_r) ** 2), Tissue.RENAL_PELVIS)


def liver_like(labels: np.ndarray) -> np.ndarray:
    """Liver parenchyma and its intrahepatic vessels (where lesions may be drawn)."""
    return (labels == Tissue.LIVER) | (labels == Tissue.HEPATIC_VEIN) | (labels == Tissue.PORTAL_BRANCH)
