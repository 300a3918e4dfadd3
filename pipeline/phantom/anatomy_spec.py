"""Random anatomy parameters of one case (organ shapes, sizes, positions) in patient mm.

The axial plane is centred on the body (x=0 midline, y=0 body centre; LPS: +x patient left,
+y posterior); z is absolute (mm). Organs are superellipses whose radii follow a profile along z,
with low-order boundary harmonics; vessels are chains of 3D capsules (round tubes).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tissues import Tissue

Harmonic = tuple[int, float, float]  # (order k, relative amplitude, phase)
ZToT = Callable[[float], float]  # liver fraction (0 inferior tip .. 1 dome) -> z in mm


@dataclass(frozen=True)
class Blob:
    """A superellipse cross-section: centre, radii, exponent, rotation, boundary harmonics."""

    cx: float
    cy: float
    rx: float
    ry: float
    n: float
    angle: float
    harmonics: tuple[Harmonic, ...] = ()


@dataclass(frozen=True)
class ZBlob:
    """A blob present between ``z_lo`` and ``z_hi`` whose radii follow a rounded profile."""

    blob: Blob
    z_lo: float
    z_hi: float
    taper: float = 0.5  # exponent of the end rounding; small values give blunt ends
    drift: tuple[float, float] = (0.0, 0.0)  # centre shift (mm) per mm of z above z_lo


@dataclass(frozen=True)
class Segment:
    """A round tube between two 3D points."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    tissue: Tissue
    over: Tissue | None = None  # painted only over this tissue (intrahepatic / mesenteric branches)


@dataclass(frozen=True)
class BodySpec:
    a: float  # lateral half width
    b_ant: float
    b_post: float
    n: float
    fat_mm: float
    fat_post_mm: float
    muscle_mm: float
    harmonics: tuple[Harmonic, ...]
    z_rate: float  # relative size change per mm of z
    z_ref: float
    table_gap_mm: float

    @property
    def cavity(self) -> tuple[float, float, float]:
        """(half width, anterior depth, posterior depth) of the muscle wall's inner boundary."""
        return (self.a - 1.3 * self.fat_mm - self.muscle_mm,
                self.b_ant - self.fat_mm - 1.4 * self.muscle_mm,
                self.b_post - self.fat_post_mm - self.muscle_mm)


@dataclass(frozen=True)
class SpineSpec:
    y_vb: float  # centre of the vertebral body
    rx: float
    ry: float
    cortex_mm: float
    canal_r: float
    level_period: float
    level_phase: float
    disc_mm: float
    paraspinal_r: tuple[float, float]
    rib_angles: tuple[float, ...]
    rib_phases: tuple[float, ...]
    rib_z_rate: float
    rib_z_lo: float


@dataclass(frozen=True)
class LiverSpec:
    z_lo: float
    z_hi: float
    right: Blob
    left: Blob
    caudate: Blob
    t_peak: float
    s_bottom: float
    left_t_lo: float
    caudate_t: tuple[float, float]
    harmonic_drift: float  # phase change of boundary harmonics per mm of z
    texture_hu: float


@dataclass(frozen=True)
class KidneySpec:
    body: ZBlob
    cortex_frac: float
    sinus_frac: float
    hilum_angle: float


@dataclass(frozen=True)
class BowelLoop:
    path: Segment  # radius is the outer radius, tissue is ignored
    wall_mm: float
    content: str  # "gas", "fluid", "level" (air-fluid level), "feces"


@dataclass(frozen=True)
class AnatomySpec:
    body: BodySpec
    spine: SpineSpec
    liver: LiverSpec
    spleen: ZBlob
    spleen_waves: tuple[tuple[float, float, float, float], ...]  # (kx, ky, kz, phase)
    kidneys: tuple[KidneySpec, KidneySpec]
    stomach: ZBlob
    stomach_gas: float  # fraction of the lumen (anterior part) filled with gas
    pancreas: ZBlob
    gallbladder: ZBlob | None
    bowel: tuple[BowelLoop, ...]
    vessels: tuple[Segment, ...]
    lung_z_lo: float
    psoas_z_hi: float


def _harmonics(rng: np.random.Generator, amp: float, orders: tuple[int, ...] = (2, 3, 4, 5)) -> tuple[Harmonic, ...]:
    return tuple((k, float(rng.uniform(0.3, 1.0) * amp / k ** 0.5), float(rng.uniform(0, 2 * math.pi)))
                 for k in orders)


def _rib_angles(rng: np.random.Generator) -> tuple[float, ...]:
    """Angles of rib cross-sections around the wall, avoiding the anterior and posterior midline."""
    out = []
    for centre in (-2.3, -1.0, -0.2, 0.5, 1.1, 2.05, 2.65, 3.4):
        out.append(centre + float(rng.uniform(-0.15, 0.15)))
    return tuple(out)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator, z_centre: float) -> AnatomySpec:
    """Draw one case's anatomy; the liver is centred on ``z_centre`` along z."""
    body = BodySpec(
        a=_u(rng, 150, 188), b_ant=_u(rng, 105, 135), b_post=_u(rng, 100, 118), n=_u(rng, 2.0, 2.6),
        fat_mm=_u(rng, 8, 36), fat_post_mm=_u(rng, 6, 28), muscle_mm=_u(rng, 7, 13),
        harmonics=_harmonics(rng, 0.02), z_rate=_u(rng, -0.0008, 0.0008), z_ref=z_centre,
        table_gap_mm=_u(rng, 4, 15),
    )
    ca, cb_ant, cb_post = body.cavity
    y_vb = body.b_post - body.fat_post_mm - _u(rng, 62, 72)
    vb_ry = _u(rng, 14, 18)
    spine = SpineSpec(
        y_vb=y_vb, rx=_u(rng, 17, 22), ry=vb_ry, cortex_mm=_u(rng, 1.5, 2.5), canal_r=_u(rng, 7.5, 9.5),
        level_period=_u(rng, 29, 35), level_phase=_u(rng, 0, 35), disc_mm=_u(rng, 6, 9),
        paraspinal_r=(_u(rng, 27, 36), _u(rng, 22, 30)),
        rib_angles=_rib_angles(rng),
        rib_phases=tuple(_u(rng, 0, 1) for _ in range(12)),
        rib_z_rate=_u(rng, 0.002, 0.005),
        rib_z_lo=z_centre - _u(rng, 10, 40),
    )

    length = _u(rng, 140, 185)
    z_lo, z_hi = z_centre - length / 2, z_centre + length / 2
    # Right lobe: its lateral and posterior edges reach near the cavity wall.
    rx = min(_u(rng, 55, 72), 0.5 * ca)
    ry = min(_u(rng, 75, 95), 0.45 * (cb_ant + cb_post))
    right = Blob(cx=-(ca - _u(rng, 2, 8) - rx), cy=_u(rng, cb_post - 4, cb_post + 2) - ry, rx=rx, ry=ry,
                 n=_u(rng, 2.0, 2.6), angle=_u(rng, -0.15, 0.15), harmonics=_harmonics(rng, 0.05))
    left = Blob(cx=_u(rng, 0, 30), cy=-cb_ant + _u(rng, 30, 45), rx=_u(rng, 50, 75), ry=_u(rng, 25, 38),
                n=_u(rng, 1.8, 2.3), angle=_u(rng, 0.05, 0.35), harmonics=_harmonics(rng, 0.06))
    ivc_x, ivc_y = -_u(rng, 18, 28), y_vb - vb_ry - _u(rng, 6, 10)
    caudate = Blob(cx=ivc_x + _u(rng, 4, 12), cy=ivc_y - _u(rng, 18, 26), rx=_u(rng, 16, 24), ry=_u(rng, 11, 16),
                   n=2.0, angle=_u(rng, -0.4, 0.4), harmonics=_harmonics(rng, 0.04))
    liver = LiverSpec(z_lo=z_lo, z_hi=z_hi, right=right, left=left, caudate=caudate,
                      t_peak=_u(rng, 0.55, 0.75), s_bottom=_u(rng, 0.25, 0.45), left_t_lo=_u(rng, 0.38, 0.52),
                      caudate_t=(_u(rng, 0.32, 0.4), _u(rng, 0.62, 0.72)), harmonic_drift=_u(rng, 0.005, 0.015),
                      texture_hu=_u(rng, 1.0, 4.0))

    def t2z(t: float) -> float:
        return z_lo + t * length

    phi = _u(rng, 0.55, 0.85)  # angle of the spleen on the left posterolateral wall
    s_rx, s_ry = _u(rng, 42, 60), _u(rng, 18, 28)
    spleen = ZBlob(Blob(cx=(ca - s_ry - 3) * math.cos(phi), cy=(cb_post - s_ry - 3) * math.sin(phi),
                        rx=s_rx, ry=s_ry, n=2.0, angle=phi + math.pi / 2 + _u(rng, -0.2, 0.2),
                        harmonics=_harmonics(rng, 0.07)),
                   z_lo=t2z(_u(rng, 0.3, 0.45)), z_hi=t2z(_u(rng, 0.85, 0.98)), taper=0.6,
                   drift=(_u(rng, -0.1, 0.1), _u(rng, -0.15, 0.05)))
    spleen_waves = tuple((float(k[0]), float(k[1]), float(k[2]), _u(rng, 0, 2 * math.pi))
                         for k in rng.normal(0, 0.12, (4, 3)))

    kidneys = []
    for side in (-1, 1):  # right kidney (x<0) sits lower
        top = t2z(_u(rng, 0.28, 0.4)) + (12 if side > 0 else 0)
        klen = _u(rng, 95, 120)
        kx = side * min(_u(rng, 58, 75), ca - 32)
        kidneys.append(KidneySpec(
            body=ZBlob(Blob(cx=kx, cy=y_vb + _u(rng, -2, 10), rx=_u(rng, 27, 34), ry=_u(rng, 21, 27), n=2.0,
                            angle=side * _u(rng, 0.3, 0.7), harmonics=_harmonics(rng, 0.02)),
                       z_lo=top - klen, z_hi=top, taper=0.45, drift=(side * _u(rng, -0.1, 0.05), 0.0)),
            cortex_frac=_u(rng, 0.68, 0.78), sinus_frac=_u(rng, 0.35, 0.45),
            hilum_angle=math.pi + side * _u(rng, 0.6, 0.9) * (1 if side < 0 else -1)))

    stomach = ZBlob(Blob(cx=_u(rng, 45, 70), cy=-cb_ant + _u(rng, 45, 65), rx=_u(rng, 30, 45), ry=_u(rng, 22, 32),
                         n=2.0, angle=_u(rng, -0.6, 0.2), harmonics=_harmonics(rng, 0.06)),
                    z_lo=t2z(_u(rng, 0.4, 0.55)), z_hi=t2z(_u(rng, 0.9, 1.05)), taper=0.5,
                    drift=(_u(rng, -0.15, 0.05), _u(rng, -0.1, 0.1)))
    pancreas = ZBlob(Blob(cx=_u(rng, 15, 40), cy=y_vb - vb_ry - _u(rng, 38, 50), rx=_u(rng, 45, 60), ry=_u(rng, 9, 13),
                          n=2.0, angle=_u(rng, -0.5, -0.2), harmonics=_harmonics(rng, 0.08)),
                     z_lo=t2z(_u(rng, 0.25, 0.32)), z_hi=t2z(_u(rng, 0.42, 0.5)), taper=0.5)
    gallbladder = None
    if rng.random() < 0.7:
        gallbladder = ZBlob(Blob(cx=right.cx + _u(rng, 20, 40), cy=right.cy - ry * _u(rng, 0.45, 0.65),
                                 rx=_u(rng, 14, 22), ry=_u(rng, 11, 16), n=2.0, angle=_u(rng, -0.8, 0.8)),
                            z_lo=t2z(_u(rng, 0.02, 0.12)), z_hi=t2z(_u(rng, 0.3, 0.42)), taper=0.6)

    ao_x, ao_r = _u(rng, 6, 18), _u(rng, 10, 13.5)
    ao_y = y_vb - vb_ry - ao_r - _u(rng, 1, 4)
    top, bottom = z_hi + 60, z_lo - 80
    pv_start = (ivc_x - _u(rng, 2, 8), ivc_y - _u(rng, 35, 45), t2z(_u(rng, 0.35, 0.45)))
    confluence = (_u(rng, 0, 10), ao_y - _u(rng, 25, 35), t2z(_u(rng, 0.28, 0.34)))
    hilum_r = (right.cx + _u(rng, 10, 30), right.cy + _u(rng, -20, 0), t2z(_u(rng, 0.5, 0.58)))
    hilum_l = (left.cx - _u(rng, 0, 20), left.cy + _u(rng, -5, 10), t2z(_u(rng, 0.55, 0.65)))
    vessels: list[Segment] = [
        Segment((ao_x, ao_y, bottom), (ao_x + _u(rng, -4, 4), ao_y + _u(rng, -4, 4), top), ao_r, Tissue.AORTA),
        Segment((ivc_x + _u(rng, -3, 3), ivc_y + 3, bottom), (ivc_x, ivc_y, t2z(0.5)), _u(rng, 9, 12), Tissue.IVC),
        Segment((ivc_x, ivc_y, t2z(0.5)), (ivc_x + _u(rng, 5, 15), ivc_y - _u(rng, 0, 8), top), _u(rng, 10, 13), Tissue.IVC),
        Segment(confluence, pv_start, _u(rng, 6.5, 8.5), Tissue.PORTAL_VEIN),
        Segment(pv_start, hilum_r, _u(rng, 5, 6.5), Tissue.PORTAL_VEIN),
        Segment(pv_start, hilum_l, _u(rng, 4, 5.5), Tissue.PORTAL_VEIN),
        Segment(confluence, (spleen.blob.cx - 20, spleen.blob.cy - 10, confluence[2] + _u(rng, 10, 25)),
                _u(rng, 4, 5.5), Tissue.PORTAL_VEIN),
    ]
    vessels += _liver_vessels(rng, right, left, hilum_r, hilum_l, (ivc_x + 5, ivc_y - 2), t2z)
    # Mesenteric vessels: small dots in the fat anterior to the aorta, below the liver hilum.
    for _ in range(int(rng.integers(10, 20))):
        x0, y0, z0 = _u(rng, -50, 70), ao_y - _u(rng, 20, 90), _u(rng, z_lo - 80, t2z(0.35))
        p1 = (x0 + _u(rng, -25, 25), y0 + _u(rng, -25, 10), z0 + _u(rng, 20, 70))
        tissue = Tissue.PORTAL_VEIN if rng.random() < 0.6 else Tissue.AORTA
        vessels.append(Segment((x0, y0, z0), p1, _u(rng, 1.2, 2.8), tissue, over=Tissue.FAT))

    bowel = _bowel(rng, ca, cb_ant, cb_post, z_lo, t2z)

    return AnatomySpec(
        body=body, spine=spine, liver=liver, spleen=spleen, spleen_waves=spleen_waves,
        kidneys=(kidneys[0], kidneys[1]), stomach=stomach, stomach_gas=_u(rng, 0.0, 0.5), pancreas=pancreas,
        gallbladder=gallbladder, bowel=tuple(bowel), vessels=tuple(vessels),
        lung_z_lo=t2z(_u(rng, 0.72, 0.85)), psoas_z_hi=t2z(_u(rng, 0.05, 0.25)),
    )


def _liver_vessels(rng: np.random.Generator, right: Blob, left: Blob, hilum_r: tuple[float, float, float],
                   hilum_l: tuple[float, float, float], hv_root: tuple[float, float], t2z: ZToT) -> list[Segment]:
    """Portal branches fanning out from the hilum and hepatic veins converging on the IVC top.

    Branches are painted only over liver, so targets may lie a little outside it.
    """
    out: list[Segment] = []

    def target(blob: Blob, t_lo: float, t_hi: float) -> tuple[float, float, float]:
        return (blob.cx + _u(rng, -0.85, 0.85) * blob.rx, blob.cy + _u(rng, -0.85, 0.85) * blob.ry,
                t2z(_u(rng, t_lo, t_hi)))

    def branch(start: tuple[float, float, float], end: tuple[float, float, float], radius: float, tissue: Tissue,
               depth: int) -> None:
        out.append(Segment(start, end, radius, tissue, over=Tissue.LIVER))
        if depth == 0 or radius < 1.6:
            return
        for _ in range(int(rng.integers(1, 3))):
            f = _u(rng, 0.3, 0.8)
            mid = tuple(a + f * (b - a) for a, b in zip(start, end))
            tip = (mid[0] + _u(rng, -40, 40), mid[1] + _u(rng, -40, 40), mid[2] + _u(rng, -30, 30))
            branch(mid, tip, radius * _u(rng, 0.5, 0.7), tissue, depth - 1)  # type: ignore[arg-type]

    for _ in range(int(rng.integers(3, 5))):
        branch(hilum_r, target(right, 0.2, 0.8), _u(rng, 2.8, 4.2), Tissue.PORTAL_BRANCH, 2)
    for _ in range(int(rng.integers(2, 4))):
        branch(hilum_l, target(left, 0.5, 0.9), _u(rng, 2.2, 3.5), Tissue.PORTAL_BRANCH, 1)
    top = (hv_root[0], hv_root[1], t2z(_u(rng, 0.86, 0.93)))
    for ang, blob in ((_u(rng, -2.9, -2.4), right), (_u(rng, -2.0, -1.5), right), (_u(rng, -1.1, -0.6), left)):
        reach = _u(rng, 60, 100)
        end = (top[0] + reach * math.cos(ang), top[1] + reach * math.sin(ang), top[2] - _u(rng, 50, 100))
        branch(top, end, _u(rng, 3.5, 5.5), Tissue.HEPATIC_VEIN, 2)
    return out


def _bowel(rng: np.random.Generator, ca: float, cb_ant: float, cb_post: float, z_lo: float,
           t2z: ZToT) -> list[BowelLoop]:
    """Small bowel loops in the lower anterior abdomen, and the colon frame (ascending, transverse, descending)."""
    loops: list[BowelLoop] = []
    for _ in range(int(rng.integers(12, 22))):
        zc = _u(rng, z_lo - 70, t2z(0.4))
        x0, y0 = _u(rng, -0.45 * ca, 0.7 * ca), _u(rng, -cb_ant + 15, 0.15 * cb_post)
        p0 = (x0, y0, zc - _u(rng, 10, 35))
        p1 = (x0 + _u(rng, -45, 45), y0 + _u(rng, -30, 30), zc + _u(rng, 10, 35))
        content = str(rng.choice(["gas", "fluid", "level", "feces"], p=[0.12, 0.55, 0.13, 0.2]))
        loops.append(BowelLoop(Segment(p0, p1, _u(rng, 8, 16), Tissue.BOWEL_WALL), _u(rng, 1.5, 3.0), content))
    flex_r = (-ca + _u(rng, 28, 40), -cb_ant * _u(rng, 0.2, 0.45), t2z(_u(rng, 0.15, 0.3)))
    flex_l = (ca - _u(rng, 28, 40), -cb_ant * _u(rng, 0.1, 0.4), t2z(_u(rng, 0.4, 0.6)))
    mid = (_u(rng, -20, 20), -cb_ant + _u(rng, 28, 45), t2z(_u(rng, 0.05, 0.25)))
    paths = [((flex_r[0] + _u(rng, -5, 10), flex_r[1] + _u(rng, 10, 30), z_lo - 150), flex_r),
             (flex_r, mid), (mid, flex_l),
             (flex_l, (flex_l[0] - _u(rng, -5, 10), flex_l[1] + _u(rng, 20, 50), z_lo - 150))]
    for p0, p1 in paths:
        content = str(rng.choice(["gas", "feces", "level"], p=[0.3, 0.5, 0.2]))
        loops.append(BowelLoop(Segment(p0, p1, _u(rng, 15, 24), Tissue.BOWEL_WALL), _u(rng, 1.5, 2.5), content))
    return loops
