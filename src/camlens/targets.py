"""Which scalar(s) to explain: class ids, the top k classes, segmentation masks, embedding
similarity, detected boxes, or any callable on the model's output.

A target turns the model's output into scores, (B,) for one target per image or (B, T) for T
targets per image, and says which class ids those scores belong to (-1 where a target has no
class id). Several targets per image cost one forward and one batched gradient.

The names in this module are the contract:

- ``None``: each image's top class; an int: one class for all images; B ints: one per image;
  a (B, T) list or tensor of ints: T classes per image (multi-label).
- :func:`top` ``(k)``: the k highest classes of each image.
- :func:`segmentation` ``(class_id, mask=None)``: the sum of a class's logits over a mask.
- :func:`similarity` ``(reference)``: cosine similarity of the output embedding to a reference.
- :func:`detections` ``(boxes=None, labels=None, iou=0.5, score_threshold=0.5)``: one target
  per detected (or given) box of a torchvision or Ultralytics YOLO detector.
- :func:`output` ``(index=None, sign=+1)``: a raw output, signed (regression, sigmoid heads);
  :func:`counterfactual` ``(c)``: what speaks against c (:mod:`camlens.targets_output`).
- :func:`text` ``(prompts, model)``: an image-text model's similarity to text prompts
  (:mod:`camlens.targets_text`).
- any callable ``output -> (B,)`` or ``(B, T)`` scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.caller import warn_user
from camlens.errors import TargetError, UnsupportedModelError
from camlens.layouts import describe, is_detections, primary_output

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Selection:
    """What a target selects: ``scores`` (N,) or (N, T) (differentiable), ``ids`` of the same
    shape (-1: no class id), and ``extras`` (e.g. the boxes of detection targets)."""

    scores: Tensor
    ids: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class Target:
    """Base class of camlens' targets: ``select(output, batch, copies)`` -> :class:`Selection`.

    ``output`` holds ``batch`` images followed, when ``copies`` > 0, by ``batch * copies`` noisy
    copies in image-major order; what a target decides from the output (the top classes, the
    predicted pixels) is decided on the clean images and repeated for their copies.
    """

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        """The scores to explain, (B,) or (B, T), and their class ids, read from the model's
        ``output`` for ``batch`` images (and ``copies`` noisy copies of each, after them);
        ``score`` turns logits into scores."""
        raise NotImplementedError

    def __call__(self, output: Any) -> Tensor:
        """The scores alone, so that a target can also be used as a plain callable."""
        return self.select(output, _batch_of(output)).scores


TargetSpec = Union[None, int, Sequence[int], Sequence[Sequence[int]], Tensor, Target, Callable]


def _batch_of(output: Any) -> int:
    if is_detections(output):
        return len(output)
    return int(primary_output(output).shape[0])


def _repeat(x: Tensor, copies: int) -> Tensor:
    """Clean rows followed by each row repeated ``copies`` times (image-major)."""
    return torch.cat([x, x.repeat_interleave(copies, dim=0)]) if copies else x


def logits_of(output: Any, batch: int) -> Tensor:
    """The (B, classes) logits of a classifier's output (tensor, dict / ModelOutput, tuple)."""
    logits = primary_output(output)
    if logits.ndim != 2 or logits.shape[0] != batch:
        hint = (
            "for segmentation, pass target=camlens.targets.segmentation(class_id)"
            if logits.ndim >= 3
            else "for embeddings, pass target=camlens.targets.similarity(reference)"
        )
        raise UnsupportedModelError(
            f"the model returned {describe(output)}; class targets need (B, classes) logits "
            f"with B={batch}: {hint}, or a callable output -> (B,) scores"
        )
    return logits


def _ids_tensor(target: Any, batch: int, device: torch.device) -> Tensor:
    if isinstance(target, bool):
        raise TargetError(f"target must be a class id, got {target!r}")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    try:
        ids = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TargetError(
            f"target must be None, an int, {batch} ints, a ({batch}, T) table of ints, a "
            f"camlens.targets target or a callable; got {target!r}"
        ) from exc
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TargetError(f"target class ids must be integers, got dtype {ids.dtype}")
    ids = ids.long()
    if ids.ndim == 0:
        return ids.expand(batch).clone()
    if ids.ndim == 1 and ids.numel() == batch:
        return ids
    if ids.ndim == 2 and ids.shape[0] == batch and ids.shape[1] > 0:
        return ids
    raise TargetError(
        f"target has shape {tuple(ids.shape)} but the batch has {batch} images; pass one id per "
        f"image ({batch},), a single int for all, or ({batch}, T) ids for T classes per image"
    )


def class_ids(target: TargetSpec, logits: Tensor) -> Tensor:
    """Normalise a class target to (B,) or (B, T) long class ids on the logits' device.

    None: each image's top class. int: the same class for all images. B ints: one class per
    image. (B, T) ints: T classes per image.
    """
    batch, num_classes = logits.shape
    ids = logits.detach().argmax(dim=1) if target is None else None
    if ids is None:
        ids = _ids_tensor(target, batch, logits.device)
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        raise TargetError(
            f"target class id(s) {ids[bad].unique().tolist()} out of range: the model has "
            f"{num_classes} classes, so ids must be in [0, {num_classes - 1}]"
        )
    return ids


def _gather(logits: Tensor, ids: Tensor, score: ScoreFn | None) -> Tensor:
    """The scores of class ids (N,) or (N, T): the logits, or ``score(logits, ids)`` per column."""
    if ids.ndim == 1:
        return logits.gather(1, ids[:, None])[:, 0] if score is None else score(logits, ids)
    if score is None:
        return logits.gather(1, ids)
    return torch.stack([score(logits, ids[:, t]) for t in range(ids.shape[1])], dim=1)


class _Classes(Target):
    """Class ids given by the caller (None, int, B ints, (B, T) ints)."""

    def __init__(self, target: Any):
        self.target = target

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        logits = logits_of(output, batch * (1 + copies))
        ids = _repeat(class_ids(self.target, logits[:batch]), copies)
        return Selection(_gather(logits, ids, score), ids)


class Top(Target):
    """The ``k`` highest classes of each image, highest first: scores and ids (B, k)."""

    def __init__(self, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TargetError(f"top(k) needs a positive int k, got {k!r}")
        self.k = k

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        """Each image's ``k`` top classes (decided on the first ``batch`` outputs, without gradient)
        and their scores."""
        logits = logits_of(output, batch * (1 + copies))
        if self.k > logits.shape[1]:
            raise TargetError(f"top({self.k}) but the model has {logits.shape[1]} classes")
        ids = _repeat(logits[:batch].detach().topk(self.k, dim=1).indices, copies)
        return Selection(_gather(logits, ids, score), ids)

    def __repr__(self) -> str:
        return f"top({self.k})"


def top(k: int) -> Top:
    """Explain each image's ``k`` highest classes: maps (B, k, H, W), highest class first.

    One forward and one batched gradient for all k (``torch.autograd.grad`` with
    ``is_grads_batched``), not k runs."""
    return Top(k)


class Segmentation(Target):
    """S = sum over the mask's pixels of class c's logit, for (B, classes, *spatial) outputs."""

    def __init__(self, class_id: int | Sequence[int] | Tensor, mask: Tensor | None = None):
        self.class_id = class_id
        self.mask = mask

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        """The sum of the class's logits over the mask (or the pixels predicted as the class), per
        image."""
        logits = primary_output(output)
        total = batch * (1 + copies)
        if logits.ndim < 3 or logits.shape[0] != total:
            raise UnsupportedModelError(
                f"segmentation targets need (B, classes, H, W) logits, but the model returned "
                f"{describe(output)}"
            )
        classes = logits.shape[1]
        ids = _ids_tensor(self.class_id, batch, logits.device)
        if ids.ndim != 1:
            raise TargetError("segmentation(class_id): one class per image (an int or B ints)")
        if bool(((ids < 0) | (ids >= classes)).any()):
            raise TargetError(f"segmentation class id out of range [0, {classes - 1}]: {ids}")
        rows = torch.arange(batch, device=logits.device)
        chosen = logits[rows, ids]  # (B, *spatial) of the clean images
        if self.mask is None:
            mask = logits[:batch].detach().argmax(dim=1) == ids.view(-1, *[1] * (chosen.ndim - 1))
            empty = ~mask.flatten(1).any(dim=1)
            if bool(empty.any()):
                warn_user(
                    f"segmentation({self.class_id}): no pixel is predicted as the class in "
                    f"image(s) {empty.nonzero()[:, 0].tolist()}, so their score is 0 and their "
                    "map empty; pass mask= to explain a region"
                )
        else:
            mask = torch.as_tensor(self.mask, device=logits.device)
            given = tuple(mask.shape)
            if mask.ndim == chosen.ndim - 1:
                mask = mask.expand(batch, *mask.shape)
            if tuple(mask.shape) != tuple(chosen.shape):
                raise TargetError(
                    f"segmentation mask has shape {given}; the output's class maps "
                    f"are {tuple(chosen.shape)}: pass (B, H, W) or (H, W) at the output's size"
                )
        mask = _repeat(mask.to(logits.dtype), copies)
        ids_all = _repeat(ids, copies)
        picked = logits[torch.arange(total, device=logits.device), ids_all]
        return Selection((picked * mask).flatten(1).sum(dim=1), ids_all)


def segmentation(
    class_id: int | Sequence[int] | Tensor, mask: Tensor | None = None
) -> Segmentation:
    """Explain a segmentation model's class: S = sum_{(i,j) in mask} y^c_ij.

    ``mask`` (B, H, W) or (H, W) at the output's resolution (bool or weights); None: the pixels
    that the model predicts as ``class_id`` (argmax over classes, decided without gradient).
    Outputs: (B, classes, H, W) tensors, or torchvision's ``{"out": ..., "aux": ...}``.
    """
    return Segmentation(class_id, mask)


class Similarity(Target):
    """S = cos(f(x), r): cosine similarity of the output embedding with a reference."""

    def __init__(self, reference: Tensor):
        self.reference = reference

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        """The cosine similarity of each image's embedding with the reference; class ids -1."""
        emb = primary_output(output)
        total = batch * (1 + copies)
        if emb.shape[0] != total:
            raise UnsupportedModelError(
                f"similarity needs (B, D) embeddings, got {describe(output)}"
            )
        emb = emb.flatten(1)
        ref = torch.as_tensor(self.reference, device=emb.device, dtype=emb.dtype)
        given = tuple(ref.shape)
        if ref.ndim == 1:
            ref = ref.expand(batch, -1)
        if ref.ndim != 2 or ref.shape != (batch, emb.shape[1]):
            raise TargetError(
                f"similarity reference has shape {given}; the embeddings are "
                f"{tuple(emb.shape)}: pass ({emb.shape[1]},) or ({batch}, {emb.shape[1]})"
            )
        cos = F.cosine_similarity(emb, _repeat(ref, copies), dim=1)
        return Selection(cos, torch.full((total,), -1, dtype=torch.long, device=emb.device))


def similarity(reference: Tensor) -> Similarity:
    """Explain an embedding model (retrieval, CLIP-style image towers):
    S = <f(x), r> / (|f(x)| |r|), ``reference`` (B, D) or (D,)."""
    return Similarity(reference)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes (x1, y1, x2, y2): a (N, 4), b (M, 4) -> (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _per_image(value: Any, batch: int, what: str) -> list[Tensor | None]:
    if value is None:
        return [None] * batch
    if isinstance(value, Tensor) and value.ndim == (2 if what == "boxes" else 1):
        return [value] * batch  # one (T, 4) box tensor or (T,) labels for every image
    if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == batch:
        return list(value)
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return [None if v is None else torch.as_tensor(v) for v in value]
    raise TargetError(
        f"detections({what}=...) needs one entry per image ({batch}) or one tensor for all"
    )


Row = tuple[Tensor, Tensor, Tensor, Tensor]  # (scores, ids, boxes, matched) of one image


def match_given(
    given: Tensor,
    want: Tensor | None,
    d_boxes: Tensor,
    d_scores: Tensor,
    d_labels: Tensor,
    iou: float,
) -> Row:
    """Given boxes (T, 4) matched to detections (n, 4) of the same label (``want`` (T,), any
    label when None) by the highest IoU >= ``iou``: (scores (T,), ids (T,), boxes, matched).
    An unmatched box scores 0 (no gradient); its id is its given label, or -1."""
    device = d_scores.device
    given = given.to(device, torch.float32).reshape(-1, 4)
    if want is not None and want.numel() != given.shape[0]:
        raise TargetError("detections(): give one label per box")
    overlap = box_iou(given, d_boxes.detach().float())  # (T, n)
    if want is not None:
        overlap = torch.where(want[:, None] == d_labels[None, :], overlap, -1.0)
    if overlap.shape[1]:
        best_iou, best = overlap.max(dim=1)
    else:
        best_iou = torch.full((given.shape[0],), -1.0, device=device)
        best = torch.zeros(given.shape[0], dtype=torch.long, device=device)
    matched = best_iou >= iou
    picked = d_scores[best] if overlap.shape[1] else torch.zeros(given.shape[0], device=device)
    s = torch.where(matched, picked, torch.zeros_like(picked))
    ids = (
        want
        if want is not None
        else (d_labels[best] if overlap.shape[1] else torch.full_like(best, -1))
    )
    ids = torch.where(matched, ids, torch.full_like(ids, -1)) if want is None else ids
    return s, ids, given, matched


def stack_rows(
    rows: list[Row], threshold: float, more: dict[str, list[Tensor]] | None = None
) -> Selection:
    """Per-image rows (one per image, at least one) -> a (B, T) :class:`Selection`, padded to
    the most boxes T (id -1, score 0, box 0, not matched); ``more``: further per-image (T_i,)
    long extras, padded with -1. Warns when no image has a box."""
    if all(len(r[0]) == 0 for r in rows):
        warn_user(
            "detections(): no detection to explain (none scored >= "
            f"{threshold} or matched a given box); the maps are empty"
        )
    t = max(1, max(len(r[0]) for r in rows))
    dev = rows[0][0].device
    scores, ids, bxs, matched = [], [], [], []
    for s, i, b, m in rows:
        pad = t - len(s)
        scores.append(torch.cat([s, s.new_zeros(pad)]) if pad else s)
        ids.append(torch.cat([i.long(), i.new_full((pad,), -1).long()]))
        bxs.append(torch.cat([b.float(), b.new_zeros(pad, 4).float()]))
        matched.append(torch.cat([m, m.new_zeros(pad).bool()]))
    extras = {"boxes": torch.stack(bxs), "matched": torch.stack(matched)}
    for key, values in (more or {}).items():
        extras[key] = torch.stack(
            [torch.cat([v.long(), v.new_full((t - len(v),), -1)]) for v in values]
        )
    return Selection(torch.stack(scores).to(dev), torch.stack(ids).to(dev), extras)


class Detections(Target):
    """One target per detected (or given) box of a torchvision or Ultralytics YOLO detector.

    Without ``boxes``: every detection with score >= ``score_threshold`` (and, when ``labels``
    is given, of one of those labels). With ``boxes`` (x1, y1, x2, y2, in input pixels): each box
    is matched to the detection of the same label (any label if ``labels`` is None) with the
    highest IoU >= ``iou``; the score is that detection's class score. A box with no match has
    score 0 (no gradient, an empty map) and ``extras["matched"]`` False. Images with fewer
    boxes are padded to T (id -1, score 0). YOLO outputs: see :mod:`camlens.detection.yolo`
    (``nms_iou`` and ``max_det`` are its non-maximum suppression's settings).
    """

    def __init__(
        self,
        boxes: Any = None,
        labels: Any = None,
        iou: float = 0.5,
        score_threshold: float = 0.5,
        nms_iou: float = 0.7,
        max_det: int = 300,
    ):
        self.boxes, self.labels = boxes, labels
        self.iou, self.score_threshold = float(iou), float(score_threshold)
        self.nms_iou, self.max_det = float(nms_iou), int(max_det)

    def given(self, batch: int) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """The given boxes and labels, one entry per image (None: not given)."""
        return _per_image(self.boxes, batch, "boxes"), _per_image(self.labels, batch, "labels")

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        """One target per detected (or given and matched) box: its class score, label and box,
        padded to T per image (YOLO outputs: :func:`camlens.detection.yolo.select_yolo`)."""
        from camlens.detection.yolo import is_yolo_output, select_yolo

        if is_yolo_output(output):
            if copies:
                raise TargetError(
                    "detection targets do not support smooth= or noisy-sample methods"
                )
            return select_yolo(self, output, batch)
        # with noisy copies the output holds batch * (1 + copies) images: refused as such below
        if not is_detections(output) or len(output) != batch * (1 + copies):
            raise UnsupportedModelError(
                f"detections() needs a torchvision detector's output (a list of {batch} dicts "
                f"with boxes, labels, scores) or an Ultralytics YOLO model's, got "
                f"{describe(output)}"
            )
        if copies:
            raise TargetError("detection targets do not support smooth= or noisy-sample methods")
        boxes, labels = self.given(batch)
        rows: list[Row] = []
        for det, given, lab in zip(output, boxes, labels, strict=True):
            d_boxes, d_scores = det["boxes"], det["scores"]
            d_labels = det.get("labels", torch.zeros_like(d_scores, dtype=torch.long))
            device = d_scores.device
            if given is None:
                keep = d_scores.detach() >= self.score_threshold
                if lab is not None:
                    keep &= torch.isin(d_labels, lab.to(device).long().reshape(-1))
                idx = keep.nonzero()[:, 0]
                rows.append(
                    (
                        d_scores[idx],
                        d_labels[idx],
                        d_boxes[idx].detach(),
                        torch.ones_like(idx).bool(),
                    )
                )
                continue
            want = None if lab is None else lab.to(device).long().reshape(-1)
            rows.append(match_given(given, want, d_boxes, d_scores, d_labels, self.iou))
        return stack_rows(rows, self.score_threshold)


def detections(
    boxes: Any = None,
    labels: Any = None,
    iou: float = 0.5,
    score_threshold: float = 0.5,
    nms_iou: float = 0.7,
    max_det: int = 300,
) -> Detections:
    """Explain a detector's boxes, one map per box: torchvision (Faster R-CNN, RetinaNet, FCOS,
    SSD) and Ultralytics YOLO (v5u, v8, 11; detection and segmentation models).

    ``boxes``: None (every detection with score >= ``score_threshold``), or per image a
    (T_i, 4) tensor of (x1, y1, x2, y2) boxes to explain (one (T, 4) tensor for all images);
    ``labels``: the class of each given box (or, without boxes, the labels to keep). A given box
    explains the detection of its label with the highest IoU >= ``iou``.
    YOLO only (torchvision detectors run their own): ``nms_iou`` and ``max_det`` are the
    non-maximum suppression's IoU threshold and most boxes per image (Ultralytics' predictor
    defaults, 0.7 and 300; its default confidence is 0.25, pass ``score_threshold=0.25`` to
    get its boxes).
    Explanation: maps (B, T, H, W), scores/targets (B, T) in descending score,
    ``extras["boxes"]`` (B, T, 4) in input pixels.
    """
    return Detections(boxes, labels, iou, score_threshold, nms_iou, max_det)


class _Callable(Target):
    def __init__(self, fn: Callable[[Any], Tensor]):
        self.fn = fn

    def select(
        self, output: Any, batch: int, copies: int = 0, score: ScoreFn | None = None
    ) -> Selection:
        total = batch * (1 + copies)
        scores = self.fn(output)
        if not isinstance(scores, Tensor) or scores.ndim not in (1, 2) or scores.shape[0] != total:
            raise TargetError(
                f"a callable target must return a (B,) = ({total},) or (B, T) tensor of scores, "
                f"got {describe(scores)}"
            )
        return Selection(
            scores, torch.full(scores.shape, -1, dtype=torch.long, device=scores.device)
        )


def as_target(target: TargetSpec) -> Target:
    """Any accepted target spec as a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if callable(target) and not isinstance(target, Tensor):
        return _Callable(target)
    return _Classes(target)


def select_scores(
    target: TargetSpec,
    output: Any,
    batch: int,
    copies: int = 0,
    score: ScoreFn | None = None,
) -> Selection:
    """The scores to explain, their class ids and extras, for a target and the model output.

    The output holds ``batch`` images followed, when ``copies`` > 0, by ``batch * copies``
    noisy copies in image-major order. ``score``, when given, maps (logits, class ids (N,)) to
    the scores instead of the logits themselves (Finer-CAM).
    """
    return as_target(target).select(output, batch, copies, score)


#: targets of their own families live in modules of their own (they build on the classes above);
#: their names stay ``camlens.targets.NAME``, imported on first use (PEP 562)
_FAMILIES = {
    "Output": "camlens.targets_output",
    "output": "camlens.targets_output",
    "Counterfactual": "camlens.targets_output",
    "counterfactual": "camlens.targets_output",
    "Text": "camlens.targets_text",
    "text": "camlens.targets_text",
}


def __getattr__(name: str) -> Any:
    if name in _FAMILIES:
        import importlib

        return getattr(importlib.import_module(_FAMILIES[name]), name)
    raise AttributeError(f"module 'camlens.targets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FAMILIES])
