"""Ablation-CAM and Recipro-CAM: gradient-free, they re-run only the network after the layer.

The probe (a *layer* probe here) runs the part of the model after the explained layer on
modified activations, from cached values of the part before it, in no-grad batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.probe import Probe
from camlens.registry import register


def ablationcam_terms(acts: Tensor, probe: Probe, eps: float = 1e-7) -> Tensor:
    """Ablation-CAM's per-channel terms w_k A^k, (B, K, *spatial) (see :func:`ablationcam`)."""
    w = _ablation_weights(acts, probe, eps)
    return w.view(*w.shape, *[1] * (acts.ndim - 2)) * acts


@register(
    "ablationcam",
    inputs="layer_probe",
    paper="Desai & Ramaswamy, Ablation-CAM, WACV 2020",
    terms=ablationcam_terms,
)
def ablationcam(acts: Tensor, probe: Probe, eps: float = 1e-7) -> Tensor:
    """Ablation-CAM: a channel's weight is the relative drop of the score when it is zeroed.

        w_k = (y^c - y^c_k) / y^c,    y^c_k the score with channel k of the layer set to 0
        raw = sum_k w_k A^k

    Guard: where |y^c| < eps the denominator is eps with y^c's sign (a score of 0 would make
    every weight infinite). A channel that is already all zero cannot change the score: its
    weight is 0 and its pass is skipped (exact, and most channels after a ReLU on some images).
    For a GAP + linear head, y^c - y^c_k = w^c_k F_k, F_k = mean_ij A^k_ij.
    """
    return torch.einsum("bk,bk...->b...", _ablation_weights(acts, probe, eps), acts)


def _ablation_weights(acts: Tensor, probe: Probe, eps: float) -> Tensor:
    bsz, k_ch = acts.shape[:2]
    pairs = acts.flatten(2).ne(0).any(dim=2).nonzero()  # (N, 2) channels that are not all zero

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        b, k = pairs[start:stop, 0], pairs[start:stop, 1]
        ablated = acts[b].clone()
        ablated[torch.arange(len(b), device=acts.device), k] = 0
        return ablated, b

    ablated_scores = probe.scores(pairs.shape[0], build)
    y = probe.base.float()
    denom = torch.where(y.abs() < eps, torch.where(y < 0, -eps, eps), y)
    weights = torch.zeros(bsz, k_ch, device=acts.device)
    b, k = pairs[:, 0], pairs[:, 1]
    weights[b, k] = (y[b] - ablated_scores) / denom[b]
    return weights


@register(
    "reciprocam",
    inputs="layer_probe",
    paper="Byun & Lee, Recipro-CAM, arXiv:2209.14074",
)
def reciprocam(acts: Tensor, probe: Probe) -> Tensor:
    """Recipro-CAM: the class probability when only one position of the feature map is kept.

        raw(i, j) = softmax(f_after(A * 1_{ij}))_c

    1_{ij} keeps position (i, j) of every channel and zeroes the rest (the paper's base
    one-hot masks; no Gaussian smoothing kernel). One batched pass of the network after the
    layer per position. For a GAP + linear head, raw(i, j) = softmax(W A_ij / Z + b)_c.
    """
    bsz, k_ch = acts.shape[:2]
    spatial = acts.shape[2:]
    positions = spatial.numel()
    flat = acts.flatten(2)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(start, stop, device=acts.device)
        b, p = idx // positions, idx % positions
        masked = torch.zeros(len(idx), k_ch, positions, device=acts.device, dtype=acts.dtype)
        masked[torch.arange(len(idx), device=acts.device), :, p] = flat[b, :, p]
        return masked.view(len(idx), k_ch, *spatial), b

    return probe.scores(bsz * positions, build, softmax=True).view(bsz, *spatial)
