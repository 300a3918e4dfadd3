"""How windowed CT slices become the detector's three input channels (manifest ``[input] channels``).

- ``RGB`` (the published LiLNet detector): the slice itself in all three channels.
- ``adjacent-slices`` (2.5D): channels R, G, B carry slices k-1, k, k+1 of the same series, so the
  network sees whether a spot continues along z (a vessel does, noise does not, a small lesion
  spans one or two slices). The first and last slice repeat themselves for the missing neighbour.
- ``phase-pair``: G carries the slice, R and B the same position in the study's other contrast phase
  (AP for a PVP series and vice versa, resampled onto this series' grid by ``pipeline.detect.partner``),
  so a lesion with contrast in both phases is seen through two independent noise draws. Without a
  partner (one phase only, or no shared Frame of Reference) the slice fills all three channels.

The stack must be one series in its sorted slice order with regular spacing, which
``pipeline.series`` guarantees. The neighbours are the slices nearest to ``neighbour_mm`` away
(the manifest's training slice spacing), so a thin-slice series shows the network the same z
context as the thick slices it was trained on. Channel order is given here in RGB; ultralytics
reads numpy input as BGR (``LesionDetector`` reverses it) and PNG training images as RGB.
"""
from __future__ import annotations

import numpy as np

GREY = "RGB"
ADJACENT = "adjacent-slices"
PHASE_PAIR = "phase-pair"
MODES = (GREY, ADJACENT, PHASE_PAIR)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown detector input channels {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def neighbour_offset(slice_spacing_mm: float | None, neighbour_mm: float | None) -> int:
    """Slices from the centre to each neighbour: the whole number nearest to ``neighbour_mm``, at least 1
    (1 when either distance is unknown)."""
    if not neighbour_mm or not slice_spacing_mm or slice_spacing_mm <= 0:
        return 1
    return max(1, round(neighbour_mm / slice_spacing_mm))


def slice_rgb(volume_u8: np.ndarray, k: int, mode: str, offset: int = 1,
              partner_u8: np.ndarray | None = None) -> np.ndarray:
    """Input image of slice ``k`` of a windowed [N, H, W] uint8 stack: [H, W, 3] uint8, RGB order;
    ``offset`` slices to each neighbour in ``adjacent-slices`` mode; ``partner_u8`` (same shape) is the
    other phase on this grid in ``phase-pair`` mode (None: the slice stands in for it)."""
    mode = check_mode(mode)
    if mode == GREY or (mode == PHASE_PAIR and partner_u8 is None):
        return np.repeat(volume_u8[k][..., None], 3, axis=2)
    if mode == PHASE_PAIR:
        return np.stack([partner_u8[k], volume_u8[k], partner_u8[k]], axis=2)
    last = volume_u8.shape[0] - 1
    return np.stack([volume_u8[max(k - offset, 0)], volume_u8[k], volume_u8[min(k + offset, last)]], axis=2)
