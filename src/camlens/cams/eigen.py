"""Eigen-CAM and EigenGrad-CAM: projections on the first principal component."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.registry import register


def first_component_projection(x: Tensor) -> Tensor:
    """Project each position's channel vector on the first right singular vector.

    x: (B, K, *spatial) -> (B, *spatial) ((h, w) or, for volumes, (d, h, w)). With X the
    (h*w, K) matrix of one image and X = U S V^T its
    SVD (torch batched SVD, no mean-centring, as in the Eigen-CAM paper), the map is X v_1.
    The sign of a singular vector is arbitrary; it is fixed so that the projection sums to a
    non-negative value (for non-negative activations v_1 can be chosen all non-negative, by
    Perron-Frobenius, and this rule picks that choice).
    """
    b, k = x.shape[:2]
    flat = x.reshape(b, k, -1).transpose(1, 2).float()  # (B, hw, K)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    proj = flat @ vh[:, 0, :, None]  # (B, hw, 1)
    sign = torch.where(proj.sum(dim=(1, 2), keepdim=True) < 0, -1.0, 1.0)
    return (proj * sign).reshape(b, *x.shape[2:])


@register(
    "eigencam",
    inputs="acts",
    paper="Muhammad & Yeasin, Eigen-CAM, IJCNN 2020, arXiv:2008.00299",
)
def eigencam(acts: Tensor) -> Tensor:
    """Eigen-CAM: the activations projected on their first principal component.

        raw = A v_1,   v_1 the first right singular vector of A reshaped to (h*w, K)

    Class-agnostic and gradient-free: the target only sets the reported class and score.
    """
    return first_component_projection(acts)


@register(
    "eigengradcam",
    inputs="grads",
    paper="EigenGrad-CAM: Eigen-CAM (arXiv:2008.00299) on gradient x activation, as in "
    "pytorch-grad-cam",
)
def eigengradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """EigenGrad-CAM: the first-component projection of g * A (element-wise), so the map is
    class-discriminative like Grad-CAM and denoised like Eigen-CAM.

        raw = (g * A) v_1,   v_1 the first right singular vector of g * A as (h*w, K)
    """
    return first_component_projection(grads * acts)
