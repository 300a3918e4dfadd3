"""Classifier input: 224x224 crops around detections, and LiLNet's test-time transform.

Classifier transform (``docs/lilnet-reference.md`` A3, LiLNet's test transform): 8-bit grey
crop -> RGB by three copies -> ``Resize((224, 224))`` bilinear, aspect not kept -> ``ToTensor``
[0, 1] -> ``Normalize((0.5,)*3, (0.5,)*3)`` -> [-1, 1]. ``to_classifier_input`` does this for a
whole batch with torch ops instead of a PIL loop:

- Resize uses ``F.interpolate(bilinear, align_corners=False, antialias=True)``. That is PIL's
  bilinear: same half-pixel sampling grid, and with ``antialias`` the same widened triangle
  filter when shrinking (without it, shrinking would alias where PIL does not). PIL works on
  8-bit images, so its result is rounded to integers; we round to uint8 too before scaling.
  The remaining difference is PIL's fixed-point arithmetic: at most 1 grey level (tested).
- Crops from ``crop_around_box`` are already 224x224, so the resize is the identity for them
  (as it was for LiLNet's pre-cropped 224 training images).

Phase-pair input (our extension, for classifiers whose manifest says ``mode = "phase-pair"``):
``to_phase_pair_input`` takes (AP, PVP) crops of one lesion slice and fills the three channels
with AP, PVP and their mean instead of three copies of one phase, so the network sees wash-in and
washout in one sample. The same pair given one phase twice is bit-identical to the grey input.

Crop geometry (not in the LiLNet code; the paper only says "224x224, centred on the ROI").
Our choices:

- Centre: the box centre ``((x1+x2)/2, (y1+y2)/2)`` in pixel coordinates (``x1, y1`` are the
  top-left pixel edges, as YOLO reports them). The crop origin is rounded to the nearest
  pixel, so the crop centre is within half a pixel of the box centre.
- Scale: the crop is taken at native resolution (a 224x224 window, the scale the model was
  trained on) whenever the box plus a margin fits in it. Otherwise a square of side
  ``ceil(max(w, h) * (1 + margin))`` is cut around the same centre and shrunk to 224, so the
  whole lesion is visible. ``margin`` defaults to 0.1 (5 % of the box side on each side):
  enough context that the lesion edge is not on the crop border, small enough that the
  lesion still fills most of the crop. The rule is continuous in the box size: the zoom-out
  starts once the box exceeds 224 / 1.1 ~ 204 px, so there is no jump in scale at 224.
- Image edges: the window is *not* shifted to stay inside the image (that would move the
  lesion off centre); the part outside is filled with ``pad_value``, default 0, the bottom of
  the W400/L40 window (air/black), which is what lies outside a body on a windowed slice.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CLASSIFIER_SIZE = 224
NORMALISE_MEAN = (0.5, 0.5, 0.5)
NORMALISE_STD = (0.5, 0.5, 0.5)
DEFAULT_MARGIN = 0.1
DEFAULT_PAD_VALUE = 0  # bottom of the W400/L40 window: air / black
GREY, PHASE_PAIR = "grey", "phase-pair"  # classifier manifest [task.input] mode; published LiLNet weights are grey


class PreprocessError(ValueError):
    """An image, crop or box that the classifier preprocessing cannot use."""


def resize_u8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [B, H, W] grey images to [B, size, size] uint8, PIL-like (see module doc)."""
    if images.ndim != 3:
        raise PreprocessError(f"resize_u8 expects [B, H, W], got {tuple(images.shape)}")
    if tuple(images.shape[1:]) == (size, size):
        return images.to(torch.uint8)
    resized = F.interpolate(
        images.to(torch.float32).unsqueeze(1), size=(size, size), mode="bilinear",
        align_corners=False, antialias=True,
    ).squeeze(1)
    # PIL resizes 8-bit images to 8-bit output: round like it does.
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _as_batch(crops: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(crops, np.ndarray):
        if crops.ndim == 2:
            return [crops]
        if crops.ndim == 3:
            return list(crops)
        raise PreprocessError(f"expected [H, W] or [B, H, W] grey crops, got shape {crops.shape}")
    batch = list(crops)
    for i, crop in enumerate(batch):
        if not isinstance(crop, np.ndarray) or crop.ndim != 2:
            raise PreprocessError(f"crop {i} is not a 2-D numpy array")
    return batch


def to_classifier_input(
    crops: np.ndarray | Sequence[np.ndarray],
    size: int = CLASSIFIER_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 grey crops ([H, W], [B, H, W] or a list of [H, W]) -> float32 [B, 3, size, size] in [-1, 1].

    Crops of one shape are resized together; a list of mixed shapes is resized per shape.
    """
    batch = _as_batch(crops)
    if not batch:
        raise PreprocessError("no crops given")
    for i, crop in enumerate(batch):
        if crop.dtype != np.uint8:
            raise PreprocessError(f"crop {i} has dtype {crop.dtype}, expected uint8 (a windowed 8-bit image)")
        if min(crop.shape) < 1:
            raise PreprocessError(f"crop {i} is empty: shape {crop.shape}")
    out = torch.empty(len(batch), size, size, dtype=torch.uint8, device=device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, crop in enumerate(batch):
        by_shape.setdefault(crop.shape, []).append(i)
    for indices in by_shape.values():
        stacked = torch.from_numpy(np.stack([batch[i] for i in indices])).to(device)
        out[indices] = resize_u8(stacked, size)
    return _normalise(out.unsqueeze(1).expand(-1, 3, -1, -1))  # grey -> RGB by three copies


def to_phase_pair_input(pairs: np.ndarray, size: int = CLASSIFIER_SIZE,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 phase pairs [B, 2, H, W] (AP, PVP at one place) -> float32 [B, 3, size, size] in [-1, 1].

    Channels: AP, PVP, and their mean (rounded). A lesion seen in one phase only is given as that
    crop twice, which makes the input exactly the grey three-copy input of ``to_classifier_input``.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 4 or pairs.shape[1] != 2 or pairs.dtype != np.uint8 or min(pairs.shape) < 1:
        raise PreprocessError(f"phase pairs must be uint8 [B, 2, H, W], got {pairs.dtype} {pairs.shape}")
    b = pairs.shape[0]
    flat = torch.from_numpy(np.ascontiguousarray(pairs).reshape(b * 2, *pairs.shape[2:])).to(device)
    two = resize_u8(flat, size).view(b, 2, size, size).to(torch.int16)
    mean = (two.sum(dim=1, keepdim=True) + 1).div_(2, rounding_mode="floor")  # round half up
    return _normalise(torch.cat([two, mean], dim=1))


def classifier_input(crops: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """Grey crops [B, H, W] or phase pairs [B, 2, H, W] -> the model input (the two functions above)."""
    crops = np.asarray(crops)
    return to_phase_pair_input(crops, device=device) if crops.ndim == 4 else to_classifier_input(crops, device=device)


def zoom_centre(crops_u8: np.ndarray, window: int, size: int = CLASSIFIER_SIZE) -> np.ndarray:
    """The central ``window`` x ``window`` of crops [M,size,size] or pairs [M,2,size,size], enlarged back to ``size``.

    ``crop_around_box`` centres the box within half a pixel, so this is a window around the detection
    at ``size / window`` times native scale: a lesion of 8 px, which falls inside one cell of a ResNet's
    stride-32 layer4 at native scale, covers several cells. The lesion verifier uses it (manifest
    ``[input] zoom_window``); the classifiers see native-scale crops.
    """
    crops = np.asarray(crops_u8)
    if crops.dtype != np.uint8 or crops.ndim not in (3, 4) or crops.shape[-2:] != (size, size):
        raise PreprocessError(f"zoom_centre expects uint8 [M,(2,){size},{size}], got {crops.dtype} {crops.shape}")
    if not 1 <= window <= size:
        raise PreprocessError(f"zoom window {window} must be 1-{size} px")
    lo = (size - window) // 2
    centre = np.ascontiguousarray(crops[..., lo:lo + window, lo:lo + window])
    flat = torch.from_numpy(centre.reshape(-1, window, window))
    return resize_u8(flat, size).numpy().reshape(crops.shape)


def _normalise(rgb_u8: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] 0-255 -> ToTensor scaling to [0, 1], then Normalize(mean, std) -> [-1, 1]."""
    scaled = rgb_u8.to(torch.float32).div_(255.0)
    mean = torch.tensor(NORMALISE_MEAN, dtype=torch.float32, device=scaled.device).view(1, 3, 1, 1)
    std = torch.tensor(NORMALISE_STD, dtype=torch.float32, device=scaled.device).view(1, 3, 1, 1)
    return ((scaled - mean) / std).contiguous()


def crop_side(box_w: float, box_h: float, size: int = CLASSIFIER_SIZE, margin: float = DEFAULT_MARGIN) -> int:
    """Side of the square cut from the image: ``size`` if the box plus margin fits, else larger."""
    needed = max(box_w, box_h) * (1.0 + margin)
    # Tolerance so that a box of exactly size/(1+margin) is not pushed to size+1 by rounding.
    return size if needed <= size + 1e-6 else math.ceil(needed - 1e-6)


def crop_around_box(
    image_u8: np.ndarray,
    box_xyxy: Sequence[float] | np.ndarray,
    size: int = CLASSIFIER_SIZE,
    margin: float = DEFAULT_MARGIN,
    pad_value: int = DEFAULT_PAD_VALUE,
) -> np.ndarray:
    """A ``size`` x ``size`` uint8 crop centred on the box centre (geometry in the module doc)."""
    if not isinstance(image_u8, np.ndarray) or image_u8.ndim != 2 or image_u8.dtype != np.uint8:
        raise PreprocessError("image_u8 must be a 2-D uint8 numpy array [H, W]")
    if size < 1 or margin < 0 or not 0 <= pad_value <= 255:
        raise PreprocessError(f"invalid crop settings size={size} margin={margin} pad_value={pad_value}")
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise PreprocessError(f"box must be 4 finite numbers x1, y1, x2, y2, got {box_xyxy!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise PreprocessError(f"box has no area: {box.tolist()}")
    img_h, img_w = image_u8.shape
    if x2 <= 0 or y2 <= 0 or x1 >= img_w or y1 >= img_h:
        raise PreprocessError(f"box {box.tolist()} lies outside the {img_w}x{img_h} image")

    side = crop_side(x2 - x1, y2 - y1, size, margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    # Nearest-pixel origin (floor(v + 0.5), not Python's round-half-to-even).
    left = math.floor(cx - side / 2.0 + 0.5)
    top = math.floor(cy - side / 2.0 + 0.5)

    window = np.full((side, side), pad_value, dtype=np.uint8)
    src_x0, src_y0 = max(left, 0), max(top, 0)
    src_x1, src_y1 = min(left + side, img_w), min(top + side, img_h)
    if src_x1 > src_x0 and src_y1 > src_y0:
        window[src_y0 - top:src_y1 - top, src_x0 - left:src_x1 - left] = image_u8[src_y0:src_y1, src_x0:src_x1]
    if side == size:
        return window
    log.debug("event=crop_zoom_out box_w=%.1f box_h=%.1f side=%d size=%d", x2 - x1, y2 - y1, side, size)
    return resize_u8(torch.from_numpy(window).unsqueeze(0), size).squeeze(0).numpy()
