"""Metrics that explain changed images again: one way to turn a method into a map function.

Coherency / ADCC explain the image seen through its own map, max-sensitivity explains noisy
copies. Both accept a registered method name (with its layer and explain options) or any
callable f(model, images, class_ids) -> maps (B, H, W), as the sanity checks do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import camlens
from camlens.layers import LayerSpec

#: A method to re-run: f(model, images, class_ids) -> maps (B, H, W).
MapFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def map_fn(method: str | MapFn, layer: LayerSpec, options: dict[str, Any]) -> MapFn:
    """``method`` as a map function; a name builds one :class:`camlens.Explainer` (the automatic
    layer is found once) and returns its normalised maps, ``Explanation.maps``."""
    if callable(method):
        return method
    camlens.method_info(method)  # a clear error for an unknown name, before any work
    explainers: dict[int, camlens.Explainer] = {}

    def run(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        key = id(model)
        if key not in explainers:
            explainers[key] = camlens.Explainer(model, method, layer, **options)
        return explainers[key](images, ids).maps

    return run


def chunked_maps(fn: MapFn, model: nn.Module, images: Tensor, ids: Tensor, size: int) -> Tensor:
    """``fn`` over ``images`` ``size`` at a time, concatenated: (B, H, W) float32."""
    step = max(1, int(size))
    parts = [
        fn(model, images[i : i + step], ids[i : i + step]).float()
        for i in range(0, images.shape[0], step)
    ]
    return torch.cat(parts)
