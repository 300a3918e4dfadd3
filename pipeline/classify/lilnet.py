"""LiLNet classification network, re-implemented to load the published ``Time_*.pth.tar`` weights.

Facts from ``docs/lilnet-reference.md`` Part A1 (no code copied from the LiLNet repository):

- backbone: a torchvision-style ResNet (attribute names ``conv1, bn1, relu, maxpool,
  layer1..layer4``, ``downsample.0`` conv / ``downsample.1`` BN), so a torchvision-layout
  state_dict fits key for key. The published models are resnet50 (Bottleneck [3,4,6,3]);
  resnet18/resnet34 (BasicBlock) are allowed for small demo weights, and so is a narrower
  base width (``width``: the conv1/layer1 channel count, 64 in torchvision; stages use
  width x 1, 2, 4, 8). The width is not stored anywhere but the tensors: the loader reads it
  from ``conv1.weight``.
- heads, on top of the backbone, for ``N`` classes (joint label count ``5N``):
  ``fc3 = Linear(C3, 5N)`` on masked layer3 features through ``AvgPool2d(14)``;
  ``fc_SD = Linear(C4, N)`` (self-distillation, unmasked layer4, optional: absent in the
  older ``2fc`` checkpoints); ``fc_ens = Linear(C4, 1024)`` then ``fc = Linear(1024, 5N)``
  (no activation between them) on masked layer4 features through ``AvgPool2d(7)``.
- quadrant masks on the *feature maps*: transform 0 is the identity, 1..4 zero the
  top-left, top-right, bottom-left, bottom-right quadrant (``h = k // 2``) across all channels.
  Output row ``b*5 + j`` is sample ``b`` under transform ``j``; the joint label of class ``c``
  under transform ``j`` is ``c*5 + j``.
- inference uses the AG head: ``sum_j (x[j::5, j::5] + x3[j::5, j::5]) / 10``, logits [B, N].

The masks are non-persistent buffers: they follow ``.to(device)`` but add no state_dict key,
exactly like the original (where they were a plain non-module object). Nothing here touches
CUDA at construction; the caller moves the model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

log = logging.getLogger(__name__)

INPUT_SIZE = 224
N_TRANSFORMS = 5
ENSEMBLE_WIDTH = 1024  # fc_ens output width, fixed by the published architecture
LAYER3_GRID = 14  # layer3 spatial size for a 224 input (stride 16)
LAYER4_GRID = 7  # layer4 spatial size for a 224 input (stride 32)


class LiLNetInputError(ValueError):
    """The input tensor does not have the shape LiLNet was built for ([B,3,224,224])."""


class LiLNetConfigError(ValueError):
    """An unknown depth or an invalid class count was asked for."""


@dataclass(frozen=True)
class ResNetDepth:
    """Backbone layout: block type and block counts per stage."""

    name: str
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]

    def layer3_channels(self, width: int = 64) -> int:
        return 4 * width * self.block.expansion

    def layer4_channels(self, width: int = 64) -> int:
        return 8 * width * self.block.expansion


DEPTHS: dict[str, ResNetDepth] = {
    "resnet18": ResNetDepth("resnet18", BasicBlock, (2, 2, 2, 2)),
    "resnet34": ResNetDepth("resnet34", BasicBlock, (3, 4, 6, 3)),
    "resnet50": ResNetDepth("resnet50", Bottleneck, (3, 4, 6, 3)),
}


class LiLNetOutputs(NamedTuple):
    """Training outputs of ``LiLNet.forward`` (a tuple, so ``x, x3, x_sd = model(inp)`` works).

    ``x`` and ``x3`` are [5B, 5N] joint-label logits (row b*5+j, column c*5+j);
    ``x_sd`` is [B, N] from the self-distillation head, or None without that head.
    """

    x: Tensor
    x3: Tensor
    x_sd: Tensor | None


def quadrant_masks(k: int) -> Tensor:
    """The five feature-map masks for a k x k grid, shape [5, 1, k, k] (broadcast over channels).

    Mask 0 is all ones; masks 1..4 zero rows/cols split at ``h = k // 2`` in the order
    top-left, top-right, bottom-left, bottom-right. For odd k the right/bottom parts are wider.
    """
    if k < 2:
        raise LiLNetConfigError(f"mask grid must be at least 2x2, got k={k}")
    h = k // 2
    masks = torch.ones(N_TRANSFORMS, 1, k, k)
    masks[1, :, :h, :h] = 0.0
    masks[2, :, :h, h:] = 0.0
    masks[3, :, h:, :h] = 0.0
    masks[4, :, h:, h:] = 0.0
    return masks


def apply_masks(features: Tensor, masks: Tensor) -> Tensor:
    """[B, C, k, k] features times [5, 1, k, k] masks -> [5B, C, k, k] with row b*5 + j."""
    b, c, hgt, wid = features.shape
    masked = features.unsqueeze(1) * masks.unsqueeze(0)  # [B, 5, C, k, k]
    return masked.reshape(b * N_TRANSFORMS, c, hgt, wid)


def aggregate_ag(x: Tensor, x3: Tensor) -> Tensor:
    """AG head: mean of the 10 per-class logit vectors (5 transforms x 2 heads), [B, N].

    Written as in the reference (``process.py``): rows ``j::5`` select transform j, columns
    ``j::5`` select the joint labels ``c*5 + j`` of every class c under that transform.
    """
    if x.shape != x3.shape or x.ndim != 2 or x.shape[0] % N_TRANSFORMS or x.shape[1] % N_TRANSFORMS:
        raise LiLNetInputError(
            f"AG expects two [5B, 5N] logit tensors of equal shape, got {tuple(x.shape)} and {tuple(x3.shape)}"
        )
    total = x[0::N_TRANSFORMS, 0::N_TRANSFORMS] + x3[0::N_TRANSFORMS, 0::N_TRANSFORMS]
    for j in range(1, N_TRANSFORMS):
        total = total + x[j::N_TRANSFORMS, j::N_TRANSFORMS] + x3[j::N_TRANSFORMS, j::N_TRANSFORMS]
    return total / (2 * N_TRANSFORMS)


class LiLNet(nn.Module):
    """ResNet backbone with LiLNet's masked layer3/layer4 heads (``2fcsd`` or ``2fc`` mode)."""

    def __init__(self, n_classes: int, depth: str = "resnet50", with_sd_head: bool = True, width: int = 64) -> None:
        super().__init__()
        if width < 4 or width % 4:
            raise LiLNetConfigError(f"width must be a positive multiple of 4, got {width}")
        if n_classes < 2:
            raise LiLNetConfigError(f"n_classes must be >= 2, got {n_classes}")
        if depth not in DEPTHS:
            raise LiLNetConfigError(f"unknown depth {depth!r}; expected one of {sorted(DEPTHS)}")
        spec = DEPTHS[depth]
        self.n_classes = n_classes
        self.depth = depth
        self.with_sd_head = with_sd_head
        self.width = width
        joint = N_TRANSFORMS * n_classes

        # Backbone, in torchvision's registration order and names.
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(spec.block, width, spec.layers[0], stride=1)
        self.layer2 = self._make_layer(spec.block, 2 * width, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(spec.block, 4 * width, spec.layers[2], stride=2)
        self.layer4 = self._make_layer(spec.block, 8 * width, spec.layers[3], stride=2)

        # Heads, in the original registration order (only matters for state_dict key order).
        self.fc3 = nn.Linear(spec.layer3_channels(width), joint)
        self.avgpool3 = nn.AvgPool2d(LAYER3_GRID)
        self.fc_SD: nn.Linear | None = nn.Linear(spec.layer4_channels(width), n_classes) if with_sd_head else None
        self.avgpool = nn.AvgPool2d(LAYER4_GRID)
        self.fc_ens = nn.Linear(spec.layer4_channels(width), ENSEMBLE_WIDTH)
        self.fc = nn.Linear(ENSEMBLE_WIDTH, joint)

        self.register_buffer("mask3", quadrant_masks(LAYER3_GRID), persistent=False)
        self.register_buffer("mask4", quadrant_masks(LAYER4_GRID), persistent=False)

        self._init_weights()
        # torchvision's blocks use in-place ReLU; the original used plain ReLU. In-place ops
        # break backward hooks used for class-activation maps, so turn them off (same numbers).
        for module in self.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation; published or trained weights replace it anyway.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)

    @staticmethod
    def check_input(x: Tensor) -> None:
        """Raise LiLNetInputError unless x is [B, 3, 224, 224] with B >= 1."""
        if x.ndim != 4 or x.shape[0] < 1 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise LiLNetInputError(
                f"LiLNet needs input [B,3,{INPUT_SIZE},{INPUT_SIZE}] (fixed pooling and mask sizes), "
                f"got {tuple(x.shape)}"
            )

    def backbone(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Layer3 [B, C3, 14, 14] and layer4 [B, C4, 7, 7] feature maps (unmasked)."""
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f3 = self.layer3(self.layer2(self.layer1(x)))
        f4 = self.layer4(f3)
        return f3, f4

    def heads(self, f3: Tensor, f4: Tensor) -> tuple[Tensor, Tensor]:
        """Masked-head logits (x from layer4, x3 from layer3), each [5B, 5N]."""
        x3 = self.fc3(torch.flatten(self.avgpool3(apply_masks(f3, self.mask3)), 1))
        pooled4 = torch.flatten(self.avgpool(apply_masks(f4, self.mask4)), 1)
        x = self.fc(self.fc_ens(pooled4))
        return x, x3

    def forward(self, x: Tensor) -> LiLNetOutputs:
        f3, f4 = self.backbone(x)
        logits, logits3 = self.heads(f3, f4)
        x_sd = self.fc_SD(torch.flatten(self.avgpool(f4), 1)) if self.fc_SD is not None else None
        return LiLNetOutputs(logits, logits3, x_sd)

    def aggregated_logits(self, x: Tensor) -> Tensor:
        """AG logits [B, N] (no softmax), the head behind the published results."""
        f3, f4 = self.backbone(x)
        logits, logits3 = self.heads(f3, f4)
        return aggregate_ag(logits, logits3)
