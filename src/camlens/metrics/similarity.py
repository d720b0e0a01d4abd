"""How alike two sets of maps are: Spearman rank correlation and SSIM, batched per image.

The sanity checks (Adebayo et al., NeurIPS 2018) compare maps before and after the model is
randomised with both. Both take maps (B, H, W) and return (B,) per-image similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.errors import InputError


def _pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 3 or a.shape != b.shape:
        raise InputError(
            f"both map sets must be (B, H, W) of one shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N of each row of (B, N), ties sharing their average rank (as scipy.stats.rankdata).

    rank(v) = (#{u < v} + #{u <= v} + 1) / 2, counted with two searches in the sorted row.
    """
    x = x.float().contiguous()
    s = x.sort(dim=1).values
    less = torch.searchsorted(s, x, right=False)
    less_equal = torch.searchsorted(s, x, right=True)
    return (less + less_equal + 1).float() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps, (B,).

    rho = Pearson correlation of the average ranks of the pixels of a and of b (ties, e.g. the
    zeros of a ReLU'd map, share their rank, as in scipy.stats.spearmanr). Where either map is
    constant the correlation is undefined; it is reported as 0 (no shared structure).
    """
    _pair(a, b)
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    ok = den > 0
    return torch.where(ok, (ra * rb).sum(dim=1) / torch.where(ok, den, 1.0), 0.0)


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004) of each pair of maps, (B,).

    SSIM = mean over windows of ((2 mu_a mu_b + C1)(2 sigma_ab + C2)) /
    ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2)), C_i = (k_i L)^2, with the paper's
    11 x 11 Gaussian window of sigma 1.5 (truncated at 3.5 sigma) and population (co)variances,
    averaged over the windows that fit inside the image. This equals scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=L)``. Maps need at least 11 x 11 pixels (upsampled maps have plenty).
    """
    _pair(a, b)
    radius = int(3.5 * sigma + 0.5)
    size = 2 * radius + 1
    if min(a.shape[-2:]) < size:
        raise InputError(
            f"SSIM needs maps of at least {size} x {size} pixels, got {tuple(a.shape[-2:])}; "
            "compare the upsampled maps (Explanation.maps)"
        )
    x = torch.arange(-radius, radius + 1, device=a.device, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    p = a.double()[:, None]
    q = b.double()[:, None]
    mu_p, mu_q = blur(p), blur(q)
    var_p = blur(p * p) - mu_p**2
    var_q = blur(q * q) - mu_q**2
    cov = blur(p * q) - mu_p * mu_q
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_p * mu_q + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2)
    return (num / den).flatten(1).mean(dim=1).float()
