"""Grad-CAM (Selvaraju et al. 2017) for LiLNet, with forward/backward hooks; no grad-cam package.

The layer is ``model.layer4``: the last convolutional stage, whose 7x7 maps feed both the masked
``fc`` head and the self-distillation head, so it is the most class-specific spatial evidence in
the network (layer3 feeds only the auxiliary ``fc3`` head and is less class-selective). Its output
is taken before any quadrant masking, so the map covers the whole crop. The score differentiated
is the AG logit of the target class (``model.aggregated_logits``), the number behind the decision.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CAM_SIZE = 224


class HeatmapError(ValueError):
    """Bad model, input or class index for Grad-CAM."""


def grad_cam(model: nn.Module, crop: Tensor, target_class: int, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM of ``target_class`` for one normalised crop [1,3,224,224] (or [3,224,224]).

    Returns a float32 numpy [224, 224] map in [0, 1] (all zeros when no positive evidence).
    """
    x = crop.unsqueeze(0) if crop.ndim == 3 else crop
    if x.ndim != 4 or x.shape[0] != 1 or tuple(x.shape[1:]) != (3, CAM_SIZE, CAM_SIZE):
        raise HeatmapError(f"crop must be [1,3,{CAM_SIZE},{CAM_SIZE}], got {tuple(crop.shape)}")
    layer = layer if layer is not None else getattr(model, "layer4", None)
    if layer is None:
        raise HeatmapError("model has no layer4; pass the layer explicitly")
    n_classes = getattr(model, "n_classes", None)
    if n_classes is not None and not 0 <= target_class < n_classes:
        raise HeatmapError(f"target_class {target_class} outside 0..{n_classes - 1}")

    store: dict[str, Tensor] = {}

    def forward_hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
        store["act"] = out

    def backward_hook(_m: nn.Module, _gin: tuple, gout: tuple) -> None:
        store["grad"] = gout[0]

    was_training = model.training
    model.eval()
    handles = [layer.register_forward_hook(forward_hook), layer.register_full_backward_hook(backward_hook)]
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # full backward hooks need a grad-requiring input
            logits = model.aggregated_logits(x) if hasattr(model, "aggregated_logits") else model(x)
            model.zero_grad(set_to_none=True)
            logits[0, target_class].backward()
        act, grad = store["act"].detach(), store["grad"].detach()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # [1, C, 1, 1]
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))  # [1, 1, h, w]
    cam = F.interpolate(cam, size=(CAM_SIZE, CAM_SIZE), mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    if peak > 0:
        cam = cam / peak
    return cam.float().cpu().clamp_(0.0, 1.0).numpy()
