"""KPCA-CAM: Eigen-CAM with kernel PCA over the positions' activation vectors."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.cams.eigen import positive_peak
from camlens.registry import register

KERNELS = ("sigmoid", "rbf", "poly", "cosine", "linear")


def kernel_matrix(x: Tensor, kernel: str, gamma: float | None, degree: int, coef0: float) -> Tensor:
    """Gram matrices (B, n, n) of the rows of x (B, n, K), scikit-learn's definitions:

        linear  <x, y>               rbf      exp(-gamma |x - y|^2)
        poly    (gamma <x, y> + coef0)^degree     sigmoid  tanh(gamma <x, y> + coef0)
        cosine  <x, y> / (|x| |y|)   (a zero vector has similarity 0)

    gamma None: 1 / K, as scikit-learn's KernelPCA.
    """
    g = 1.0 / x.shape[-1] if gamma is None else float(gamma)
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    if kernel == "rbf":
        sq = dot.diagonal(dim1=1, dim2=2)
        return torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp(min=0))
    if kernel == "cosine":
        norm = x.norm(dim=-1)
        inv = torch.where(norm > 0, 1.0 / torch.where(norm > 0, norm, 1.0), 0.0)
        return dot * inv[:, :, None] * inv[:, None, :]
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


@register(
    "kpcacam",
    inputs="acts",
    paper="Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models "
    "using Kernel PCA, arXiv:2410.00267",
)
def kpcacam(
    acts: Tensor,
    kernel: str = "sigmoid",
    gamma: float | None = None,
    degree: int = 3,
    coef0: float = 1.0,
    centre: bool = True,
) -> Tensor:
    """KPCA-CAM: the positions' scores on the first kernel principal component.

    X is one image's (n = h*w, K) matrix of activation vectors, mean-centred over the n
    positions (as the paper's code does before its kernel PCA). With the Gram matrix
    G_ij = kappa(x_i, x_j) and its feature-space centring G~ = G - 1G - G1 + 1G1 (1 = ones/n),
    the top eigenpair G~ alpha = lambda alpha (|alpha| = 1) gives the map

        raw_i = sqrt(lambda) alpha_i    (the projection of phi(x_i) on the first component)

    scikit-learn's KernelPCA(n_components=1).fit_transform, which the paper's code calls
    (lambda < 0, possible for the non-PSD sigmoid kernel, gives 0 as scikit-learn's clipping
    does). Sign: the larger of |max| and |min| is positive (scikit-learn's ``svd_flip``).
    Kernels: ``sigmoid`` (the default), ``rbf``, ``poly`` (``degree``, ``coef0``), ``cosine``,
    ``linear``; ``gamma`` None = 1/K. ``kernel="linear"`` is PCA of the centred activations,
    i.e. Eigen-CAM of X - mean; with ``centre=False`` (no centring of X nor of G) it is
    camlens' ``eigencam`` (the Eigen-CAM paper's uncentred SVD) for non-negative activations.
    Batched: one (B, n, n) symmetric eigendecomposition, O(n^3) per image.
    acts: (B, K, *spatial) -> raw (B, *spatial).
    """
    b, k = acts.shape[:2]
    x = acts.reshape(b, k, -1).transpose(1, 2)
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, n, K), float64 stays
    if centre:
        x = x - x.mean(dim=1, keepdim=True)
    gram = kernel_matrix(x, kernel, gamma, degree, coef0)
    if centre:
        gram = (
            gram
            - gram.mean(dim=1, keepdim=True)
            - gram.mean(dim=2, keepdim=True)
            + gram.mean(dim=(1, 2), keepdim=True)
        )
    gram = (gram + gram.transpose(1, 2)) / 2  # exact symmetry for eigh
    values, vectors = torch.linalg.eigh(gram)  # ascending
    proj = vectors[:, :, -1] * values[:, -1:].clamp(min=0).sqrt()
    return positive_peak(proj).reshape(b, *acts.shape[2:])
