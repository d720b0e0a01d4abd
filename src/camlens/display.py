"""From raw maps, one per layer, to the displayed maps of an explanation.

ReLU, upsampling and min-max for one layer; LayerCAM's fusion for several; a detector's padded
frame cropped to the resized image. The maths of each step is in :mod:`camlens.maps` and
:mod:`camlens.fusion`; this module puts them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from camlens.caller import warn_user
from camlens.fusion import fuse_layers
from camlens.layouts import primary_or_none
from camlens.maps import minmax, to_heatmap, upsample

Frame = tuple[tuple[int, ...], tuple[int, ...]]  # (padded, resized) size of a detector's input


def display_maps(
    raws: list[Tensor],
    size: tuple[int, ...],
    prepare: Callable[[Tensor], Tensor] | None = None,
    fuse_one: bool = False,
) -> Tensor:
    """Raw maps (B, *s) or (B, T, *s), one per layer -> displayed maps (B[, T], *size) in [0, 1]:
    ReLU, upsampling and min-max for one layer, LayerCAM's fusion for several (or always, with
    ``fuse_one``). ``prepare`` maps each (N, *s) raw first (a detector's frame crop)."""
    nd = len(size)
    lead = raws[0].shape[: raws[0].ndim - nd]  # (B,) or (B, T)
    flat = [r.reshape(-1, *r.shape[-nd:]) for r in raws]
    if prepare is not None:
        flat = [prepare(r) for r in flat]
    if len(flat) == 1 and not fuse_one:
        maps = to_heatmap(flat[0], size)
    else:
        maps = minmax(fuse_layers(flat, size))
    return maps.view(*lead, *size)


def framed(raw: Tensor, frame: Frame | None) -> Tensor:
    """A detector's feature map covers the resized image plus its padding to a multiple of
    32: upsample the positive map to the padded size and keep the resized image's pixels,
    so that it lines up with the input after the final resize. raw: (N, *s)."""
    if frame is None:
        return raw
    padded, resized = frame
    if len(padded) != raw.ndim - 1 or any(r > p for r, p in zip(resized, padded, strict=True)):
        return raw
    full = upsample(raw.clamp(min=0), padded)
    return full[(slice(None), *(slice(0, r) for r in resized))]


def logits_or_none(output: Any, batch: int) -> Tensor | None:
    """The (B, classes) logits of a classifier's output (for Explanation.logits), else None."""
    out = primary_or_none(output)
    return out[:batch] if out is not None and out.ndim == 2 else None


def warn_empty_maps(raws: list[Tensor], nd: int, layers: list[str] | None, method: str) -> None:
    """Warn when a raw map is <= 0 everywhere but not zero: after the ReLU its map is empty.

    raws: one (B, *s) or (B, T, *s) raw map per layer, ``nd`` spatial dimensions. A map that is
    exactly zero (a zero gradient, already warned about; a padded detection) is not reported.
    """
    for name, raw in zip(layers or [], raws, strict=False):
        flat = raw.reshape(-1, *raw.shape[raw.ndim - nd :]).flatten(1)
        empty = (flat.amax(dim=1) <= 0) & (flat.amin(dim=1) < 0)
        if bool(empty.any()):
            where = empty.view(raw.shape[: raw.ndim - nd]).nonzero()[:5].tolist()
            warn_user(
                f"the {method} raw map of layer {name!r} is <= 0 everywhere at (image[, target]) "
                f"{where}{' ...' if int(empty.sum()) > 5 else ''}, so its map is empty after the "
                "ReLU: nothing in the layer speaks for the target (untrained weights, or a target "
                "the image speaks against: try targets.counterfactual, another layer or method)"
            )
