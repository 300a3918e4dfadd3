"""Place lesions inside the liver: centres drawn from liver points, whole lesion checked.

The check paints the anatomy at scattered points with the same code that paints the image, so a
lesion accepted here lies in liver parenchyma (or its intrahepatic vessels) on every slice.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .anatomy import liver_like, paint_slice
from .anatomy_spec import AnatomySpec
from .shapes import Canvas

log = logging.getLogger(__name__)

_N_DIRS = 48


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_DIRS = _fibonacci_sphere(_N_DIRS)


def liver_at(anatomy: AnatomySpec, points: np.ndarray) -> np.ndarray:
    """Whether each (x, y, z) point lies in liver parenchyma or its intrahepatic vessels."""
    out = np.zeros(len(points), dtype=bool)
    zs = np.round(points[:, 2], 2)
    for z in np.unique(zs):
        sel = np.nonzero(zs == z)[0]
        canvas = Canvas.points(points[sel, 0], points[sel, 1])
        paint_slice(anatomy, float(z), canvas, liver_only=True)
        out[sel] = liver_like(canvas.labels)
    return out


def lesion_fits(anatomy: AnatomySpec, centre: np.ndarray, radius: float, margin: float = 3.0) -> bool:
    """True if a sphere of ``radius`` + ``margin`` around ``centre`` is all liver (sampled)."""
    pts = [centre[None, :]]
    for scale in (radius + margin, 0.55 * radius):
        p = centre[None, :] + _DIRS * scale
        p[:, 2] = np.round(p[:, 2] / 2.0) * 2.0  # 2 mm z levels (within the margin): fewer slices to paint
        pts.append(p)
    return bool(np.all(liver_at(anatomy, np.concatenate(pts))))


def find_centre(anatomy: AnatomySpec, rng: np.random.Generator, radius: float, z_range: tuple[float, float],
                taken: list[tuple[np.ndarray, float]], tries: int = 60) -> np.ndarray | None:
    """A lesion centre with the whole sphere inside liver, within z_range, apart from ``taken``."""
    body = anatomy.body
    ca, cb_ant, cb_post = body.cavity
    z_lo, z_hi = z_range
    if z_hi < z_lo:
        return None
    for _ in range(tries):
        z = float(rng.uniform(z_lo, z_hi))
        xs = rng.uniform(-ca, ca * 0.6, 64)
        ys = rng.uniform(-cb_ant, cb_post, 64)
        cand = np.stack([xs, ys, np.full(64, z)], axis=1)
        ok = np.nonzero(liver_at(anatomy, cand))[0]
        if ok.size == 0:
            continue
        c = cand[int(rng.choice(ok))]
        if any(np.linalg.norm(c - o) < radius + r + 3.0 for o, r in taken):
            continue
        if lesion_fits(anatomy, c, radius):
            return c
    return None
