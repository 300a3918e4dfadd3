"""Stored pixel values to HU (the Modality LUT's rescale).

Classic CT carries Rescale Slope and Intercept at the top level of each instance. Enhanced CT (one
multi-frame instance per series) carries them per frame, in the Pixel Value Transformation Sequence
of its per-frame or shared functional groups; read only at the top level, a typical intercept of
-1024 would be lost and every HU value come out 1024 too high.
"""
from __future__ import annotations

import math

import numpy as np

from .header_values import functional_group

IDENTITY = (1.0, 0.0)


def _params(item, default: tuple[float, float]) -> tuple[float, float]:
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    slope = float(slope) if slope not in (None, "") else 0.0
    intercept = float(intercept) if intercept not in (None, "") else default[1]
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"rescale slope/intercept not finite ({slope}, {intercept})")
    return slope or default[0], intercept  # a slope of 0 would erase the image: taken as absent


def _frame_params(ds, index: int, top: tuple[float, float]) -> tuple[float, float]:
    """Per-frame group first, then the shared group, then the top level."""
    item = functional_group(ds, "PixelValueTransformationSequence", index)
    return _params(item, top) if item is not None else top


def to_hu(ds, pixels: np.ndarray) -> np.ndarray:
    """HU of decoded pixels: [rows, cols] for one frame, [frames, rows, cols] for a multi-frame instance."""
    pixels = np.asarray(pixels, dtype=np.float32)
    top = _params(ds, IDENTITY)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return pixels * top[0] + top[1]
    frames = pixels if pixels.ndim == 3 else pixels[None]
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        slope, intercept = _frame_params(ds, i, top)
        out[i] = frame * slope + intercept
    return out if pixels.ndim == 3 else out[0]
