"""Random weights for Ultralytics YOLO models built from their yaml, for tests, benchmarks and
pictures: Ultralytics' own initialisation puts almost the same box at every anchor, so nothing
would vary across the image. Needs no Ultralytics import (it only reads the head's modules)."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomise(model: nn.Module, seed: int = 0, gain: float = 1.6, cls_scale: float = 0.3) -> None:
    """In place: conv weights N(0, gain^2 / fan_in) (the DFL's fixed conv is left alone), the
    class convolutions scaled by ``cls_scale`` with bias -3, so that scores spread below 1; the
    box convolutions' biases favour short distances, so that boxes are a few strides wide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d) and mod.weight.requires_grad:
                fan = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * gain / math.sqrt(fan))
        head = model.model[-1]
        for seq in head.cv3:
            seq[-1].weight.mul_(cls_scale)
            seq[-1].bias.fill_(-3.0)
        for seq in head.cv2:  # DFL bins favour short distances: boxes of a few strides
            bins = torch.arange(head.reg_max, dtype=torch.float32)
            seq[-1].bias.copy_((-0.4 * bins).repeat(4))
