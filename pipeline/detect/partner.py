"""The other contrast phase on this series' grid: the partner channels of a ``phase-pair`` detector.

Each pixel of the target series takes the nearest voxel of the source series at the same patient
coordinates (both series must share one Frame of Reference, which the caller checks). Nearest
neighbour, not interpolation: the detector was trained on unresampled pixels, and an interpolated
partner would carry less noise than the slice beside it. Where the source does not reach (beyond
its slab by more than one slice spacing, or outside its field of view) the target's own pixel
stands in, which is what the detector sees for a study with one phase. So it does for a whole
series whose planes are not parallel to the source's (gantry tilt, an oblique reformat): one source
slice per target slice would then be the wrong slice away from the centre.
"""
from __future__ import annotations

import numpy as np

from pipeline.series import Geometry

# planes within 0.8 degrees: 2.8 mm out of plane 200 mm from the centre, about half a 5-mm slice
PARALLEL_COS = 1.0 - 1e-4


def parallel_planes(a: Geometry, b: Geometry) -> bool:
    return abs(float(a.normal @ b.normal)) >= PARALLEL_COS


def _nearest(x: np.ndarray) -> np.ndarray:
    """Round half up, a hair early: a target grid half a pixel off the source's then takes every
    source column once, where ``np.rint``'s half-to-even and float noise skip some and repeat others."""
    return np.floor(x + 0.5 + 1e-6).astype(np.int64)


def partner_volume(target: Geometry, target_u8: np.ndarray, source: Geometry, source_u8: np.ndarray) -> np.ndarray:
    """``source_u8`` [S, h, w] resampled onto the grid of ``target_u8`` [N, H, W]: [N, H, W] uint8."""
    n, rows, cols = target_u8.shape
    out = target_u8.copy()
    if not parallel_planes(target, source):
        return out
    src_pos = source.positions
    src_spacing = max(abs(source.slice_spacing), 1e-3)
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = np.arange(cols, dtype=np.float64)[None, :]
    dr, dc = target.pixel_spacing
    a = source.column_direction / source.pixel_spacing[0]  # patient offset -> source row
    b = source.row_direction / source.pixel_spacing[1]  # patient offset -> source column
    u, v = target.row_direction, target.column_direction
    # source (row, column) of target pixel (r, c) is affine in (r, c); only the offset changes per slice
    row_r, row_c = r * dr * (v @ a), c * dc * (u @ a)
    col_r, col_c = r * dr * (v @ b), c * dc * (u @ b)
    cached: tuple[tuple[float, float], tuple[np.ndarray, ...]] | None = None
    for k in range(n):
        centre = target.to_patient(k, (rows - 1) / 2.0, (cols - 1) / 2.0)
        along = float(np.dot(centre, source.normal))
        i = int(np.argmin(np.abs(src_pos - along)))
        if abs(src_pos[i] - along) > src_spacing:
            continue
        d0 = target.origins[k] - source.origins[i]
        offset = (round(float(d0 @ a), 6), round(float(d0 @ b), 6))
        if cached is None or cached[0] != offset:  # parallel series in register: computed once per study
            src_r = _nearest(offset[0] + row_r + row_c)
            src_c = _nearest(offset[1] + col_r + col_c)
            inside = (src_r >= 0) & (src_r < source_u8.shape[1]) & (src_c >= 0) & (src_c < source_u8.shape[2])
            cached = offset, (inside, src_r[inside], src_c[inside])
        inside, src_r, src_c = cached[1]
        out[k][inside] = source_u8[i][src_r, src_c]
    return out
