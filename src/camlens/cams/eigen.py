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


def positive_peak(proj: Tensor) -> Tensor:
    """Fix the arbitrary sign of projections (B, n): flip an image's projection when its most
    negative value is larger in magnitude than its most positive one, so that the larger of
    |max| and |min| is positive (Seg-Eigen-CAM's eq. 13; scikit-learn's ``svd_flip`` rule)."""
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    return torch.where(flip[:, None], -proj, proj)


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


@register(
    "segeigencam",
    inputs="grads",
    paper="Chung & Ying, Seg-Eigen-CAM, Appl. Sci. 15(13):7562, 2025, doi:10.3390/app15137562",
)
def segeigencam(acts: Tensor, grads: Tensor) -> Tensor:
    """Seg-Eigen-CAM: the first principal component of |g| * A, its peak made positive.

        X = |dS/dA| * A as (h*w, K), mean-centred over positions,   X = U S V^T,
        raw = X v_1,  negated when |min raw| > |max raw|           (eqs. 10-13)

    The absolute gradient keeps the pixel-wise weighting of both gradient signs (eq. 10); the
    sign rule makes the salient region positive whatever sign the SVD returned (eq. 13). The
    positions are centred before the SVD (principal components, as pytorch-grad-cam's
    SegEigenCAM does; camlens' ``eigencam`` follows the Eigen-CAM paper's uncentred SVD).
    acts, grads: (B, K, *spatial) -> raw (B, *spatial).
    """
    b, k = acts.shape[:2]
    x = (grads.abs() * acts).reshape(b, k, -1).transpose(1, 2)
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, n, K), float64 stays
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ vh[:, 0, :, None])[:, :, 0]
    return positive_peak(proj).reshape(b, *acts.shape[2:])
