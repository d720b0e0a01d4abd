"""Robustness: does the map stay put when the image barely changes?

:func:`max_sensitivity` (Yeh et al., On the (in)fidelity and sensitivity of explanations,
NeurIPS 2019): the largest change of the map over random inputs in a small ball around the
image, estimated by Monte-Carlo sampling, batched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camlens.engine import preserved_model
from camlens.errors import InputError
from camlens.layers import LayerSpec
from camlens.metrics.perturbation import check_images_maps, resolve_targets
from camlens.metrics.reexplain import MapFn, map_fn
from camlens.targets import TargetSpec


def _check_noise(noise: Tensor, images: Tensor) -> Tensor:
    if not isinstance(noise, Tensor) or noise.ndim != images.ndim + 1:
        shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise InputError(
            f"noise must be (S, B, C, H, W): S perturbations of each image, got {shape}"
        )
    try:
        return noise.to(images.device, images.dtype).expand(-1, *images.shape)
    except RuntimeError as exc:
        raise InputError(
            f"noise of shape {tuple(noise.shape)} does not fit the images "
            f"{tuple(images.shape)}; pass (S, B, C, H, W) perturbations"
        ) from exc


def max_sensitivity(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    method: str | MapFn,
    targets: TargetSpec = None,
    layer: LayerSpec = None,
    *,
    radius: float = 0.2,
    samples: int = 50,
    relative: bool = False,
    seed: int = 0,
    noise: Tensor | None = None,
    batch_size: int = 64,
    **options: Any,
) -> Tensor:
    """Max-sensitivity (Yeh et al., NeurIPS 2019), (B,), lower is better.

    SENS_MAX(Phi, f, x, r) = max_{||y - x|| <= r} ||Phi(f, y) - Phi(f, x)||,

    estimated as in the paper's experiments by Monte-Carlo sampling: ``samples`` inputs
    y_s = x + u_s with u_s uniform in the L-infinity ball of ``radius`` (each input value moved
    by U[-r, r], in the model's input units), Phi(f, y_s) the map of ``method`` for the same
    class, and the largest Frobenius norm of the difference over the samples. The paper's
    definition is the absolute change (``relative=False``, the default); ``relative=True``
    divides by ||Phi(f, x)||, as the paper's code and Quantus' ``MaxSensitivity`` do (where
    ||Phi(f, x)|| = 0 the ratio is inf, or 0 if the map did not change).

    ``maps``: Phi(f, x), (B, H, W), the maps of ``method`` for ``targets`` (lower resolutions
    are upsampled to the images' size, as the re-explained maps are). ``method``: a registered
    name (with ``layer`` and explain ``options``; its ``Explanation.maps`` are compared) or
    f(model, images, class_ids) -> maps. ``noise``: (S, B, C, H, W) perturbations to use instead
    of drawing them (to replay another tool's draws); else ``seed`` seeds the draws. All S x B
    noisy images are explained ``batch_size`` at a time (S calls of the method per image);
    only a running maximum is kept.
    """
    maps = check_images_maps(images, maps).double()
    if noise is not None:
        noise = _check_noise(noise, images)
        samples = noise.shape[0]
    if int(samples) < 1 or not radius >= 0:
        raise InputError(f"samples must be >= 1 and radius >= 0, got {samples} and {radius}")
    fn = map_fn(method, layer, {"batch_size": batch_size, **options})
    _, ids = resolve_targets(model, images, targets, batch_size)
    b = images.shape[0]
    n = int(samples) * b
    step = max(1, int(batch_size))
    gen = torch.Generator(device=images.device).manual_seed(seed)
    flat_noise = None if noise is None else noise.reshape(n, *images.shape[1:])
    best = torch.zeros(b, dtype=torch.float64, device=images.device)
    with preserved_model(model):
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            owner = torch.arange(lo, hi, device=images.device) % b  # sample-major order
            if flat_noise is None:
                u = torch.rand(
                    (hi - lo, *images.shape[1:]),
                    generator=gen,
                    device=images.device,
                    dtype=images.dtype,
                )
                u = (2 * u - 1) * radius
            else:
                u = flat_noise[lo:hi]
            changed = fn(model, images[owner] + u, ids[owner])
            changed = check_images_maps(images[owner], changed).double()
            diff = (changed - maps[owner]).flatten(1).norm(dim=1)
            best.scatter_reduce_(0, owner, diff, reduce="amax")
    if relative:
        norm = maps.flatten(1).norm(dim=1)
        safe = torch.where(norm > 0, norm, 1.0)
        best = torch.where(norm > 0, best / safe, torch.where(best > 0, torch.inf, 0.0))
    return best.float()
