"""Localisation: how well maps point at the ground-truth object.

All functions take maps (B, H, W) (normalised maps in [0, 1] for :func:`iou`) and masks
(B, H, W) bool on the same device, and return a (B,) float tensor of per-image scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.errors import InputError


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise InputError(
            f"maps and masks must both be (B, H, W) of the same shape, got {tuple(maps.shape)} "
            f"and {tuple(masks.shape)}; upsample the maps to the mask size first"
        )


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Grow masks by a disk of ``radius`` pixels."""
    if radius <= 0:
        return masks
    r = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()[None, None]
    grown = F.conv2d(masks.float()[:, None], disk, padding=radius)[:, 0]
    return grown > 0


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016).

    A hit (1.0) when the map's maximum lies inside the mask, or within ``tolerance`` pixels of
    it (the paper uses 15 px at 224 x 224); a miss (0.0) otherwise. A map with no positive
    value points nowhere and counts as a miss; ties go to the first maximum in raster order.
    """
    _check(maps, masks)
    flat = maps.flatten(1)
    idx = flat.argmax(dim=1)
    hit = _dilate(masks, tolerance).flatten(1).gather(1, idx[:, None])[:, 0]
    return (hit & (flat.amax(dim=1) > 0)).float()


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020):

    sum_{ij in mask} M_ij / sum_ij M_ij        (maps clipped at 0; an all-zero map scores 0)
    """
    _check(maps, masks)
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(dim=1)
    inside = (pos * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


def iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of the thresholded map {M >= threshold} and the mask.

    Both empty gives 0 (nothing was found).
    """
    _check(maps, masks)
    pred = maps.flatten(1) >= threshold
    true = masks.flatten(1)
    inter = (pred & true).sum(dim=1).float()
    union = (pred | true).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)


def connected_components(masks: Tensor) -> Tensor:
    """Label the 8-connected components of (B, H, W) bool masks: (B, H, W) long, 0 = background.

    Each component's label is 1 + the largest raster index of its pixels (labels are unique
    within an image, not consecutive). Batched label propagation: every foreground pixel takes
    the maximum label of its 3 x 3 neighbourhood until nothing changes (as many rounds as the
    longest path inside a component).
    """
    if masks.ndim != 3:
        raise InputError(f"masks must be (B, H, W), got {tuple(masks.shape)}")
    h, w = masks.shape[1:]
    fg = masks.bool()
    index = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float64).view(1, h, w)
    labels = torch.where(fg, index, 0.0)
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        grown = torch.where(fg, grown, 0.0)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def _boxes_of(labels: Tensor, which: Tensor) -> Tensor:
    """Boxes (x0, y0, x1, y1), end-exclusive, of the pixels where labels == which (N,)."""
    h, w = labels.shape[1:]
    sel = labels == which.view(-1, 1, 1)
    rows, cols = sel.any(dim=2), sel.any(dim=1)
    ys = torch.arange(h, device=labels.device)
    xs = torch.arange(w, device=labels.device)
    big = max(h, w) + 1
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(sel.flatten(1).any(dim=1, keepdim=True), boxes, 0.0)


def largest_component_box(maps: Tensor, threshold: float = 0.2) -> Tensor:
    """The box around the largest 8-connected region of {M >= threshold * max M}, (B, 4).

    The weakly supervised localisation of CAM (Zhou et al., CVPR 2016, Sec. 3: 20% of the
    max; Grad-CAM used 15%). Boxes are (x0, y0, x1, y1) in pixels, end-exclusive; a map with
    no positive value gives the empty box (0, 0, 0, 0). Ties in size go to the component that
    ends last in raster order.
    """
    if maps.ndim != 3:
        raise InputError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    labels = connected_components((maps >= threshold * peak) & (peak > 0))
    b, h, w = labels.shape
    sizes = torch.zeros(b, h * w + 1, device=maps.device, dtype=torch.long)
    sizes.scatter_add_(1, labels.flatten(1), torch.ones_like(labels.flatten(1)))
    sizes[:, 0] = 0
    best = sizes.flip(1).argmax(dim=1)
    best = h * w - best  # the largest label among the largest components
    best = torch.where(sizes.amax(dim=1) > 0, best, -1)
    return _boxes_of(labels, best)


def component_boxes(masks: Tensor) -> list[Tensor]:
    """The box of every 8-connected component of each mask: a list of B (n_i, 4) tensors.

    Ground-truth boxes for :func:`box_localisation` when only masks are given (one box per
    separate object).
    """
    labels = connected_components(masks)
    out = []
    for i in range(labels.shape[0]):
        ids = labels[i].unique()
        ids = ids[ids > 0]
        out.append(_boxes_of(labels[i].expand(len(ids), -1, -1), ids))
    return out


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a (N, 4) and b (M, 4), end-exclusive pixel boxes: (N, M)."""
    wh = (
        torch.minimum(a[:, None, 2:], b[None, :, 2:])
        - torch.maximum(a[:, None, :2], b[None, :, :2])
    ).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0)


def box_localisation(
    maps: Tensor,
    boxes: Tensor | list[Tensor],
    threshold: float = 0.2,
    min_iou: float = 0.5,
) -> Tensor:
    """Bounding-box localisation (CAM, Zhou et al., CVPR 2016; ILSVRC's criterion).

    A hit (1.0) when the box of the map's largest component (:func:`largest_component_box`
    at ``threshold`` of the max) overlaps a ground-truth box with IoU >= ``min_iou`` (0.5).
    ``boxes``: (B, 4) one box per image, or a list of B (n_i, 4) tensors (any one may be
    hit), (x0, y0, x1, y1) end-exclusive pixels; :func:`component_boxes` makes them from masks.
    Returns (B,).
    """
    pred = largest_component_box(maps, threshold)
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape != (maps.shape[0], 4):
            raise InputError(
                f"boxes must be (B, 4) = ({maps.shape[0]}, 4) or a list of (n, 4) tensors, "
                f"got {tuple(boxes.shape)}"
            )
        boxes = list(boxes[:, None])
    if len(boxes) != maps.shape[0]:
        raise InputError(f"got {len(boxes)} box sets for {maps.shape[0]} maps; pass one per map")
    hits = []
    for i, gt in enumerate(boxes):
        gt = gt.to(pred.device).float().reshape(-1, 4)
        best = _box_iou(pred[i : i + 1], gt).amax() if len(gt) else pred.new_zeros(())
        hits.append((best >= min_iou).float())
    return torch.stack(hits)


def boxes_to_masks(boxes: Tensor | list[Tensor], size: tuple[int, int]) -> Tensor:
    """Masks (B, H, W) bool covering each image's boxes, for the mask-based metrics.

    ``boxes``: (B, 4) or a list of B (n_i, 4) tensors, (x0, y0, x1, y1) end-exclusive pixels
    (fractional coordinates cover the pixels whose centres fall inside). With boxes as masks,
    :func:`pointing_game` is the pointing game of the paper's box-annotated data sets.
    """
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"boxes must be (B, 4) or a list of (n, 4), got {tuple(boxes.shape)}")
        boxes = list(boxes[:, None])
    h, w = size
    out = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    for i, b in enumerate(boxes):
        b = b.detach().float().cpu().reshape(-1, 4)
        inside_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])  # (n, H)
        inside_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])  # (n, W)
        out[i] = (inside_y[:, :, None] & inside_x[:, None, :]).any(dim=0)
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    return out.to(device)
