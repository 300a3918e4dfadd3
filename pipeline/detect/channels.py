"""How windowed CT slices become the detector's three input channels (manifest ``[input] channels``).

- ``RGB`` (the published LiLNet detector): the slice itself in all three channels.
- ``adjacent-slices`` (2.5D): channels R, G, B carry slices k-1, k, k+1 of the same series, so the
  network sees whether a spot continues along z (a vessel does, noise does not, a small lesion
  spans one or two slices). The first and last slice repeat themselves for the missing neighbour.

The stack must be one series in its sorted slice order with regular spacing, which
``pipeline.series`` guarantees. Channel order is given here in RGB; ultralytics reads numpy
input as BGR (``LesionDetector`` reverses it) and PNG training images as RGB.
"""
from __future__ import annotations

import numpy as np

GREY = "RGB"
ADJACENT = "adjacent-slices"
MODES = (GREY, ADJACENT)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown detector input channels {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def slice_rgb(volume_u8: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Input image of slice ``k`` of a windowed [N, H, W] uint8 stack: [H, W, 3] uint8, RGB order."""
    if check_mode(mode) == GREY:
        return np.repeat(volume_u8[k][..., None], 3, axis=2)
    last = volume_u8.shape[0] - 1
    return np.stack([volume_u8[max(k - 1, 0)], volume_u8[k], volume_u8[min(k + 1, last)]], axis=2)
