"""Fusing the maps of several layers into one."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.maps import upsample


def fuse_layers(raws: list[Tensor], size: tuple[int, int], gamma: float = 2.0) -> Tensor:
    """LayerCAM's fusion (Jiang et al., IEEE TIP 2021, Sec. III-C).

        M_l  <- tanh(gamma * ReLU(M_l) / max ReLU(M_l))      per image, gamma = 2
        M    =  max_l upsample(M_l)                           element-wise

    The paper scales the maps of shallow layers so that their small values are not swamped by
    the deeper layers'; here every layer is scaled the same way, which puts all of them on the
    common range [0, tanh(gamma)] before the element-wise maximum (an unscaled deep map would
    otherwise be compared with scaled ones in arbitrary units). A map that is zero everywhere stays
    zero. ``raws``: list of (B, h_l, w_l); returns (B, H, W), not yet normalised.
    """
    fused: Tensor | None = None
    for raw in raws:
        pos = raw.clamp(min=0)
        peak = pos.flatten(1).amax(dim=1).view((-1,) + (1,) * (raw.ndim - 1))
        scaled = torch.tanh(gamma * pos / torch.where(peak > 0, peak, torch.ones_like(peak)))
        up = upsample(scaled, size)
        fused = up if fused is None else torch.maximum(fused, up)
    if fused is None:
        raise ValueError("fuse_layers needs at least one map")
    return fused
