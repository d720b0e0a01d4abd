"""Complexity of a map: how many pixels does it spread its mass over?

- :func:`complexity`: the entropy of the map's fractional contributions (Bhatt et al., IJCAI
  2020), lower is simpler.
- :func:`sparseness`: the Gini index of the map (Chalasani et al., ICML 2020, after Hurley &
  Rickard 2009), higher is sparser.

Both take maps (B, *spatial) at any resolution (raw or upsampled, signed or not: the magnitude
|a| is what counts) and return one value per image, (B,), computed in float64 and returned as
float32. They need no model. Both are invariant to the scale of a map, so normalising it first
(as Quantus does by default) changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.errors import InputError


def _flat_magnitudes(maps: Tensor, name: str) -> Tensor:
    """|maps| as (B, N) float64, after checking the shape and the values."""
    if not isinstance(maps, Tensor) or maps.ndim < 2 or maps.shape[0] == 0 or maps[0].numel() < 1:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InputError(
            f"{name} takes maps (B, H, W) (or (B, *spatial)) with at least one image, got {shape}; "
            "pass Explanation.maps or a raw map"
        )
    if not bool(torch.isfinite(maps).all()):
        raise InputError(f"{name}: maps contain NaN or infinite values")
    return maps.detach().flatten(1).double().abs()


def complexity(maps: Tensor) -> Tensor:
    """Complexity (Bhatt, Weller & Moura, IJCAI 2020): the entropy of each map, (B,).

    p_i = |a_i| / sum_j |a_j|,   mu_C(a) = - sum_i p_i ln p_i   (0 ln 0 = 0),

    in nats, from 0 (all mass on one pixel) to ln N (uniform over the N pixels). Lower is
    better. Quantus' ``Complexity`` computes the same on the same maps (it adds 1e-12 inside
    the logarithm, a difference below 1e-9). A map that is zero everywhere has no fractional
    contributions; it gets ln N, the limit of a uniform map, i.e. it counts as the least
    concentrated map (Quantus gives NaN there).

    maps: (B, *spatial) -> (B,) float32.
    """
    a = _flat_magnitudes(maps, "complexity")
    total = a.sum(dim=1, keepdim=True)
    n = a.shape[1]
    p = torch.where(total > 0, a / total.clamp_min(torch.finfo(a.dtype).tiny), 1.0 / n)
    return (-torch.special.xlogy(p, p).sum(dim=1)).float()


def sparseness(maps: Tensor) -> Tensor:
    """Sparseness (Chalasani et al., ICML 2020): the Gini index of each map, (B,).

    With the magnitudes |a| sorted increasingly, a_(1) <= ... <= a_(N) (Hurley & Rickard,
    IEEE Trans. Inf. Theory 2009),

    G(a) = 1 - 2 sum_k (a_(k) / ||a||_1) (N - k + 1/2) / N
         = sum_k (2k - N - 1) a_(k) / (N sum_k a_(k)),

    from 0 (all pixels equal) to 1 - 1/N (one non-zero pixel). Higher is better (sparser).
    Quantus' ``Sparseness`` computes the same after adding 1e-7 to every value (a change of
    about 1e-7 N / sum|a| in relative terms). A map that is zero everywhere gets 0, as a
    constant map does.

    maps: (B, *spatial) -> (B,) float32.
    """
    a = _flat_magnitudes(maps, "sparseness").sort(dim=1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(dim=1)
    num = ((2 * k - n - 1) * a).sum(dim=1)
    safe = total.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(total > 0, num / (n * safe), 0.0).float()
