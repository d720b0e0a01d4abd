"""FEM and Random-CAM: maps from the activations alone, no gradient and no re-run."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.registry import register


def fem_terms(acts: Tensor, k: float = 2.0, weighting: str = "paper") -> Tensor:
    """FEM's per-channel terms, (B, K, *spatial): mu_k B^k ("paper") or (mean_ij B^k_ij) A^k
    ("fraction"); :func:`fem` is their sum over k (see there)."""
    if weighting not in ("paper", "fraction"):
        raise ValueError(f"weighting must be 'paper' or 'fraction', got {weighting!r}")
    dims = tuple(range(2, acts.ndim))
    mu = acts.mean(dim=dims, keepdim=True)
    sigma = acts.std(dim=dims, keepdim=True, correction=0)
    binary = (acts > mu + k * sigma).to(acts.dtype)
    if weighting == "paper":
        return mu * binary
    return binary.mean(dim=dims, keepdim=True) * acts


@register(
    "fem",
    inputs="acts",
    terms=fem_terms,
    paper="Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, "
    "IPTA 2020, doi:10.1109/IPTA50016.2020.9286629",
)
def fem(acts: Tensor, k: float = 2.0, weighting: str = "paper") -> Tensor:
    """FEM (Feature Explanation Method): the channels' unusually strong positions.

        mu_k = mean_ij A^k_ij,   sigma_k = std_ij A^k_ij (population, 1/(h*w)),
        B^k_ij = 1[A^k_ij > mu_k + k sigma_k]                      (the k-sigma rule)
        weighting="paper":  raw = sum_k mu_k B^k                   (the paper)
        weighting="fraction": raw = sum_k (mean_ij B^k_ij) A^k      (pytorch-grad-cam's FEM)

    The paper (and its authors' reference code, and Xplique) weights each channel's *binary*
    map by the channel's mean activation; pytorch-grad-cam 1.5.7 instead weights the
    *activation* by the fraction of positions above the threshold. The paper's form is the
    default; ``weighting="fraction"`` reproduces pytorch-grad-cam. No gradient, class-agnostic.
    acts: (B, K, *spatial) -> raw (B, *spatial); the threshold is strict, as in both codes.
    """
    return fem_terms(acts, k, weighting).sum(dim=1)


def randomcam_terms(acts: Tensor, seed: int = 0) -> Tensor:
    """Random-CAM's per-channel terms w_k A^k, (B, K, *spatial); :func:`randomcam` sums them."""
    gen = torch.Generator(device=acts.device).manual_seed(int(seed))
    w = torch.rand(acts.shape[:2], generator=gen, device=acts.device, dtype=acts.dtype) * 2 - 1
    return w.view(*w.shape, *[1] * (acts.ndim - 2)) * acts


@register(
    "randomcam",
    inputs="acts",
    paper="Random-CAM baseline, as pytorch-grad-cam's RandomCAM",
    terms=randomcam_terms,
)
def randomcam(acts: Tensor, seed: int = 0) -> Tensor:
    """Random-CAM: channel weights drawn uniformly from [-1, 1], the sanity baseline.

        w_k ~ U[-1, 1] (one draw per image and channel, from ``seed``),   raw = sum_k w_k A^k

    Every faithfulness or localisation metric should rank a real method above it. The draw is
    made on the activations' device with a ``torch.Generator`` seeded by ``seed``, so a call is
    reproducible on one device. acts: (B, K, *spatial) -> raw (B, *spatial).
    """
    return randomcam_terms(acts, seed).sum(dim=1)
