"""Detectors on a list of images of different sizes (the input torchvision detectors accept).

The images are explained in one pass per distinct size (one forward and one batched gradient
for all the images and boxes of that size), and the result holds one map per image at its own
size: ``ex.maps`` is a list with one (T, H_i, W_i) tensor per image (T: the most boxes of any
image; an image with fewer has empty maps, id -1, score 0 after its own), ``ex.raw`` maps each
layer to a list of (T, h_i, w_i) raw maps, and ``targets``, ``scores`` and the extras
(``boxes``, ``matched``, ...) are (B, T) tensors as for one size.

Why not one padded batch: a detector pads a batch to its largest image, and its own padding is
not neutral (after the first normalisation or bias the padded pixels are no longer zero), so
the features near an image's border, hence its boxes and maps, would depend on the other images
in the batch. Grouping by size keeps every image's explanation exactly what explaining it alone
gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camlens.detection.yolo import yolo_head
from camlens.errors import InputError
from camlens.explanation import Explanation
from camlens.layouts import detector_transform
from camlens.targets import Detections

if TYPE_CHECKING:
    from camlens.engine import Explainer


def is_image_list(images: Any) -> bool:
    """A non-empty list or tuple of tensors."""
    return (
        isinstance(images, (list, tuple))
        and len(images) > 0
        and all(isinstance(i, Tensor) for i in images)
    )


def needs_grouping(model: nn.Module, images: Any) -> bool:
    """Whether :func:`explain_list` handles this call: a list of images given to a YOLO model
    (which takes one tensor), or a list of images of several sizes."""
    if not is_image_list(images):
        return False
    return yolo_head(model) is not None or len({tuple(i.shape) for i in images}) > 1


def explain_list(explainer: Explainer, images: Sequence[Tensor], target: Any) -> Explanation:
    """Explain a list of (C, H_i, W_i) images with a detector, one pass per distinct size.

    One size: the plain result (maps (B, T, H, W)). Several: see the module's docstring.
    """
    model = explainer.model
    yolo = yolo_head(model) is not None
    if not yolo and detector_transform(model) is None:
        sizes = sorted({tuple(i.shape) for i in images})
        raise InputError(
            f"a list of images of different sizes {sizes} is for detectors (torchvision "
            "detectors, Ultralytics YOLO); resize them to one size and pass a (B, C, H, W) "
            "tensor"
        )
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    batch = len(images)
    runs: list[tuple[list[int], Explanation]] = []
    for idx in groups.values():
        part = [images[i] for i in idx]
        given = torch.stack(part) if yolo else part
        runs.append((idx, explainer(given, _subset(target, idx, batch))))
    if len(runs) == 1:
        return runs[0][1]
    ex = _assemble(runs, batch)
    ex.images = list(images)  # one (C, H_i, W_i) picture per map, for ex.show() / ex.html()
    return ex


def _subset(target: Any, idx: list[int], batch: int) -> Any:
    """The part of a per-image target spec that belongs to images ``idx``."""
    if isinstance(target, Detections):
        boxes, labels = target.given(batch)
        part = Detections(
            None if all(b is None for b in boxes) else [boxes[i] for i in idx],
            None if all(lab is None for lab in labels) else [labels[i] for i in idx],
            target.iou,
            target.score_threshold,
            target.nms_iou,
            target.max_det,
        )
        return part
    if isinstance(target, Tensor) and target.ndim >= 1 and target.shape[0] == batch:
        return target[torch.as_tensor(idx, device=target.device)]
    if isinstance(target, (list, tuple)) and len(target) == batch:
        return [target[i] for i in idx]
    return target  # None, an int, a target or a callable: the same for every image


def _pad(x: Tensor, t: int, dim: int = 1) -> Tensor:
    """Pad dimension ``dim`` of ``x`` to ``t``: -1 for integers, False for bools, else 0."""
    missing = t - x.shape[dim]
    if missing <= 0:
        return x
    value = False if x.dtype == torch.bool else (-1 if not x.is_floating_point() else 0)
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def _assemble(runs: list[tuple[list[int], Explanation]], batch: int) -> Explanation:
    first = runs[0][1]
    multi = first.targets.ndim == 2
    t = max(ex.targets.shape[1] for _, ex in runs) if multi else 1
    maps: list[Tensor | None] = [None] * batch
    raw: dict[str, list[Tensor | None]] = {name: [None] * batch for name in first.raw}
    targets: list[Tensor | None] = [None] * batch
    scores: list[Tensor | None] = [None] * batch
    extras: dict[str, list[Tensor | None]] = {k: [None] * batch for k in first.extras}
    for idx, ex in runs:
        for j, i in enumerate(idx):
            maps[i] = _pad(ex.maps[j], t, 0) if multi else ex.maps[j]
            for name, r in ex.raw.items():
                raw[name][i] = _pad(r[j], t, 0) if multi else r[j]
            targets[i] = _pad(ex.targets[j], t, 0) if multi else ex.targets[j]
            scores[i] = _pad(ex.scores[j], t, 0) if multi else ex.scores[j]
            for key, value in ex.extras.items():
                if key in extras and isinstance(value, Tensor) and value.shape[:1] == (len(idx),):
                    per = value[j]
                    extras[key][i] = _pad(per, t, 0) if multi and per.ndim >= 1 else per
    stacked = {}
    for key, values in extras.items():
        if all(v is not None for v in values) and len({tuple(v.shape) for v in values}) == 1:
            stacked[key] = torch.stack(values)
    return Explanation(
        maps=maps,
        raw=raw,
        targets=torch.stack(targets),
        scores=torch.stack(scores),
        layers=first.layers,
        method=first.method,
        logits=None,
        extras=stacked,
    )
