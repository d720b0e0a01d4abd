"""CAM: the class activation map of a network with a global-average-pooling + linear head."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.registry import register


def cam_terms(acts: Tensor, class_weights: Tensor) -> Tensor:
    """CAM's per-channel terms w^c_k A^k: (B, K, *spatial)."""
    return class_weights.view(*class_weights.shape, *[1] * (acts.ndim - 2)) * acts


@register(
    "cam",
    inputs="class_weights",
    paper="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016, "
    "arXiv:1512.04150",
    terms=cam_terms,
)
def cam(acts: Tensor, class_weights: Tensor) -> Tensor:
    """CAM (Zhou 2016): the linear head's weights applied at every position.

    With S^c = sum_k w^c_k (1/Z) sum_ij A^k_ij + b^c (GAP then a linear layer),
        M^c(i, j) = sum_k w^c_k A^k_ij
    so that sum_ij M^c(i, j) / Z + b^c = S^c.

    acts: (B, K, *spatial) activations of the layer followed by GAP + linear ((h, w) for
    images, (d, h, w) for volumes).
    class_weights: (B, K), row c of the linear layer's weight for each image's class c.
    Returns the raw map (B, *spatial), before ReLU.
    """
    return torch.einsum("bk,bk...->b...", class_weights, acts)
