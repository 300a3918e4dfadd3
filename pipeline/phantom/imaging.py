"""Image formation: separable Gaussian blur (scanner PSF) and correlated CT noise, numpy only."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def gaussian_kernel(sigma_px: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma_px, 1e-3)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    r = len(kernel) // 2
    pad = [(0, 0)] * img.ndim
    pad[axis] = (r, r)
    padded = np.pad(img, pad, mode="edge")
    out = np.zeros_like(img)
    n = img.shape[axis]
    for i, w in enumerate(kernel):
        sl = [slice(None)] * img.ndim
        sl[axis] = slice(i, i + n)
        out += w * padded[tuple(sl)]
    return out


def gaussian_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a 2D float32 image (edge-replicated borders)."""
    if sigma_px <= 0.05:
        return img
    k = gaussian_kernel(round(float(sigma_px), 3))
    return _blur_axis(_blur_axis(img, k, 0), k, 1)


def ct_noise(rng: np.random.Generator, shape: tuple[int, int], std_hu: float, grain_px: float) -> np.ndarray:
    """Gaussian noise with a fine grain (white noise low-passed by ``grain_px``), scaled to ``std_hu``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if grain_px <= 0.05:
        return white * np.float32(std_hu)
    k = gaussian_kernel(round(float(grain_px), 3))
    gain = float((k.astype(np.float64) ** 2).sum())  # variance kept per axis
    return gaussian_blur(white, grain_px) * np.float32(std_hu / gain)
