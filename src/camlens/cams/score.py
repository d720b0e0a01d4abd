"""Score-weighted CAMs: Score-CAM, SS-CAM and IS-CAM. Gradient-free; they re-run the model on
the image masked by each channel's upsampled, normalised activation map.

Shared notation: H^k = minmax(upsample(A^k)) in [0, 1] at the image's size, X the image,
S^c(.) the explained logit. Every masked image goes through ``probe.scores`` in no-grad batches
built on demand, so memory is bounded by the batch size whatever the channel count. A channel
whose map is constant has H^k = 0 (the normalisation's guard): its masked image is all zeros, so
its score is that of a black image, computed once per batch of images and not per channel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.maps import minmax, upsample
from camlens.probe import Probe
from camlens.registry import register


def _informative(acts: Tensor, rel_eps: float = 1e-6) -> Tensor:
    """(B, K) True where channel k of image b is not constant (its mask is not all zero)."""
    flat = acts.flatten(2)
    hi, lo = flat.amax(dim=2), flat.amin(dim=2)
    return (hi - lo) > rel_eps * torch.maximum(hi.abs(), lo.abs())


def _masks(acts: Tensor, b: Tensor, k: Tensor, size: tuple[int, ...]) -> Tensor:
    """H^k of the (b, k) pairs: (m, 1, *size)."""
    return minmax(upsample(acts[b, k], size))[:, None]


def _black_scores(probe: Probe) -> Tensor:
    """S^c(0): the score of an all-zero image, per image (its class may differ)."""
    n = probe.images.shape[0]
    return probe.scores(
        n,
        lambda s, e: (torch.zeros_like(probe.images[s:e]), torch.arange(s, e, device=_dev(probe))),
    )


def _weighted(weights: Tensor, acts: Tensor) -> Tensor:
    """sum_k w_k A^k: weights (B, K) -> (B, *spatial), or (B, K, T) -> (B, T, *spatial)."""
    if weights.ndim == 3:
        return torch.einsum("bkt,bk...->bt...", weights, acts)
    return torch.einsum("bk,bk...->b...", weights, acts)


def weighted_terms(weights: Tensor, acts: Tensor) -> Tensor:
    """The per-channel terms w_k A^k of :func:`_weighted` (for ``eigen_smooth``): weights (B, K)
    -> (B, K, *spatial), or (B, K, T) -> (B, T, K, *spatial)."""
    spatial = [1] * (acts.ndim - 2)
    if weights.ndim == 3:
        return (
            weights.transpose(1, 2).reshape(*weights.shape[::2], weights.shape[1], *spatial)
            * (acts[:, None])
        )
    return weights.view(*weights.shape, *spatial) * acts


def _dev(probe: Probe) -> torch.device:
    return probe.images.device


def _channel_scores(probe: Probe, repeats: int, make, every_channel: bool = False) -> Tensor:
    """Scores (B, K, repeats), or (B, K, repeats, T) for (B, T) targets (each masked image is
    scored once for all T), of ``make(b, k, r, size)`` masked images, image-major.

    Only informative channels are scored and constant ones get the black image's score, unless
    ``every_channel`` (when ``make`` adds noise that makes a constant channel informative).
    """
    acts, images = probe.acts, probe.images
    bsz, k_ch = acts.shape[:2]
    per = tuple(probe.targets.shape[1:])  # (T,) when several targets per image
    size = tuple(images.shape[2:])
    keep = torch.ones(bsz, k_ch, dtype=torch.bool, device=acts.device)
    pairs = (keep if every_channel else _informative(acts)).nonzero()  # (N, 2), row-major
    n = pairs.shape[0] * repeats
    out = torch.empty(bsz, k_ch, repeats, *per, device=_dev(probe))
    if pairs.shape[0] < bsz * k_ch:
        out[:] = _black_scores(probe).view(bsz, 1, 1, *per)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(start, stop, device=_dev(probe))
        pair, rep = pairs[idx // repeats], idx % repeats
        b, k = pair[:, 0], pair[:, 1]
        return make(b, k, rep, size), b

    scores = probe.scores(n, build).view(-1, repeats, *per)
    out[pairs[:, 0], pairs[:, 1]] = scores
    return out


def scorecam_terms(acts: Tensor, probe: Probe) -> Tensor:
    """Score-CAM's per-channel terms w_k A^k (see :func:`scorecam`, :func:`weighted_terms`)."""
    return weighted_terms(_scorecam_weights(acts, probe), acts)


@register(
    "scorecam",
    inputs="input_probe",
    paper="Wang et al., Score-CAM, CVPR Workshops 2020, arXiv:1910.01279",
    terms=scorecam_terms,
)
def scorecam(acts: Tensor, probe: Probe) -> Tensor:
    """Score-CAM: each channel weighted by the score of the image masked by it.

        w_k = softmax_k( S^c(X * H^k) ),     raw = sum_k w_k A^k

    The softmax runs over the channels k of the explained class's logit (as camlens' issue
    specifies and pytorch-grad-cam does; the paper subtracts a baseline score, which the softmax
    over k cancels). One forward pass per non-constant channel, batched.
    """
    return _weighted(_scorecam_weights(acts, probe), acts)


def _scorecam_weights(acts: Tensor, probe: Probe) -> Tensor:
    def make(b: Tensor, k: Tensor, _r: Tensor, size: tuple[int, int]) -> Tensor:
        return probe.images[b] * _masks(acts, b, k, size)

    return _channel_scores(probe, 1, make)[:, :, 0].softmax(dim=1)


def sscam_terms(
    acts: Tensor,
    probe: Probe,
    samples: int = 10,
    sigma: float = 2.0,
    noise_on: str = "activation",
) -> Tensor:
    """SS-CAM's per-channel terms w_k A^k (see :func:`sscam`, :func:`weighted_terms`)."""
    return weighted_terms(_sscam_weights(acts, probe, samples, sigma, noise_on), acts)


@register(
    "sscam",
    inputs="input_probe",
    paper="Wang et al., SS-CAM: Smoothed Score-CAM, arXiv:2006.14255",
    terms=sscam_terms,
)
def sscam(
    acts: Tensor,
    probe: Probe,
    samples: int = 10,
    sigma: float = 2.0,
    noise_on: str = "activation",
) -> Tensor:
    """SS-CAM: Score-CAM with each channel's score averaged over noisy samples.

        noise_on="activation" (SS-CAM(1)): C_k = (1/N) sum_n S^c(X * minmax(upsample(A^k) + e_n))
        noise_on="input"      (SS-CAM(2)): C_k = (1/N) sum_n S^c((X + e_n) * H^k)
        e_n ~ N(0, sigma^2) per pixel;  w_k = softmax_k(C_k);  raw = sum_k w_k A^k

    Defaults N = 10, sigma = 2 as in the paper. Noise comes from the probe's seeded generator.
    """
    return _weighted(_sscam_weights(acts, probe, samples, sigma, noise_on), acts)


def _sscam_weights(acts: Tensor, probe: Probe, samples: int, sigma: float, noise_on: str) -> Tensor:
    if noise_on not in ("activation", "input"):
        raise ValueError(f"noise_on must be 'activation' or 'input', got {noise_on!r}")
    gen = probe.generator

    def noise(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=gen, device=_dev(probe)) * sigma

    def make(b: Tensor, k: Tensor, _r: Tensor, size: tuple[int, int]) -> Tensor:
        if noise_on == "input":
            x = probe.images[b]
            return (x + noise(tuple(x.shape))) * _masks(acts, b, k, size)
        up = upsample(acts[b, k], size)
        mask = minmax(up + noise(tuple(up.shape)))[:, None]
        return probe.images[b] * mask

    # Noise on the activation makes every channel informative: score them all.
    scores = _channel_scores(probe, samples, make, every_channel=noise_on == "activation")
    return scores.mean(dim=2).softmax(dim=1)


def iscam_terms(acts: Tensor, probe: Probe, steps: int = 10) -> Tensor:
    """IS-CAM's per-channel terms w_k A^k (see :func:`iscam`, :func:`weighted_terms`)."""
    return weighted_terms(_iscam_weights(acts, probe, steps), acts)


@register(
    "iscam",
    inputs="input_probe",
    paper="Naidu et al., IS-CAM: Integrated Score-CAM, arXiv:2010.03023",
    terms=iscam_terms,
)
def iscam(acts: Tensor, probe: Probe, steps: int = 10) -> Tensor:
    """IS-CAM: Score-CAM with each score integrated along the mask's intensity.

        C_k = (1/N) sum_{i=1..N} S^c(X * (i/N) H^k),   w_k = softmax_k(C_k),   raw = sum_k w_k A^k

    A Riemann sum of the score from a faint mask to the full one (N = ``steps``, 10 by default).
    """
    return _weighted(_iscam_weights(acts, probe, steps), acts)


def _iscam_weights(acts: Tensor, probe: Probe, steps: int) -> Tensor:
    def make(b: Tensor, k: Tensor, r: Tensor, size: tuple[int, int]) -> Tensor:
        scale = ((r + 1).float() / steps).view(-1, *[1] * (len(size) + 1))
        return probe.images[b] * (scale * _masks(acts, b, k, size))

    return _channel_scores(probe, steps, make).mean(dim=2).softmax(dim=1)
