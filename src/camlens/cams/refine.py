"""RefineCAM: the product of several layers' maps, each scaled to [0, 1].

Domeniconi, Stramiglio, Lombardi & Salti, "How to Evaluate and Refine your CAM",
arXiv:2605.14641 (2026).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from camlens.cams.model_based import ModelCall, ModelResult
from camlens.errors import InputError, LayerError
from camlens.maps import minmax, upsample
from camlens.registry import get_method, register


def refine_product(raws: Sequence[Tensor]) -> Tensor:
    """RefineCAM's fusion of per-layer raw maps.

        M_l' = (ReLU(M_l) - min) / (max - min)      per image (and target), at layer l's size
        M    = prod_l up(M_l')                      bilinear to the finest layer's size

    raws[l]: (N, *s_l) -> (N, *s) with s the largest spatial size. Each factor is the *scaled*
    map: pytorch-grad-cam 1.5.7's RefineCAM rescales a loop variable (a copy) and multiplies the
    maps it was given (already min-max scaled at the input's resolution, so the two agree up to
    where the scaling and the upsampling happen); TorchCAM scales, then resizes, as here.
    A constant layer map scales to zeros (:func:`camlens.maps.minmax`), so the product is zero.
    """
    if len(raws) < 2:
        raise LayerError("refinecam multiplies the maps of at least two layers")
    sizes = [tuple(r.shape[1:]) for r in raws]
    size = tuple(max(s[d] for s in sizes) for d in range(len(sizes[0])))
    product: Tensor | None = None
    for raw in raws:
        scaled = upsample(minmax(raw.clamp(min=0)), size)
        product = scaled if product is None else product * scaled
    assert product is not None
    return product


@register(
    "refinecam",
    inputs="model",
    paper="Domeniconi, Stramiglio, Lombardi & Salti, How to Evaluate and Refine your CAM, "
    "arXiv:2605.14641",
)
def refinecam(call: ModelCall, base: str = "gradcampp") -> ModelResult:
    """RefineCAM: ``base``'s maps at the layers of ``layer=[...]``, multiplied.

        raw = prod_l up(minmax(ReLU(M_l^base)))      (see :func:`refine_product`)

    Shallow layers give sharp but noisy maps, deep layers coarse but class-specific ones; their
    product keeps what all agree on, at the finest layer's resolution. ``base``: any layer
    method (default ``"gradcampp"``, as the paper and both peers); its maps at all layers come
    from one call (one forward and one gradient for the gradient methods). Several targets per
    image are handled by the base method: raw (B, T, *s). raw ``{"refinecam": ...}``; the
    displayed map is the product upsampled to the image and min-max normalised (not the
    LayerCAM fusion the engine applies to several layers of other methods).
    """
    if call.explain is None:
        raise InputError("refinecam needs the engine's explain callback")
    info = get_method(base)
    if info.inputs == "model" or info.name == "refinecam":
        raise InputError(
            f"refinecam's base must be a layer method (gradcam, gradcampp, layercam, ...), "
            f"got {base!r}"
        )
    if call.layer_auto or len(call.layers) < 2:
        raise LayerError(
            "refinecam multiplies the maps of several layers: pass layer=[...] with at least "
            "two layers, e.g. layer=['layer2', 'layer3', 'layer4'] for a ResNet"
        )
    ex = call.explain(info.name, call.layers)
    raws = [ex.raw[name] for name, _ in call.layers]
    spatial = call.images.ndim - 2
    lead = raws[0].shape[: raws[0].ndim - spatial]
    flat = [r.reshape(-1, *r.shape[-spatial:]) for r in raws]
    with torch.no_grad():
        product = refine_product(flat)
        maps = minmax(upsample(product, tuple(call.images.shape[2:])))  # per image and target
    return ModelResult(
        raw={"refinecam": product.view(*lead, *product.shape[1:])},
        maps=maps.view(*lead, *maps.shape[1:]),
        scores=ex.scores,
        class_ids=ex.targets,
        extras=dict(ex.extras),
    )
