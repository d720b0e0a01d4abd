"""Faithfulness: does the model's score follow the map when the image is changed by it?

- Average Drop %, Increase in Confidence %, Win % (Chattopadhyay et al., Grad-CAM++, WACV 2018,
  Sec. 6.1.1): the model sees the image multiplied by its map.
- Deletion and Insertion (Petsiuk et al., RISE, BMVC 2018, Sec. 4.1): pixels are removed
  (inserted) in order of the map, and the area under the class-probability curve is measured.

All of them take images (B, C, H, W) as the model wants them, maps (B, H, W) (lower
resolutions are upsampled bilinearly), and targets (None: each image's top class, an int, or
one class id per image); they run no-grad batches of ``batch_size`` perturbed images on the
images' device and leave the model as it came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.errors import InputError
from camlens.metrics.perturbation import (
    Score,
    check_baseline,
    check_images_maps,
    pick,
    pixel_ranks,
    resolve_targets,
    score_items,
)
from camlens.targets import TargetSpec, class_ids


@dataclass
class Confidence:
    """The scores behind Average Drop and Increase in Confidence, each (B,).

    Attributes:
        full: Y, the score of the target class on the image.
        masked: O, its score on the image multiplied by the map.
        targets: the class ids scored.
    """

    full: Tensor
    masked: Tensor
    targets: Tensor

    @property
    def drop(self) -> Tensor:
        """Per-image drop in %: 100 * max(0, Y - O) / Y (0 where Y = 0)."""
        y = self.full
        safe = torch.where(y != 0, y, torch.ones_like(y))
        return torch.where(y != 0, 100.0 * (y - self.masked).clamp(min=0) / safe, 0.0)

    @property
    def increase(self) -> Tensor:
        """Per-image increase in confidence in %: 100 where O > Y, else 0."""
        return 100.0 * (self.masked > self.full).float()


def masked_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    *,
    baseline: float | Tensor = 0.0,
    score: Score = "prob",
    batch_size: int = 64,
    logits: Tensor | None = None,
) -> Confidence:
    """The model's score on each image and on the image seen through its map.

    E^c = I o L^c (Grad-CAM++, Sec. 6.1.1): the explanation map L^c in [0, 1] multiplies the
    image pixel-wise. In the model's input space this is ``baseline + L * (x - baseline)``, so
    ``baseline`` is the value of a fully hidden pixel: 0 for inputs in pixel units (the paper),
    :func:`camlens.metrics.black` for normalised inputs (pytorch-grad-cam multiplies the
    normalised tensor, i.e. hides towards the mean colour: ``baseline=0.0`` there). ``score``:
    "prob" (softmax, as in the paper's confidence) or "logit".

    Maps must lie in [0, 1] (pass ``Explanation.maps``). ``logits``: the model's (B, K) logits
    on ``images`` when the caller has them already (one forward pass less; the class ids still
    come from ``targets``).
    """
    maps = check_images_maps(images, maps)
    if bool((maps < 0).any()) or bool((maps > 1).any()):
        raise InputError(
            "maps must lie in [0, 1] to multiply the image; pass Explanation.maps (normalised), "
            "not the raw maps"
        )
    base = check_baseline(baseline, images)
    if logits is None:
        logits, ids = resolve_targets(model, images, targets, batch_size)
    else:
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise InputError(
                f"logits must be (B, K) for the {images.shape[0]} images, got "
                f"{tuple(logits.shape)}; pass the model's logits on these images, or none"
            )
        ids = class_ids(targets, logits)
    full = pick(logits, ids, score)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        owner = torch.arange(start, stop, device=images.device)
        b = base if base.shape[0] == 1 else base[owner]
        return b + maps[owner, None] * (images[owner] - b), owner

    masked = score_items(model, images, ids, images.shape[0], build, score, batch_size, False, "")
    return Confidence(full=full, masked=masked, targets=ids)


def average_drop(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    **options,
) -> Tensor:
    """Average Drop % (Grad-CAM++, eq. 21): per image 100 * max(0, Y^c - O^c) / Y^c, (B,).

    Y^c is the class score on the image, O^c on the image times the map (see
    :func:`masked_confidence` for ``baseline``, ``score``, ``batch_size``). Lower is better;
    the mean over images is the paper's figure.
    """
    return masked_confidence(model, images, maps, targets, **options).drop


def increase_in_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    **options,
) -> Tensor:
    """Increase in Confidence % (Grad-CAM++, eq. 22): per image 100 * 1[Y^c < O^c], (B,).

    Higher is better; the mean over images is the paper's figure.
    """
    return masked_confidence(model, images, maps, targets, **options).increase


def win_rate(drops: Mapping[str, Tensor], tol: float = 1e-3) -> dict[str, float]:
    """Win % (Grad-CAM++, Sec. 6.1.1): how often each method has the lowest drop.

    ``drops``: method -> per-image Average Drop (B,), as from :func:`average_drop`. For each
    image the method(s) with the lowest drop win it; a tie of n methods gives each 1/n, so the
    win rates add up to 100. Drops within ``tol`` percentage points of the lowest count as a
    tie (float rounding must not pick a winner between methods whose maps agree, such as CAM
    and Grad-CAM on a GAP + linear head). The paper compares two methods; this is the same for
    any number.
    """
    if not drops:
        return {}
    names = list(drops)
    stacked = torch.stack([drops[n].float().reshape(-1) for n in names])  # (M, B)
    best = stacked.min(dim=0, keepdim=True).values
    winners = (stacked <= best + tol).float()
    share = winners / winners.sum(dim=0, keepdim=True)
    return {n: float(100.0 * share[i].mean()) for i, n in enumerate(names)}


@dataclass
class Curve:
    """Deletion or insertion results.

    Attributes:
        auc: (B,) area under each image's curve (trapezoidal rule over the fraction of pixels).
        curves: (B, S + 1) the class score after each step, the first before any change.
        fractions: (S + 1,) the fraction of pixels removed (inserted) at each point.
        targets: (B,) the class ids scored.
    """

    auc: Tensor
    curves: Tensor
    fractions: Tensor
    targets: Tensor


def gaussian_blur(images: Tensor, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) images with edge-replicating padding.

    RISE's insertion starts from the image blurred with an 11-pixel kernel of sigma 5. Its code
    pads with zeros, which darkens the borders; replicating the edge keeps a constant image
    constant.
    """
    if kernel < 1 or kernel % 2 == 0 or sigma <= 0:
        raise InputError(f"blur kernel must be odd and >= 1 and sigma > 0, got {kernel}, {sigma}")
    r = kernel // 2
    x = torch.arange(-r, r + 1, device=images.device, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(images.dtype)
    b, c, h, w = images.shape
    flat = images.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def _curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec,
    start: Tensor,
    insert: bool,
    step: int | None,
    score: Score,
    batch_size: int,
    progress: bool,
) -> Curve:
    maps = check_images_maps(images, maps)
    b, _, h, w = images.shape
    n = h * w
    step = max(1, math.ceil(n / 100)) if step is None else int(step)
    if step < 1:
        raise InputError(f"step must be at least 1 pixel, got {step}")
    points = math.ceil(n / step) + 1
    counts = (torch.arange(points, device=images.device) * step).clamp(max=n)
    ranks = pixel_ranks(maps).view(b, 1, h, w)
    _, ids = resolve_targets(model, images, targets, batch_size)

    def build(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        item = torch.arange(lo, hi, device=images.device)
        owner, k = item // points, item % points
        changed = ranks[owner] < counts[k].view(-1, 1, 1, 1)  # the first counts[k] pixels
        src = start if start.shape[0] == 1 else start[owner]
        if insert:
            return torch.where(changed, images[owner], src), owner
        return torch.where(changed, src, images[owner]), owner

    desc = "insertion" if insert else "deletion"
    scores = score_items(model, images, ids, b * points, build, score, batch_size, progress, desc)
    curves = scores.view(b, points)
    fractions = counts.float() / n
    return Curve(torch.trapezoid(curves, fractions, dim=1), curves, fractions, ids)


def deletion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    *,
    step: int | None = None,
    baseline: float | Tensor = 0.0,
    score: Score = "prob",
    batch_size: int = 64,
    progress: bool = False,
) -> Curve:
    """Deletion (Petsiuk et al., RISE, BMVC 2018, Sec. 4.1): lower is better.

    Pixels are set to ``baseline`` ``step`` at a time in order of decreasing map value, from
    the full image to none of it; the class probability after each step gives a curve over the
    fraction of pixels removed, x_k = min(k * step, N) / N, and the score is its area by the
    trapezoidal rule, AUC = sum_k (x_{k+1} - x_k) (p_k + p_{k+1}) / 2. RISE's step is 224
    pixels at 224 x 224; the default here is 1% of the pixels (101 points). When ``step``
    divides N this equals RISE's ``(sum p - p_0/2 - p_S/2) / S``; otherwise the last, shorter
    step gets its true width. Ties in the map keep raster order. One forward per point per
    image, batched.

    ``baseline``: RISE's code sets removed pixels to 0 in the model's input space, which is the
    mean colour for normalised inputs; the default 0.0 does the same. ``camlens evaluate``
    passes :func:`black` for normalised inputs, so that deletion and Average Drop both hide
    pixels towards black.
    """
    base = check_baseline(baseline, images)
    return _curve(model, images, maps, targets, base, False, step, score, batch_size, progress)


def insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    *,
    step: int | None = None,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    score: Score = "prob",
    batch_size: int = 64,
    progress: bool = False,
) -> Curve:
    """Insertion (RISE, Sec. 4.1): higher is better.

    Starts from the image blurred by :func:`gaussian_blur` (RISE: kernel 11, sigma 5) and puts
    the original pixels back ``step`` at a time in order of decreasing map value; the AUC of the
    class probability over the fraction inserted, as in :func:`deletion`.
    """
    check_images_maps(images, maps)
    start = gaussian_blur(images, blur_kernel, blur_sigma)
    return _curve(model, images, maps, targets, start, True, step, score, batch_size, progress)
