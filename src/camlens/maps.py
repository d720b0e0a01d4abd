"""Turning raw maps into pictures: ReLU, bilinear upsampling and per-image min-max."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of maps (B, h, w) to (B, H, W), ``align_corners=False``."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    return F.interpolate(raw.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: Tensor, rel_eps: float = 1e-6) -> Tensor:
    """Per-image min-max normalisation of (B, H, W) maps to [0, 1].

    A map whose range is at most ``rel_eps`` times its magnitude (a constant map, up to float
    rounding) becomes all zeros, never NaN: an explanation with no spatial information shows
    none. The guard is relative, so maps of tiny magnitude (untrained networks) still normalise.
    """
    flat = maps.flatten(1)
    lo = flat.amin(dim=1)
    hi = flat.amax(dim=1)
    span = hi - lo
    informative = span > rel_eps * torch.maximum(hi.abs(), lo.abs())
    safe = torch.where(informative, span, torch.ones_like(span))
    out = (maps - lo.view(-1, 1, 1)) / safe.view(-1, 1, 1)
    return torch.where(informative.view(-1, 1, 1), out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def to_heatmap(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU, upsample to ``size`` and normalise: the displayed map of one layer, (B, H, W)."""
    return minmax(upsample(raw.clamp(min=0), size))
