"""Gradient-weighted CAMs: Grad-CAM, Grad-CAM++ and LayerCAM.

Notation (as in the papers): A^k the k-th channel of the layer's activations, S^c the score of the
explained class (the logit unless a target says otherwise), g^k_ij = dS^c / dA^k_ij, Z = h * w.
Every function takes ``acts`` and ``grads`` of shape (B, K, h, w) and returns the raw map
(B, h, w) before ReLU, normalisation and upsampling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.registry import register


@register(
    "gradcam",
    inputs="grads",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017, arXiv:1610.02391",
)
def gradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM: channel weights are the spatial mean of the gradients.

        alpha_k = (1/Z) sum_ij g^k_ij,      raw = sum_k alpha_k A^k

    For a GAP + linear head, g^k_ij = w^c_k / Z, so raw = CAM / Z.
    """
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return (alpha * acts).sum(dim=1)


@register(
    "gradcampp",
    inputs="grads",
    paper="Chattopadhyay et al., Grad-CAM++, WACV 2018, arXiv:1710.11063, eq. (19)",
)
def gradcampp(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ with the paper's closed form for Y^c = exp(S^c), eq. (19).

        a^kc_ij = g_ij^2 / (2 g_ij^2 + sum_ab A^k_ab g_ij^3)     (0 where the denominator is 0)
        w^c_k   = sum_ij a^kc_ij ReLU(g^k_ij)
        raw     = sum_k w^c_k A^k

    When eq. (19) is exact: the paper replaces the 2nd and 3rd derivatives of Y = exp(S) by powers
    of the first, which holds when S is piecewise linear in A (ReLU networks: convolutions,
    ReLU, max/average pooling, linear layers after the layer) so that d^2 S / dA^2 = 0 almost
    everywhere. It is not exact for smooth activations after the layer (GELU, SiLU) or for a
    softmax score. The paper's weights use dY/dA = exp(S) g; the factor exp(S) is one positive
    constant per image, which the per-image normalisation removes, so it is left out here (it
    overflows for large logits). The paper assumes A >= 0 (a post-ReLU layer); with negative
    activations the denominator can vanish or change sign, hence the guard.
    """
    g2 = grads.pow(2)
    g3 = g2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + sum_acts * g3
    nonzero = denom != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), 0.0)
    weights = (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * acts).sum(dim=1)


@register(
    "layercam",
    inputs="grads",
    paper="Jiang et al., LayerCAM, IEEE TIP 2021, doi:10.1109/TIP.2021.3089943",
)
def layercam(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM: every activation weighted by its own positive gradient.

        raw = sum_k ReLU(g^k) * A^k     (element-wise product, then channel sum)

    For a GAP + linear head, raw = sum_k ReLU(w^c_k) A^k / Z. Several layers are fused with the
    paper's scaling and element-wise maximum (see :func:`camlens.fusion.fuse_layers`).
    """
    return (grads.clamp(min=0) * acts).sum(dim=1)
