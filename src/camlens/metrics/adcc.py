"""ADCC (Poppi et al., Revisiting the evaluation of class activation mapping for explainability:
a novel metric and experimental analysis, CVPR Workshops 2021).

One score per image from three: Average Drop (is the map faithful?), Coherency (does the map
stay the same when the model sees only what the map shows?) and Complexity (how much of the
image does the map light up?), combined by their harmonic mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camlens.engine import preserved_model
from camlens.errors import InputError
from camlens.layers import LayerSpec
from camlens.metrics.faithfulness import masked_confidence
from camlens.metrics.perturbation import (
    Score,
    check_baseline,
    check_images_maps,
    resolve_targets,
)
from camlens.metrics.reexplain import MapFn, chunked_maps, map_fn
from camlens.targets import TargetSpec


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of maps (B, *spatial), (B,), computed in float64.

    rho = Cov(a, b) / (sigma_a sigma_b) over the pixels of one image. Where either map is
    constant the correlation is undefined; it is reported as 0, as :func:`spearman` does.
    """
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    den = x.norm(dim=1) * y.norm(dim=1)
    ok = den > 0
    return torch.where(ok, (x * y).sum(dim=1) / torch.where(ok, den, 1.0), 0.0).float()


def _unit_maps(images: Tensor, maps: Tensor) -> Tensor:
    maps = check_images_maps(images, maps)
    if bool((maps < 0).any()) or bool((maps > 1).any()):
        raise InputError(
            "maps must lie in [0, 1] (they multiply the image); pass Explanation.maps "
            "(normalised), not the raw maps"
        )
    return maps


def _seen_through(images: Tensor, maps: Tensor, baseline: float | Tensor) -> Tensor:
    """x o L in the model's input space: baseline + L (x - baseline)."""
    base = check_baseline(baseline, images)
    return base + maps[:, None] * (images - base)


def coherency(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    method: str | MapFn,
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    baseline: float | Tensor = 0.0,
    batch_size: int = 64,
    **options: Any,
) -> Tensor:
    """Coherency (Poppi et al., CVPRW 2021), (B,) in [0, 1], higher is better.

    Coherency(x) = 1/2 (Cov(L^c(x o L^c(x)), L^c(x)) / (sigma_{L^c(x o L^c(x))}
    sigma_{L^c(x)}) + 1): the Pearson correlation, mapped to [0, 1], of the map L^c(x) and the
    map the same method gives for the same class on the image seen through its own map. A map
    that shows all the model needs explains the masked image in the same way.

    ``maps``: L^c(x), (B, H, W) in [0, 1] (``Explanation.maps``; lower resolutions are
    upsampled). ``method``: a registered name (with ``layer`` and explain ``options``) or
    f(model, images, class_ids) -> maps, the method that made ``maps``. ``targets``: the
    classes c (None: each image's top class). ``baseline``: the input value of a hidden pixel,
    as in :func:`camlens.metrics.masked_confidence` (0: the paper's product x o L for inputs in
    pixel units; :func:`camlens.metrics.black` for normalised inputs). Where either map is
    constant the correlation counts as 0 (coherency 1/2); the paper's code gives NaN there.
    """
    maps = _unit_maps(images, maps)
    _, ids = resolve_targets(model, images, targets, batch_size)
    return _coherency(model, images, maps, method, ids, layer, baseline, batch_size, options)


def _coherency(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    method: str | MapFn,
    ids: Tensor,
    layer: LayerSpec,
    baseline: float | Tensor,
    batch_size: int,
    options: dict[str, Any],
) -> Tensor:
    """Coherency of unit ``maps`` for the resolved class ``ids`` (B,)."""
    fn = map_fn(method, layer, {"batch_size": batch_size, **options})
    masked = _seen_through(images, maps, baseline)
    with preserved_model(model):
        again = chunked_maps(fn, model, masked, ids, batch_size)
    if again.shape != maps.shape:
        again = check_images_maps(images, again)
    return (pearson(again, maps) + 1) / 2


@dataclass
class Adcc:
    """ADCC and its three parts, each (B,).

    Attributes:
        coherency: see :func:`coherency`, in [0, 1], higher is better.
        complexity: ADCC's complexity, the L1 norm of the map per pixel,
            ||L^c(x)||_1 / (H W), in [0, 1], lower is better. This is not
            :func:`camlens.metrics.complexity` (an entropy).
        drop: ADCC's average drop, max(0, Y^c - O^c) / Y^c, in [0, 1] (a fraction, where
            :func:`camlens.metrics.average_drop` gives %), lower is better.
        targets: the class ids explained.
    """

    coherency: Tensor
    complexity: Tensor
    drop: Tensor
    targets: Tensor

    @property
    def adcc(self) -> Tensor:
        """3 / (1/Coherency + 1/(1 - Complexity) + 1/(1 - AverageDrop)), (B,); 0 where a term
        is 0 (the harmonic mean's limit)."""
        terms = torch.stack([self.coherency, 1 - self.complexity, 1 - self.drop]).double()
        positive = (terms > 0).all(dim=0)
        safe = torch.where(terms > 0, terms, 1.0)
        return torch.where(positive, 3 / (1 / safe).sum(dim=0), 0.0).float()


def adcc_parts(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    method: str | MapFn,
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    baseline: float | Tensor = 0.0,
    score: Score = "prob",
    batch_size: int = 64,
    **options: Any,
) -> Adcc:
    """ADCC's three parts (Poppi et al., CVPRW 2021); the arguments as :func:`adcc`."""
    maps = _unit_maps(images, maps)
    logits, ids = resolve_targets(model, images, targets, batch_size)  # the one clean pass
    coh = _coherency(model, images, maps, method, ids, layer, baseline, batch_size, options)
    conf = masked_confidence(
        model,
        images,
        maps,
        ids,
        baseline=baseline,
        score=score,
        batch_size=batch_size,
        logits=logits,
    )
    complexity = maps.flatten(1).double().abs().mean(dim=1).float()
    return Adcc(coh, complexity, conf.drop / 100, ids)


def adcc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    method: str | MapFn,
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    **kwargs: Any,
) -> Tensor:
    """ADCC (Poppi et al., CVPRW 2021), (B,) in [0, 1], higher is better.

    ADCC(x) = 3 (1 / Coherency(x) + 1 / (1 - Complexity(x)) + 1 / (1 - AverageDrop(x)))^-1,

    the harmonic mean of :func:`coherency`, one minus the map's mean value
    Complexity(x) = ||L^c(x)||_1 / (H W) (the paper writes the L1 norm; its code divides it by
    the pixel count so that the term lies in [0, 1], as here) and one minus the Average Drop
    max(0, Y^c - O^c) / Y^c as a fraction (Y^c: the class probability on x, O^c: on x o L^c(x)).
    The paper's code scores the drop from the top class's probability even where another class
    is explained; here both are the explained class's, as the paper's formula reads.

    ``maps``: (B, H, W) in [0, 1], the ``Explanation.maps`` of ``method`` for ``targets``.
    ``method``: a registered name (with ``layer`` and explain options) or f(model, images,
    class_ids) -> maps, used again on the masked images for the coherency. Keyword arguments:
    ``baseline`` (the input value of a hidden pixel, see :func:`coherency`), ``score``
    ("prob", the paper's, or "logit"), ``batch_size``, and explain options. One call of
    ``method`` and two no-grad forward passes per image. :func:`adcc_parts` gives the parts.
    """
    return adcc_parts(model, images, maps, method, targets, layer, **kwargs).adcc
