"""Localisation: how well maps point at the ground-truth object.

All functions take maps (B, H, W) (normalised maps in [0, 1] for :func:`iou`) and masks
(B, H, W) bool on the same device, and return a (B,) float tensor of per-image scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.errors import InputError


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise InputError(
            f"maps and masks must both be (B, H, W) of the same shape, got {tuple(maps.shape)} "
            f"and {tuple(masks.shape)}; upsample the maps to the mask size first"
        )


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Grow masks by a disk of ``radius`` pixels."""
    if radius <= 0:
        return masks
    r = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()[None, None]
    grown = F.conv2d(masks.float()[:, None], disk, padding=radius)[:, 0]
    return grown > 0


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016).

    A hit (1.0) when the map's maximum lies inside the mask, or within ``tolerance`` pixels of
    it (the paper uses 15 px at 224 x 224); a miss (0.0) otherwise. A map with no positive
    value points nowhere and counts as a miss; ties go to the first maximum in raster order.
    """
    _check(maps, masks)
    flat = maps.flatten(1)
    idx = flat.argmax(dim=1)
    hit = _dilate(masks, tolerance).flatten(1).gather(1, idx[:, None])[:, 0]
    return (hit & (flat.amax(dim=1) > 0)).float()


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020):

    sum_{ij in mask} M_ij / sum_ij M_ij        (maps clipped at 0; an all-zero map scores 0)
    """
    _check(maps, masks)
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(dim=1)
    inside = (pos * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


def iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of the thresholded map {M >= threshold} and the mask.

    Both empty gives 0 (nothing was found).
    """
    _check(maps, masks)
    pred = maps.flatten(1) >= threshold
    true = masks.flatten(1)
    inter = (pred & true).sum(dim=1).float()
    union = (pred | true).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)
