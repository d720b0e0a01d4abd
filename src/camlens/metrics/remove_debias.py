"""ROAD: Remove And Debias (Rong et al., A Consistent and Efficient Evaluation Strategy for
Attribution Methods, ICML 2022, arXiv:2202.00449).

Removing pixels by setting them to a constant leaks the removed shape to the model (the mask's
edges are themselves a signal). ROAD fills removed pixels by *noisy linear imputation*: each
removed pixel is the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct ones, 1/12
for the diagonal ones), a sparse linear system over all removed pixels at once, plus a little
Gaussian noise. The model is then scored on images with the top p% (MoRF: most relevant first,
lower is better) or the bottom p% (LeRF: least relevant first, higher is better) removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.errors import InputError
from camlens.metrics.perturbation import (
    Score,
    check_images_maps,
    pixel_ranks,
    resolve_targets,
    score_items,
)
from camlens.targets import TargetSpec

_D, _E = 1.0 / 6.0, 1.0 / 12.0  # direct and diagonal neighbour weights (the paper's)


def _neighbour_sum(x: Tensor) -> Tensor:
    """sum_j w_ij x_j over the 8 neighbours j inside the image (zero outside), (N, 1, H, W).

    Shifted slices, not a 3 x 3 convolution: a one-channel conv2d is about 20x slower on CPU.
    """
    p = F.pad(x, (1, 1, 1, 1))
    across = p[..., :, :-2] + p[..., :, 2:]  # left + right, (H + 2, W)
    direct = across[..., 1:-1, :] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1]
    diagonal = across[..., :-2, :] + across[..., 2:, :]
    return _D * direct + _E * diagonal


def _levels(unknown: Tensor, smallest: int = 6) -> list[tuple[Tensor, Tensor]]:
    """The multigrid hierarchy: (removed-pixel mask, neighbour-weight sum) per level, halving
    the resolution down to ``smallest`` pixels; a coarse pixel is removed if any child is."""
    levels = []
    u = unknown
    while True:
        h, w = u.shape[-2:]
        degree = _neighbour_sum(torch.ones(1, 1, h, w, dtype=u.dtype, device=u.device))
        levels.append((u, degree))
        if min(h, w) <= smallest:
            return levels
        u = F.max_pool2d(u, 2, ceil_mode=True)


def _v_cycle(r: Tensor, levels: list[tuple[Tensor, Tensor]], k: int = 0) -> Tensor:
    """One multigrid V-cycle for A e = r: 2 weighted-Jacobi sweeps (omega 0.8) before and after
    the coarse correction, restriction by sum pooling (the transpose of the nearest-neighbour
    prolongation), 16 sweeps on the coarsest level. A fixed symmetric positive definite linear
    map of r, so it can precondition conjugate gradients."""
    unknown, degree = levels[k]
    step = 0.8 / degree

    def apply(v: Tensor) -> Tensor:
        return unknown * (degree * v - _neighbour_sum(v))

    e = step * r
    if k == len(levels) - 1:
        for _ in range(15):
            e = e + step * (r - apply(e))
        return e
    e = e + step * (r - apply(e))
    residual = r - apply(e)
    h, w = r.shape[-2:]
    coarse = 4 * F.avg_pool2d(F.pad(residual, (0, w % 2, 0, h % 2)), 2)
    correction = _v_cycle(coarse, levels, k + 1)
    e = e + unknown * F.interpolate(correction, scale_factor=2.0, mode="nearest")[..., :h, :w]
    for _ in range(2):
        e = e + step * (r - apply(e))
    return e


def _solve(img: Tensor, known: Tensor, tol: float, max_iter: int | None) -> Tensor:
    """Conjugate gradients, preconditioned by a multigrid V-cycle, for the removed pixels'
    values (0 at the kept ones), (N, 1, H, W). About 10-30 iterations at 96-224 pixels."""
    unknown = 1.0 - known
    levels = _levels(unknown)
    degree = levels[0][1]

    def apply(v: Tensor) -> Tensor:  # the system matrix; v is 0 on the kept pixels
        return unknown * (degree * v - _neighbour_sum(v))

    rhs = unknown * _neighbour_sum(known * img)
    v = torch.zeros_like(img)
    r = rhs
    z = _v_cycle(r, levels)
    p = z
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    scale = rhs.flatten(1).norm(dim=1).clamp(min=1e-12)
    limit = max_iter if max_iter is not None else 500
    for _ in range(limit):
        if bool((r.flatten(1).norm(dim=1) <= tol * scale).all()):
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1.0), 0.0)
        v = v + alpha * p
        r = r - alpha * ap
        z = _v_cycle(r, levels)
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    return unknown * v


def noisy_linear_impute(
    images: Tensor,
    keep: Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
    max_iter: int | None = None,
) -> Tensor:
    """Fill the pixels where ``keep`` is False by ROAD's noisy linear imputation.

    For every removed pixel i and each channel: sum_j w_ij (x_i - x_j) = 0 over the neighbours
    j inside the image (w = 1/6 direct, 1/12 diagonal), with kept pixels fixed at their values;
    then x_i += noise * N(0, 1). This is the system of the paper's reference code (solved there
    one image at a time by a sparse LU). Here it is the graph Laplacian restricted to the
    removed pixels, symmetric positive definite wherever a removed region touches a kept pixel,
    so all images and channels are solved together by conjugate gradients preconditioned by a
    geometric multigrid V-cycle (the matrix applied with shifted slices), on the images'
    device; ``tol`` is the relative residual (the solution is then within about 1e-3 of the
    exact one, a tenth of the default noise). A removed region with no kept neighbour at all
    (e.g. everything removed) takes the mean of the image's kept pixels (0 when there are none).

    images (B, C, H, W), keep (B, H, W) bool -> (B, C, H, W).
    """
    if images.ndim != 4 or keep.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(
            f"images must be (B, C, H, W) and keep (B, H, W), got {tuple(images.shape)} and "
            f"{tuple(keep.shape)}"
        )
    b, c, h, w = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    img = images.to(dtype).reshape(b * c, 1, h, w)
    known = keep.to(images.device)[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w).to(dtype)
    # Solve for the deviation from the kept pixels' mean: a constant image is then filled
    # exactly, and a region with no kept neighbour keeps the mean.
    mean = (known * img).sum(dim=(1, 2, 3), keepdim=True) / known.sum(
        dim=(1, 2, 3), keepdim=True
    ).clamp(min=1)
    original = img
    v = _solve(img - mean, known, tol, max_iter)
    unknown = 1.0 - known
    filled = torch.where(known > 0, original, v + mean)
    if noise:
        eps = torch.randn(filled.shape, generator=generator, device=images.device, dtype=dtype)
        filled = filled + noise * unknown * eps
    return filled.reshape(b, c, h, w).to(images.dtype)


@dataclass
class Road:
    """ROAD results.

    Attributes:
        percentages: (P,) the percentages of pixels removed.
        morf: (B, P) class score with the most relevant p% removed (lower is better).
        lerf: (B, P) class score with the least relevant p% removed (higher is better).
        targets: (B,) the class ids scored.
    """

    percentages: Tensor
    morf: Tensor
    lerf: Tensor
    targets: Tensor

    @property
    def combined(self) -> Tensor:
        """Per image, the mean over percentages of (LeRF - MoRF) / 2: higher is better, (B,)."""
        return ((self.lerf - self.morf) / 2).mean(dim=1)


def road(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    *,
    percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    noise: float = 0.01,
    score: Score = "prob",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> Road:
    """ROAD (Rong et al., ICML 2022): score the images with p% of pixels removed and imputed.

    For each p in ``percentages``, the round(p/100 * H*W) pixels ranked highest by the map
    (MoRF) or lowest (LeRF) are filled by :func:`noisy_linear_impute` (noise std ``noise``, in
    input units, seeded by ``seed``) and the class score is taken ("prob": softmax, or
    "logit"). The paper reports these curves (as accuracy over a data set); the mean
    probability per percentage is the same statistic for one image. Imputation and scoring run
    in chunks of ``batch_size`` images, no-grad, on the images' device. Ties in the map keep
    raster order.
    """
    maps = check_images_maps(images, maps)
    pct = torch.as_tensor(list(percentages), dtype=torch.float64)
    if pct.ndim != 1 or pct.numel() == 0 or bool(((pct < 0) | (pct > 100)).any()):
        raise InputError(f"percentages must be numbers in [0, 100], got {list(percentages)}")
    b, _, h, w = images.shape
    n = h * w
    counts = torch.round(pct / 100 * n).long().to(images.device)
    ranks = pixel_ranks(maps).view(b, h, w)
    _, ids = resolve_targets(model, images, targets, batch_size)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    points = 2 * len(counts)

    def build(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        item = torch.arange(lo, hi, device=images.device)
        owner, j = item // points, item % points
        k = counts[j % len(counts)].view(-1, 1, 1)
        most = j < len(counts)
        removed = torch.where(most.view(-1, 1, 1), ranks[owner] < k, ranks[owner] >= n - k)
        return noisy_linear_impute(images[owner], ~removed, noise, gen), owner

    scores = score_items(model, images, ids, b * points, build, score, batch_size, progress, "ROAD")
    scores = scores.view(b, 2, len(counts))
    return Road(pct.float(), scores[:, 0], scores[:, 1], ids)
