"""Deep feature factorization (Collins, Achanta & Süsstrunk, ECCV 2018, arXiv:1806.10206).

A layer's (ReLU'd) activations over every position of every image of a batch form a
non-negative matrix V (B h w, C). Its non-negative factorisation V ~ W H with k rows in H
finds k concept vectors (H, (k, C)), shared by the whole batch, and how strongly each position
shows each concept (W, reshaped to (B, k, h, w)). Upsampled, the weights are k heatmaps per
image that split it into parts the network sees as alike (the paper's co-segmentation).

:func:`factorize` captures the activations with the engine's capture and layout handling
(feature maps, channels-last maps, tokens), factorises them in torch on the model's device
(:func:`nmf`), and names each concept by the classes the model's own GAP + linear head scores
highest for it. :func:`concept_overlays` and :func:`save_concepts` draw the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from camlens.capture import check_images, preserved_model
from camlens.engine import Explainer
from camlens.errors import CamlensError, InputError
from camlens.layers import LayerSpec, find_default_layer, find_gap_linear_head, resolve_layers
from camlens.layouts import LayoutSpec, primary_output
from camlens.maps import upsample

#: denominators of the multiplicative updates are kept above this (scikit-learn's EPSILON)
_EPS = float(torch.finfo(torch.float32).eps)


def _leading_svd(v: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k leading singular triplets of V (n, m) from the eigenvectors of its smaller Gram
    matrix, V^T V (m, m) or V V^T (n, n), in float64: min(n, m)^3 work instead of a full SVD's
    n m min(n, m) (a ResNet-50 layer4 over 8 images: 392 x 2048)."""
    x = v.double()
    tall = x.shape[0] >= x.shape[1]
    evals, evecs = torch.linalg.eigh(x.T @ x if tall else x @ x.T)
    order = evals.flip(0)[:k].clamp_min(0)
    vecs = evecs.flip(1)[:, :k]
    s = order.sqrt()
    inv = torch.where(s > 0, 1 / s.clamp_min(1e-300), 0.0)
    if tall:
        vt = vecs.T
        u = (x @ vecs) * inv
    else:
        u = vecs
        vt = (vecs.T @ x) * inv[:, None]
    return u.to(v.dtype), s.to(v.dtype), vt.to(v.dtype)


def _nndsvda(v: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """NNDSVD (Boutsidis & Gallopoulos, Pattern Recognition 2008) with zeros filled by mean(V).

    For each of the k leading singular triplets (s_j, u_j, v_j): split u_j and v_j into
    positive and negative parts, keep the pair with the larger product of norms (the first
    triplet is non-negative up to sign, taken in absolute value), and scale it by
    sqrt(s_j * that product). All triplets at once, no loop.
    """
    u, s, vt = _leading_svd(v, k)
    up, un = u.clamp_min(0), (-u).clamp_min(0)
    vp, vn = vt.clamp_min(0), (-vt).clamp_min(0)
    mp = up.norm(dim=0) * vp.norm(dim=1)
    mn = un.norm(dim=0) * vn.norm(dim=1)
    pos = mp >= mn
    x = torch.where(pos, up, un)
    y = torch.where(pos[:, None], vp, vn)
    sigma = torch.where(pos, mp, mn)
    x = x / x.norm(dim=0).clamp_min(_EPS)
    y = y / y.norm(dim=1, keepdim=True).clamp_min(_EPS)
    lam = (s * sigma).sqrt()
    w, h = x * lam, y * lam[:, None]
    w[:, 0], h[0] = s[0].sqrt() * u[:, 0].abs(), s[0].sqrt() * vt[0].abs()
    avg = v.mean()
    w = torch.where(w < 1e-6, avg, w)
    h = torch.where(h < 1e-6, avg, h)
    return w, h


def nmf(
    v: Tensor, k: int, iters: int = 200, seed: int = 0, init: str = "nndsvda"
) -> tuple[Tensor, Tensor]:
    """Non-negative matrix factorisation V ~ W H by multiplicative updates, in torch.

    Lee & Seung (NIPS 2001), for the Frobenius norm ||V - W H||_F^2:

    H <- H * (W^T V) / (W^T W H),   W <- W * (V H^T) / (W H H^T),

    ``iters`` times each, on V's device and dtype (the denominators kept above float32's
    epsilon). The updates never increase the error. ``init``: ``"nndsvda"`` (default, as
    scikit-learn's: NNDSVD from the k leading singular vectors, zeros replaced by mean(V);
    deterministic) or ``"random"`` (scikit-learn's: |N(0, 1)| * sqrt(mean(V) / k) from a
    ``seed``-ed generator).

    v: (n, m) >= 0 -> W (n, k), H (k, m), both >= 0.
    """
    if v.ndim != 2 or not bool((v >= 0).all()) or not bool(torch.isfinite(v).all()):
        raise InputError("nmf needs a finite, non-negative (n, m) matrix")
    if not 1 <= int(k) <= min(v.shape):
        raise InputError(f"k must be between 1 and min(n, m) = {min(v.shape)}, got {k}")
    if init == "nndsvda":
        w, h = _nndsvda(v, int(k))
    elif init == "random":
        gen = torch.Generator(device=v.device).manual_seed(seed)
        scale = (v.mean() / k).sqrt()
        w = torch.randn(v.shape[0], k, generator=gen, device=v.device, dtype=v.dtype).abs()
        h = torch.randn(k, v.shape[1], generator=gen, device=v.device, dtype=v.dtype).abs()
        w, h = w * scale, h * scale
    else:
        raise InputError(f"init must be 'nndsvda' or 'random', got {init!r}")
    for _ in range(int(iters)):
        h = h * (w.T @ v) / ((w.T @ w) @ h).clamp_min(_EPS)
        w = w * (v @ h.T) / (w @ (h @ h.T)).clamp_min(_EPS)
    return w, h


@dataclass
class Concepts:
    """The result of :func:`factorize` for a batch of B images and k concepts.

    Attributes:
        concepts: (k, C) concept vectors in the layer's channel space, each of unit L2 norm.
        raw: (B, k, h, w) each position's weight of each concept at the layer's resolution:
            activation[b, :, i, j] ~ sum_c concepts[c] * raw[b, c, i, j].
        maps: (B, k, H, W) the weights upsampled bilinearly to the images' size and divided by
            each concept's largest weight in the batch, so in [0, 1] and comparable across
            images (a concept absent from an image stays dark there).
        labels: (k, top) the class ids the model's head scores highest for each concept, or
            None where the layer is not followed by a GAP + linear head.
        label_scores: (k, top) those scores, w_class . concept (the head's weights without its
            bias), or None.
        error: ||V - W H||_F / ||V||_F, the relative reconstruction error of the activations.
        layer: the layer factorised.
    """

    concepts: Tensor
    raw: Tensor
    maps: Tensor
    labels: Tensor | None
    label_scores: Tensor | None
    error: float
    layer: str


def _activations(
    model: nn.Module,
    images: Tensor,
    layer: LayerSpec,
    layout: LayoutSpec,
    batch_size: int,
) -> tuple[str, Tensor, Tensor | None]:
    """(layer name, activations (B, C, *spatial) float32, the GAP + linear head's weight)."""
    ex = Explainer(model, "eigencam", layer, layout=layout)  # its capture and layouts only
    with preserved_model(model):
        if ex._layers is None:
            ex._layers = resolve_layers(model, find_default_layer(model, images))
        if len(ex._layers) != 1:
            raise InputError(
                f"factorize takes one layer, got {len(ex._layers)}: {ex.layers}; pass one name"
            )
        name, module = ex._layers[0]
        parts, weight = [], None
        for start in range(0, images.shape[0], max(1, int(batch_size))):
            x = images[start : start + max(1, int(batch_size))]
            output, capture = ex._forward(x, x, track_grads=False, linears=start == 0)
            act = capture.acts[name]
            spatial = ex._layout_of(name, module, act, capture, x).to_spatial(act).float()
            if start == 0:
                try:
                    logits = primary_output(output)
                    weight = find_gap_linear_head(spatial, logits, capture.linears, name)
                    weight = weight.detach().float()
                except CamlensError:  # not a GAP + linear head, or no class logits
                    weight = None
            parts.append(spatial)
    return name, torch.cat(parts), weight


def factorize(
    model: nn.Module,
    images: Tensor,
    k: int,
    layer: LayerSpec = None,
    *,
    iters: int = 200,
    init: str = "nndsvda",
    seed: int = 0,
    top: int = 3,
    layout: LayoutSpec = None,
    batch_size: int = 64,
) -> Concepts:
    """Deep feature factorization (Collins et al., ECCV 2018) of ``images`` at ``layer``.

    V = ReLU(A) reshaped to (B h w, C): every position of every image is one row. NMF
    (:func:`nmf`: ``iters`` multiplicative updates from ``init``, ``seed``) gives V ~ W H with
    H (k, C); each concept vector is scaled to unit norm (the scale moves into W), and W read
    back as (B, k, h, w) is ``.raw``. The ReLU is the paper's: activations after a ReLU are
    unchanged, others (a transformer's tokens) lose their negative part.

    ``.labels``: where ``layer`` feeds global average pooling and one linear layer (checked on
    the batch, as CAM does), the ``top`` classes with the largest w_class . concept, i.e. the
    logits of a feature that is the concept alone, without the bias: the bias does not depend on
    the concept, and adding it would make the ranking depend on the concept's arbitrary scale
    (pytorch-grad-cam's DFF adds it). Elsewhere (VGG's head, ViTs) ``.labels`` is None.

    ``layer``: as for :func:`camlens.explain` (None: the automatic layer), one layer; ``layout``
    as for :class:`camlens.Explainer`. The model runs ``batch_size`` images at a time, no grad,
    and is left as it came. images: (B, C, H, W) -> :class:`Concepts`.
    """
    images, _ = check_images(model, images)
    if images.ndim != 4:
        raise InputError(f"factorize takes (B, C, H, W) images, got {tuple(images.shape)}")
    name, acts, weight = _activations(model, images, layer, layout, batch_size)
    b, c, *spatial = acts.shape
    v = acts.clamp_min(0).movedim(1, -1).reshape(-1, c)
    if not 1 <= int(k) <= min(v.shape):
        raise InputError(
            f"k must be between 1 and {min(v.shape)} (the layer has {c} channels and "
            f"{v.shape[0]} positions in this batch), got {k}"
        )
    w, h = nmf(v, int(k), iters, seed, init)
    norms = h.norm(dim=1)
    alive = norms > 0
    h = torch.where(alive[:, None], h / torch.where(alive, norms, 1.0)[:, None], h)
    w = w * norms  # W H unchanged
    error = float((v - w @ h).norm() / v.norm().clamp_min(_EPS))
    raw = w.reshape(b, *spatial, int(k)).movedim(-1, 1).contiguous()
    up = upsample(raw.reshape(b * int(k), *spatial), tuple(images.shape[2:]))
    up = up.clamp_min(0).reshape(b, int(k), *images.shape[2:])
    peak = up.amax(dim=(0, 2, 3), keepdim=True)
    maps = torch.where(peak > 0, up / peak.clamp_min(_EPS), 0.0)
    labels = scores = None
    if weight is not None:
        logits = h @ weight.T  # (k, classes)
        scores, labels = logits.topk(min(int(top), logits.shape[1]), dim=1)
    return Concepts(h, raw, maps, labels, scores, error, name)


def concept_overlays(
    images: Tensor,
    maps: Tensor,
    alpha: float = 0.6,
    preset: str = "imagenet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    per_image: bool = True,
    grey: bool = True,
) -> Tensor:
    """One colour per concept over each image, batched in torch: (B, H, W, 3) uint8.

    Each pixel takes the colour of its strongest concept c* = argmax_c maps[c] (matplotlib's
    ``tab10``, ``tab20`` beyond 10 concepts), blended by that concept's weight:
    (1 - alpha m) * image + alpha m * colour, m = maps[c*], divided by the image's largest
    value over all its concepts with ``per_image`` (so that every image shows its parts; False
    keeps the batch-wide scale of :attr:`Concepts.maps`, where weak images stay faint). With
    ``grey`` the image is shown in grey levels (its luma) under the colours.
    ``images``: (B, C, H, W) as the model takes them (de-normalised with ``preset`` or
    ``mean``/``std``, as in :func:`camlens.viz.overlays`); ``maps``: :attr:`Concepts.maps`
    (B, k, H, W) in [0, 1].
    """
    from camlens.viz import _stats, colormap_lut

    if images.ndim != 4 or maps.ndim != 4 or images.shape[0] != maps.shape[0]:
        raise InputError(
            f"concept_overlays needs images (B, C, H, W) and maps (B, k, H, W), got "
            f"{tuple(images.shape)} and {tuple(maps.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    m, s = _stats(preset, mean, std)
    img = images.detach().float()
    ch = img.shape[1]
    mean_t = torch.as_tensor(m, dtype=torch.float32, device=img.device)[:ch].view(1, -1, 1, 1)
    std_t = torch.as_tensor(s, dtype=torch.float32, device=img.device)[:ch].view(1, -1, 1, 1)
    rgb = (img * std_t + mean_t).clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    if grey:  # ITU-R BT.601 luma, so that the concepts' colours stand out
        luma = torch.tensor([0.299, 0.587, 0.114], device=img.device)
        rgb = (rgb * luma).sum(dim=-1, keepdim=True).expand_as(rgb)
    heat = maps.detach().float().to(img.device)
    if tuple(heat.shape[2:]) != tuple(rgb.shape[1:3]):
        b, k = heat.shape[:2]
        heat = upsample(heat.flatten(0, 1), tuple(rgb.shape[1:3])).view(b, k, *rgb.shape[1:3])
    strength, which = heat.clamp(0, 1).max(dim=1)  # (B, H, W)
    if per_image:
        top = strength.flatten(1).amax(dim=1).view(-1, 1, 1)
        strength = torch.where(top > 0, strength / top.clamp_min(_EPS), 0.0)
    palette = colormap_lut("tab10" if maps.shape[1] <= 10 else "tab20", img.device)
    colour = palette[which % len(palette)]
    a = (alpha * strength)[..., None]
    return (((1 - a) * rgb + a * colour) * 255).round().to(torch.uint8)


def save_concepts(
    images: Tensor,
    result: Concepts,
    path: str | Path,
    names: Sequence[str] | None = None,
    alpha: float = 0.6,
    preset: str = "imagenet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    per_image: bool = True,
) -> Path:
    """Save the picture: each image with its concept overlay, and a legend naming each concept
    by its top classes (``names``: class id -> name; the ids themselves otherwise)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from camlens.viz import colormap_lut

    pics = concept_overlays(images, result.maps, alpha, preset, mean, std, per_image).cpu()
    pics = pics.numpy()
    k = result.concepts.shape[0]
    palette = colormap_lut("tab10" if k <= 10 else "tab20").numpy()
    handles = []
    for c in range(k):
        text = f"concept {c}"
        if result.labels is not None:
            ids = result.labels[c].tolist()
            text += ": " + ", ".join(names[i] if names else str(i) for i in ids)
        handles.append(Patch(color=palette[c % len(palette)], label=text))
    n = len(pics)
    cols = min(n, 6)
    rows = -(-n // cols)
    legend_rows = -(-k // 3)
    legend_h = 0.3 * legend_rows + 0.2
    height = 2.2 * rows + legend_h
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, pic in enumerate(pics):
        axes.flat[i].imshow(pic)
    fig.legend(handles=handles, loc="lower center", ncol=min(k, 3), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=legend_h / height, wspace=0.04,
                        hspace=0.04)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
