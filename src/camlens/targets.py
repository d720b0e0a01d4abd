"""Which scalar to explain: class ids for classifiers, or any callable on the model's output.

A target turns the model's output into one score per image, S (B,), and says which class ids
those scores belong to (-1 where a callable target has no class id). Later target kinds
(segmentation masks, detection boxes, embedding similarity) are callables of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from camlens.errors import TargetError, UnsupportedModelError

TargetSpec = Union[None, int, Sequence[int], Tensor, Callable[[Any], Tensor]]


def _describe(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        return f"a dict with keys {list(output)[:8]}"
    return f"a {type(output).__name__}"


def logits_of(output: Any, batch: int) -> Tensor:
    """Check that the model returned (B, classes) logits and return them."""
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != batch:
        raise UnsupportedModelError(
            f"the model returned {_describe(output)}; camlens expects (B, classes) logits with "
            f"B={batch} for class targets. For other outputs (segmentation, detection, "
            "embeddings), pass target=callable(output) -> (B,) scores."
        )
    return output


def class_ids(target: TargetSpec, logits: Tensor) -> Tensor:
    """Normalise a class target to a (B,) long tensor of class ids on the logits' device.

    None: each image's top class. int: the same class for all images. Sequence or tensor of B
    ints: one class per image.
    """
    batch, num_classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TargetError(f"target must be a class id, got {target!r}")
    if isinstance(target, int):
        ids = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            ids = torch.as_tensor(target, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TargetError(
                f"target must be None, an int, a sequence of {batch} ints or a callable; "
                f"got {target!r}"
            ) from exc
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TargetError(f"target class ids must be integers, got dtype {ids.dtype}")
        ids = ids.long().reshape(-1) if ids.ndim <= 1 else ids
        if ids.ndim != 1 or ids.numel() != batch:
            raise TargetError(
                f"target has {ids.numel()} class ids (shape {tuple(ids.shape)}) but the batch has "
                f"{batch} images; pass one id per image, or a single int for all"
            )
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        raise TargetError(
            f"target class id(s) {ids[bad].unique().tolist()} out of range: the model has "
            f"{num_classes} classes, so ids must be in [0, {num_classes - 1}]"
        )
    return ids


def select_scores(
    target: TargetSpec,
    output: Any,
    batch: int,
    copies: int = 0,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The scores to explain and their class ids, both (N,), for a target and the model output.

    The output holds ``batch`` images followed, when ``copies`` > 0, by ``batch * copies``
    noisy copies in image-major order: class targets are resolved on the first ``batch`` rows
    (None means each clean image's top class) and repeated for its copies. ``score``, when
    given, maps (logits, class ids) to the scores instead of the logits themselves (Finer-CAM).
    """
    total = batch * (1 + copies)
    if callable(target) and not isinstance(target, Tensor):
        scores = target(output)
        if not isinstance(scores, Tensor) or scores.shape != (total,):
            raise TargetError(
                f"a callable target must return a (B,) = ({total},) tensor of scores, "
                f"got {_describe(scores)}"
            )
        return scores, torch.full((total,), -1, dtype=torch.long, device=scores.device)
    logits = logits_of(output, total)
    ids = class_ids(target, logits[:batch])
    if copies:
        ids = torch.cat([ids, ids.repeat_interleave(copies)])
    if score is not None:
        return score(logits, ids), ids
    return logits.gather(1, ids[:, None])[:, 0], ids
