"""Geometric primitives evaluated on a slice grid or on scattered points (numpy only).

A ``Canvas`` holds a label buffer and the coordinates of its samples. ``region`` returns the part
of the canvas inside a bounding box, as an index into the label buffer plus broadcastable x/y
coordinate arrays, so shapes are evaluated only where they can be: a grid canvas gives a view
(rows x columns), a point canvas gives the indices of the points in the box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .anatomy_spec import Blob, Segment, ZBlob


@dataclass
class Region:
    index: Any  # tuple of slices (grid) or an index array (points)
    x: np.ndarray
    y: np.ndarray


@dataclass
class Canvas:
    x: np.ndarray  # grid: 1D column coordinates; points: 1D point x
    y: np.ndarray  # grid: 1D row coordinates; points: 1D point y
    labels: np.ndarray
    is_grid: bool
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def grid(cls, x_axis: np.ndarray, y_axis: np.ndarray) -> Canvas:
        labels = np.zeros((len(y_axis), len(x_axis)), dtype=np.uint8)
        return cls(x_axis.astype(np.float32), y_axis.astype(np.float32), labels, True)

    @classmethod
    def points(cls, x: np.ndarray, y: np.ndarray) -> Canvas:
        return cls(np.asarray(x, np.float32), np.asarray(y, np.float32), np.zeros(len(x), np.uint8), False)

    def reset(self) -> None:
        self.labels.fill(0)

    def full(self) -> Region:
        if self.is_grid:
            return Region((slice(None), slice(None)), self.x[None, :], self.y[:, None])
        return Region(np.arange(len(self.x)), self.x, self.y)

    def region(self, x0: float, x1: float, y0: float, y1: float) -> Region | None:
        if self.is_grid:
            c0, c1 = np.searchsorted(self.x, x0), np.searchsorted(self.x, x1, side="right")
            r0, r1 = np.searchsorted(self.y, y0), np.searchsorted(self.y, y1, side="right")
            if c1 <= c0 or r1 <= r0:
                return None
            return Region((slice(r0, r1), slice(c0, c1)), self.x[None, c0:c1], self.y[r0:r1, None])
        sel = np.nonzero((self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1))[0]
        if sel.size == 0:
            return None
        return Region(sel, self.x[sel], self.y[sel])

    def around(self, cx: float, cy: float, r: float) -> Region | None:
        return self.region(cx - r, cx + r, cy - r, cy + r)

    def get(self, reg: Region) -> np.ndarray:
        return self.labels[reg.index]

    def paint(self, reg: Region, inside: np.ndarray, tissue: int) -> None:
        """Set ``tissue`` where ``inside`` (broadcast to the region) is true."""
        shape = self.labels[reg.index].shape
        mask = np.broadcast_to(inside, shape)
        if self.is_grid:
            self.labels[reg.index][mask] = tissue
        else:
            self.labels[reg.index[mask]] = tissue


def harmonic_factor(theta: np.ndarray, harmonics: tuple[tuple[int, float, float], ...], shift: float = 0.0) -> np.ndarray:
    out = np.ones_like(theta)
    for k, amp, phase in harmonics:
        out += amp * np.cos(k * theta + phase + k * shift)
    return out


def blob_rho(blob: Blob, x: np.ndarray, y: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0,
             shift: float = 0.0) -> np.ndarray:
    """Normalised radius of a superellipse (<= 1 inside), with boundary harmonics."""
    c, s = math.cos(blob.angle), math.sin(blob.angle)
    px, py = x - (blob.cx + dx), y - (blob.cy + dy)
    u = (c * px + s * py) / (blob.rx * scale)
    v = (-s * px + c * py) / (blob.ry * scale)
    if blob.n == 2.0:
        rho = np.sqrt(u * u + v * v)
    else:
        rho = (np.abs(u) ** blob.n + np.abs(v) ** blob.n) ** (1.0 / blob.n)
    if blob.harmonics:
        rho = rho / harmonic_factor(np.arctan2(v, u), blob.harmonics, shift)
    return rho


def blob_extent(blob: Blob, scale: float = 1.0) -> float:
    bulge = 1.0 + sum(abs(a) for _, a, _ in blob.harmonics)
    r = math.hypot(blob.rx, blob.ry) if blob.n > 2.0 else max(blob.rx, blob.ry)
    return r * scale * bulge + 1.0


def zblob_at(zb: ZBlob, z: float) -> tuple[float, float, float] | None:
    """(scale, dx, dy) of a z-dependent blob at ``z``, or None outside its extent."""
    if not zb.z_lo < z < zb.z_hi:
        return None
    t = (z - zb.z_lo) / (zb.z_hi - zb.z_lo)
    scale = math.sin(math.pi * t) ** zb.taper
    if scale < 0.05:
        return None
    dz = z - zb.z_lo
    return scale, zb.drift[0] * dz, zb.drift[1] * dz


def zblob_region(canvas: Canvas, zb: ZBlob, z: float) -> tuple[Region, np.ndarray, float] | None:
    """Region and normalised radius of a z-blob on this slice (None if absent)."""
    at = zblob_at(zb, z)
    if at is None:
        return None
    scale, dx, dy = at
    reg = canvas.around(zb.blob.cx + dx, zb.blob.cy + dy, blob_extent(zb.blob, scale))
    if reg is None:
        return None
    return reg, blob_rho(zb.blob, reg.x, reg.y, scale, dx, dy), scale


def segment_distance(seg: Segment, canvas: Canvas, z: float) -> tuple[Region, np.ndarray] | None:
    """Region and 3D distance (mm) from its samples (at height z) to a capsule's axis."""
    (x0, y0, z0), (x1, y1, z1) = seg.p0, seg.p1
    r = seg.radius
    dzs = z1 - z0
    if abs(dzs) > 1e-6:
        ta, tb = sorted(((z - r - z0) / dzs, (z + r - z0) / dzs))
        ta, tb = max(ta, 0.0), min(tb, 1.0)
        if ta > tb:
            return None
    else:
        if abs(z - z0) > r:
            return None
        ta, tb = 0.0, 1.0
    xa, xb = x0 + ta * (x1 - x0), x0 + tb * (x1 - x0)
    ya, yb = y0 + ta * (y1 - y0), y0 + tb * (y1 - y0)
    reg = canvas.region(min(xa, xb) - r, max(xa, xb) + r, min(ya, yb) - r, max(ya, yb) + r)
    if reg is None:
        return None
    d = np.array([x1 - x0, y1 - y0, dzs], dtype=np.float32)
    dd = float(d @ d) or 1.0
    px, py, pz = reg.x - x0, reg.y - y0, np.float32(z - z0)
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
    ex, ey, ez = px - t * d[0], py - t * d[1], pz - t * d[2]
    return reg, np.sqrt(ex * ex + ey * ey + ez * ez)


def wave_field(waves: tuple[tuple[float, float, float, float], ...], x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    """Sum of cosines of 3D wave vectors (kx, ky, kz, phase) in mm^-1: a smooth random texture."""
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), dtype=np.float32)
    for kx, ky, kz, ph in waves:
        out += np.cos(kx * x + ky * y + (kz * z + ph)).astype(np.float32)
    return out / max(1.0, math.sqrt(len(waves) / 2.0))


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """A fixed 128x128 smooth random field (unit std), tiled over space by ``mottle``."""
    from .imaging import gaussian_blur

    table = gaussian_blur(np.random.default_rng(20240611).standard_normal((128, 128)).astype(np.float32), 1.5)
    return table / table.std()


def mottle(x: np.ndarray, y: np.ndarray, z: float, offset: float) -> np.ndarray:
    """An irregular smooth field (~3-4 mm blobs) for bowel content; ``offset`` decorrelates structures."""
    table = _noise_table()
    i = (np.floor(y * 0.9 + 0.37 * z + offset).astype(np.int64)) % 128
    j = (np.floor(x * 0.9 - 0.23 * z + 1.7 * offset).astype(np.int64)) % 128
    return table[i, j]
