"""Gradient-weighted CAMs: Grad-CAM, Grad-CAM++ and LayerCAM.

Notation (as in the papers): A^k the k-th channel of the layer's activations, S^c the score of the
explained class (the logit unless a target says otherwise), g^k_ij = dS^c / dA^k_ij, Z = h * w.
Every function takes ``acts`` and ``grads`` of shape (B, K, *spatial) (h, w for images, d, h, w
for volumes) and returns the raw map (B, *spatial) before ReLU, normalisation and upsampling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.registry import register


def _spatial(x: Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a (B, K, *spatial) tensor: (2, 3) for images, (2, 3, 4) for
    volumes. Every method here works over any number of them (Z = their product)."""
    return tuple(range(2, x.ndim))


def gradcam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM's per-channel terms alpha_k A^k, (B, K, *spatial)."""
    return grads.mean(dim=_spatial(acts), keepdim=True) * acts


@register(
    "gradcam",
    inputs="grads",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017, arXiv:1610.02391",
    terms=gradcam_terms,
)
def gradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM: channel weights are the spatial mean of the gradients.

        alpha_k = (1/Z) sum_ij g^k_ij,      raw = sum_k alpha_k A^k

    For a GAP + linear head, g^k_ij = w^c_k / Z, so raw = CAM / Z.
    """
    return gradcam_terms(acts, grads).sum(dim=1)


def gradcampp_terms(
    acts: Tensor, grads: Tensor, d2: Tensor | None = None, d3: Tensor | None = None
) -> Tensor:
    """Grad-CAM++'s per-channel terms w^c_k A^k, (B, K, *spatial) (see :func:`gradcampp`)."""
    if d2 is None or d3 is None:
        return _gradcampp_terms(acts, grads, grads.pow(2), grads.pow(3))
    return _gradcampp_terms(acts, grads, grads.pow(2) + d2, grads.pow(3) + 3 * grads * d2 + d3)


@register(
    "gradcampp",
    inputs="grads",
    paper="Chattopadhyay et al., Grad-CAM++, WACV 2018, arXiv:1710.11063, eq. (19)",
    terms=gradcampp_terms,
)
def gradcampp(
    acts: Tensor, grads: Tensor, d2: Tensor | None = None, d3: Tensor | None = None
) -> Tensor:
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

    The general form, eq. (10), for any head: ``explain(..., method="gradcampp", exact=True)``
    makes the engine compute the true diagonal derivatives d2 = d^2 S / dA_ij^2 and
    d3 = d^3 S / dA_ij^3 (batched Hessian-vector products, double backward), and then, with
    Y = exp(S) and its positive factor exp(S) cancelled,
        dY ~ g,   d2Y ~ g^2 + d2,   d3Y ~ g^3 + 3 g d2 + d3.
    With d2 = d3 = 0 (piecewise-linear heads) this is eq. (19) again.
    """
    return gradcampp_terms(acts, grads, d2, d3).sum(dim=1)


def _gradcampp_map(acts: Tensor, d1: Tensor, d2: Tensor, d3: Tensor) -> Tensor:
    """sum_k w_k A^k with w_k = sum_ij a_ij ReLU(d1_ij), a = d2 / (2 d2 + sum_ab A_ab d3)."""
    return _gradcampp_terms(acts, d1, d2, d3).sum(dim=1)


def _gradcampp_terms(acts: Tensor, d1: Tensor, d2: Tensor, d3: Tensor) -> Tensor:
    """The terms w_k A^k of :func:`_gradcampp_map`, (B, K, *spatial)."""
    sum_acts = acts.sum(dim=_spatial(acts), keepdim=True)
    denom = 2 * d2 + sum_acts * d3
    nonzero = denom != 0
    alpha = torch.where(nonzero, d2 / torch.where(nonzero, denom, torch.ones_like(denom)), 0.0)
    weights = (alpha * d1.clamp(min=0)).sum(dim=_spatial(acts), keepdim=True)
    return weights * acts


def layercam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """The per-channel terms of :func:`layercam`, grads.clamp(min=0) * acts: (B, K, *spatial)."""
    return grads.clamp(min=0) * acts


@register(
    "layercam",
    inputs="grads",
    paper="Jiang et al., LayerCAM, IEEE TIP 2021, doi:10.1109/TIP.2021.3089943",
    terms=layercam_terms,
)
def layercam(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM: every activation weighted by its own positive gradient.

        raw = sum_k ReLU(g^k) * A^k     (element-wise product, then channel sum)

    For a GAP + linear head, raw = sum_k ReLU(w^c_k) A^k / Z. Several layers are fused with the
    paper's scaling and element-wise maximum (see :func:`camlens.fusion.fuse_layers`).
    """
    return layercam_terms(acts, grads).sum(dim=1)


def hirescam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """The per-channel terms of :func:`hirescam`, grads * acts: (B, K, *spatial)."""
    return grads * acts


@register(
    "hirescam",
    inputs="grads",
    paper="Draelos & Carin, Use HiResCAM instead of Grad-CAM, arXiv:2011.08891",
    terms=hirescam_terms,
)
def hirescam(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM: the gradient multiplies each activation element-wise, then channels are summed.

        raw = sum_k g^k * A^k

    Without ReLU on the product (unlike LayerCAM), so for a GAP + linear head
    sum_ij raw = S^c - b^c: the map shows exactly how each position adds to the score.
    """
    return hirescam_terms(acts, grads).sum(dim=1)


def xgradcam_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM's per-channel terms w_k A^k, (B, K, *spatial) (see :func:`xgradcam`)."""
    total = acts.sum(dim=_spatial(acts), keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    weights = torch.where(
        total != 0, (acts / safe * grads).sum(dim=_spatial(acts), keepdim=True), 0.0
    )
    return weights * acts


@register(
    "xgradcam",
    inputs="grads",
    paper="Fu et al., Axiom-based Grad-CAM (XGrad-CAM), BMVC 2020, arXiv:2008.02312",
    terms=xgradcam_terms,
)
def xgradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM: gradients weighted by the activations' share of their channel's sum.

        w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij,     raw = sum_k w_k A^k

    A channel whose activations sum to 0 gets w_k = 0 (it adds nothing to the map either when
    it is all zero, the post-ReLU case). For a GAP + linear head, w_k = w^c_k / Z: Grad-CAM.
    """
    return xgradcam_terms(acts, grads).sum(dim=1)


def gradcam_elementwise_terms(acts: Tensor, grads: Tensor) -> Tensor:
    """The per-channel terms of :func:`gradcam_elementwise`, ReLU(g * A): (B, K, *spatial)."""
    return (grads * acts).clamp(min=0)


@register(
    "gradcam_elementwise",
    inputs="grads",
    paper="Element-wise Grad-CAM (the ReLU of HiResCAM's product), as in pytorch-grad-cam's "
    "GradCAMElementWise; cf. Draelos & Carin arXiv:2011.08891",
    terms=gradcam_elementwise_terms,
)
def gradcam_elementwise(acts: Tensor, grads: Tensor) -> Tensor:
    """Element-wise Grad-CAM: only the positive element-wise contributions count.

        raw = sum_k ReLU(g^k * A^k)

    With post-ReLU activations (A >= 0) this equals LayerCAM's sum_k ReLU(g^k) A^k.
    """
    return gradcam_elementwise_terms(acts, grads).sum(dim=1)


def shapleycam_terms(acts: Tensor, grads: Tensor, hvp: Tensor) -> Tensor:
    """ShapleyCAM's per-channel terms w_k A^k, (B, K, *spatial) (see :func:`shapleycam`)."""
    return (grads - 0.5 * hvp).mean(dim=_spatial(acts), keepdim=True) * acts


@register(
    "shapleycam",
    inputs="grads_hvp",
    paper="Cai et al., ShapleyCAM: second-order Shapley values for CAM, 2025, arXiv:2501.06261",
    terms=shapleycam_terms,
)
def shapleycam(acts: Tensor, grads: Tensor, hvp: Tensor) -> Tensor:
    """ShapleyCAM: Grad-CAM with the gradient replaced by a second-order Shapley estimate.

        w_k = (1/Z) sum_ij (g - 1/2 H A)^k_ij,      raw = sum_k w_k A^k

    H A is the Hessian of S^c w.r.t. the activations times the activations, one Hessian-vector
    product (double backward). Where S is piecewise linear in A (ReLU networks, logit target)
    H A = 0 and ShapleyCAM equals Grad-CAM; it differs for smooth heads (GELU, SiLU, softmax).
    """
    return shapleycam_terms(acts, grads, hvp).sum(dim=1)


@register(
    "smoothgradcampp",
    inputs="grad_samples",
    paper="Omeiza et al., Smooth Grad-CAM++, arXiv:1908.01224",
)
def smoothgradcampp(acts: Tensor, grads: Tensor) -> Tensor:
    """Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies of the input.

        D^n = (1/S) sum_s (g_s)^n   for n = 1, 2, 3, over S noisy copies x + N(0, sigma^2)
        a_ij = D^2_ij / (2 D^2_ij + sum_ab A_ab D^3_ij),   w_k = sum_ij a_ij ReLU(D^1_ij)
        raw = sum_k w_k A^k

    acts: (B, K, h, w) of the clean images; grads: (B, S, K, h, w) at the noisy copies.
    As in Grad-CAM++ (eq. 19), powers of the first derivative stand for the higher ones.
    """
    d1 = grads.mean(dim=1)
    d2 = grads.pow(2).mean(dim=1)
    d3 = grads.pow(3).mean(dim=1)
    return _gradcampp_map(acts, d1, d2, d3)
