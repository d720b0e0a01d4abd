"""Turning raw maps into pictures: ReLU, upsampling and per-image min-max.

Maps have one leading batch dimension and any number of spatial dimensions: (B, h, w) for
images, (B, d, h, w) for volumes and video. Several targets per image are handled by the engine,
which folds them into the batch dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(raw: Tensor, size: tuple[int, ...]) -> Tensor:
    """Upsample maps (B, *s) to (B, *size): linear, bilinear or trilinear for 1, 2 or 3 spatial
    dimensions, ``align_corners=False``."""
    size = tuple(int(s) for s in size)
    if tuple(raw.shape[1:]) == size:
        return raw
    if len(size) != raw.ndim - 1 or len(size) not in _MODES:
        raise ValueError(f"cannot upsample maps of shape {tuple(raw.shape)} to {size}")
    mode = _MODES[len(size)]
    return F.interpolate(raw.unsqueeze(1), size=size, mode=mode, align_corners=False)[:, 0]


def minmax(maps: Tensor, rel_eps: float = 1e-6) -> Tensor:
    """Per-image min-max normalisation of (B, *spatial) maps to [0, 1].

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
    view = (-1,) + (1,) * (maps.ndim - 1)
    out = (maps - lo.view(view)) / safe.view(view)
    return torch.where(informative.view(view), out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def to_heatmap(raw: Tensor, size: tuple[int, ...]) -> Tensor:
    """ReLU, upsample to ``size`` and normalise: the displayed map of one layer, (B, *size)."""
    return minmax(upsample(raw.clamp(min=0), size))
