"""What every model loader shares: one error type for "these weights cannot be used"."""
from __future__ import annotations

from .classify.checkpoints import ModelLoadError as WeightsError, sha256_of

__all__ = ["WeightsError", "sha256_of"]
