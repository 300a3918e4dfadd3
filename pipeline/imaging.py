"""Display windowing shared by detection, classification and rendering.

LiLNet's inputs are 8-bit images of an abdominal window; W400/L40 (HU -160..240 -> 0..255) fits the
published demo images (lilnet-reference A3) and is what radiologists read liver CT at.
"""
from __future__ import annotations

import numpy as np

ABDOMEN_CENTER = 40.0
ABDOMEN_WIDTH = 400.0


def window_u8(hu: np.ndarray, center: float = ABDOMEN_CENTER, width: float = ABDOMEN_WIDTH) -> np.ndarray:
    """Map HU to uint8 with a linear window; values outside clip to 0 or 255."""
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
