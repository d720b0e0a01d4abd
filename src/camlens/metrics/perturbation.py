"""What the faithfulness metrics share: checked inputs, pixel ranks and batched scoring.

Every faithfulness metric asks the same question many times: what does the model score for
image ``i`` once some of its pixels are changed? Perturbed images are built chunk by chunk
(never all at once), scored in no-grad batches of ``batch_size`` on the model's device by a
:class:`camlens.probe.Probe`, and the model is left exactly as it came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from camlens.engine import preserved_model
from camlens.errors import InputError
from camlens.maps import upsample
from camlens.probe import Probe
from camlens.targets import TargetSpec, class_ids, logits_of

Score = Literal["prob", "logit"]
#: build(start, stop) -> (perturbed images for items start..stop-1, owner image of each item)
Builder = Callable[[int, int], tuple[Tensor, Tensor]]


def check_images_maps(images: Tensor, maps: Tensor) -> Tensor:
    """Check images (B, C, H, W) and maps (B, h, w); return the maps at the images' size.

    Maps at a lower resolution (raw maps) are upsampled bilinearly; maps are only ranked or
    used as weights, so they need not be normalised, except where a metric says so.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise InputError(
            f"images must be a (B, C, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InputError(
            f"maps must be (B, H, W) with B={images.shape[0]} (one per image), got {shape}; "
            "pass Explanation.maps"
        )
    if not bool(torch.isfinite(maps).all()):
        raise InputError("maps contain NaN or infinite values")
    return upsample(maps.to(images.device).float(), tuple(images.shape[-2:]))


def resolve_targets(
    model: nn.Module, images: Tensor, targets: TargetSpec, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Run the model (eval, no grad, ``batch_size`` images at a time) and return its logits
    (B, K) and the class ids (B,).

    ``targets``: None (each image's top class), an int, or one class id per image.
    """
    if callable(targets) and not isinstance(targets, Tensor):
        raise InputError("the metrics score class ids; pass an int or one id per image as targets")
    step = max(1, int(batch_size))
    with preserved_model(model), torch.no_grad():
        parts = [
            logits_of(model(images[i : i + step]), len(images[i : i + step])).float()
            for i in range(0, images.shape[0], step)
        ]
    logits = torch.cat(parts)
    return logits, class_ids(targets, logits)


def pick(logits: Tensor, ids: Tensor, score: Score) -> Tensor:
    """The score of class ``ids`` in each row: its softmax probability or its logit."""
    if score == "prob":
        logits = logits.softmax(dim=1)
    elif score != "logit":
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")
    return logits.gather(1, ids[:, None])[:, 0]


def pixel_ranks(maps: Tensor) -> Tensor:
    """Rank of every pixel by decreasing map value: (B, H, W) -> (B, H*W) long, 0 = most relevant.

    Ties keep raster order (a stable sort), so the ranking is deterministic.
    """
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def score_items(
    model: nn.Module,
    images: Tensor,
    ids: Tensor,
    n: int,
    build: Builder,
    score: Score,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Tensor:
    """Score ``n`` perturbed images built chunk by chunk: (n,) scores of each owner's class."""
    if score not in ("prob", "logit"):
        raise InputError(f"score must be 'prob' or 'logit', got {score!r}")

    def run(inputs: Tensor, owner: Tensor) -> Tensor:
        return model(inputs)

    probe = Probe(run, images, None, ids, None, batch_size, progress, desc=desc)
    with preserved_model(model):
        return probe.scores(n, build, softmax=score == "prob")


def check_baseline(baseline: float | Tensor, images: Tensor) -> Tensor:
    """The value of a removed pixel, broadcast to (1 or B, C, H, W) on the images' device."""
    value = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        torch.broadcast_shapes(value.shape, images.shape)
    except RuntimeError as exc:
        raise InputError(
            f"baseline of shape {tuple(value.shape)} does not broadcast to the images "
            f"{tuple(images.shape)}; pass a float, a (C, 1, 1) tensor or one like the images"
        ) from exc
    while value.ndim < 4:
        value = value.unsqueeze(0)
    return value


def black(mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The normalised value of a black pixel, (C, 1, 1): ``-mean / std``.

    The papers remove pixels in pixel space (multiply by 0); for a model whose input is
    normalised, pass ``baseline=black(mean, std)`` so that "removed" still means black.
    """
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    return (-m / s).view(-1, 1, 1)
