"""YOLO boxes explained at the scale that produced them, all boxes of a batch in a few gradients.

With ``layer=None``, a :func:`camlens.targets.detections` target and a gradient method (the
``(acts, grads)`` family: gradcam, layercam, hirescam, xgradcam, ...), a box found at scale l
(P3, P4, P5) is explained at the head's input at that scale, A_l = ``model.{head.f[l]}``:

    S_k = sigmoid(z_c(a)),  z = cv3_l(A_l)  (the class branch of the head at scale l)
    raw_k = method(A_l[b], dS_k/dA_l[b])   at A_l's resolution, upsampled to the image

dS_k/dA_l is the total derivative: A_l reaches the scores of scale l only through the class
branch cv3_l (the neck's next stages feed the other scales), so each A_l is made its own leaf
where the head receives it, and autograd records the head alone (backbone and neck run without
a graph).

Cost. cv3_l is a stack of stride-1 convolutions of total radius r_l (2 cells in YOLOv8 and
YOLO11), so dS_k/dA_l is zero outside the (2 r_l + 1)^2 cells around the box's anchor. Boxes
whose windows do not overlap (another image, another scale, or anchors more than 2 r_l cells
apart) share one backward: their scores are summed, and each box's gradient is its own window
of the sum, exactly. Cheaper still, and what camlens does: S_k is recomputed by running cv3_l
on the box's window of A_l alone (a (2 r + 1)^2 crop; a crop's edge never reaches the centre's
score), so all boxes' gradients come from one small batched forward and backward per window
shape, and the model's own forward runs entirely without a graph: explaining every box of an
image costs about one forward. Heads whose radius is unknown take the grouped path: boxes are
put greedily into groups of disjoint windows, and the groups of each scale go through one
batched backward (``is_grads_batched``) through that scale's class branch only. A head whose radius
cannot be read from its modules (anything but stride-1 convolutions and pointwise layers) gets
one group per box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camlens.detection.yolo import predictions, select_yolo, yolo_head
from camlens.display import display_maps
from camlens.errors import LayerError
from camlens.explanation import Explanation
from camlens.targets import Detections

if TYPE_CHECKING:
    from camlens.engine import Explainer

_POINTWISE = (
    nn.BatchNorm2d,
    nn.Identity,
    nn.SiLU,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.GELU,
    nn.Sigmoid,
    nn.Dropout,
)


#: re-run the class branch on each box's window (exact, and about free); False: one batched
#: backward through the full branch per group of boxes with disjoint windows (the path of
#: heads whose radius is unknown; kept switchable so that tests pin both)
CROPS = True


def applies(explainer: Explainer, target: Any) -> bool:
    """Whether a call is explained per scale: an Ultralytics detector, ``layer=None``, a
    detections target and a plain gradient method (no ``smooth``, no ``exact``)."""
    info = explainer.method
    return (
        explainer._auto_layer
        and isinstance(target, Detections)
        and info.inputs == "grads"
        and not explainer.smooth
        and not explainer.exact
        and yolo_head(explainer.model) is not None
        and hasattr(yolo_head(explainer.model), "cv3")
    )


def radius(branch: nn.Module) -> float:
    """The receptive radius in cells of a stack of stride-1 convolutions and pointwise layers:
    sum of dilation * (k - 1) / 2; infinite for anything else (a stride, pooling, attention)."""
    total = 0
    for module in branch.modules():
        if list(module.children()):
            continue  # containers: their leaves are counted
        if isinstance(module, nn.Conv2d):
            if any(s != 1 for s in module.stride) or module.padding_mode != "zeros":
                return float("inf")
            total += max(
                d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size, strict=True)
            )
        elif not isinstance(module, _POINTWISE):
            return float("inf")
    return float(total)


def _groups(images: Tensor, levels: Tensor, cells: Tensor, radii: list[float]) -> Tensor:
    """Greedy groups (N,) of boxes whose gradient windows are disjoint: boxes of one image and
    one scale must be more than 2 r apart (Chebyshev distance between their anchor cells)."""
    group = torch.empty(len(levels), dtype=torch.long)
    members: list[list[int]] = []
    rows = list(zip(images.tolist(), levels.tolist(), cells.tolist(), strict=True))
    for k, (b, lev, (i, j)) in enumerate(rows):
        r = radii[lev]
        for g, mem in enumerate(members):
            if all(
                rows[m][0] != b
                or rows[m][1] != lev
                or max(abs(rows[m][2][0] - i), abs(rows[m][2][1] - j)) > 2 * r
                for m in mem
            ):
                mem.append(k)
                group[k] = g
                break
        else:
            group[k] = len(members)
            members.append([k])
    return group


def _window_gradients(
    branch: nn.Module, act: Tensor, images: Tensor, cells: Tensor, classes: Tensor, r: int
) -> Tensor:
    """dS_k/dA for boxes k whose score S_k = sigmoid(branch(A)[images_k, c_k, cell_k]) depends
    on A only within radius r of the cell: the branch is re-run on each box's window of A
    (clipped at the map's borders, where the branch's own zero padding applies as in the full
    map), and the gradient placed back. A crop's edge only alters the branch's intermediate
    values within r - (radius of the later layers) of that edge, never the centre's score, so
    the gradient is exact. Windows of one geometry (clipping) go through one batched forward
    and backward. act (B, C, h, w) -> (n, C, h, w)."""
    n, (channels, h, w) = len(images), act.shape[1:]
    out = act.new_zeros(n, channels, h, w)
    ci, cj = cells[:, 0], cells[:, 1]
    top, left = ci - (ci - r).clamp(min=0), cj - (cj - r).clamp(min=0)
    bottom, right = (ci + r + 1).clamp(max=h) - ci, (cj + r + 1).clamp(max=w) - cj
    shapes = torch.stack([top, bottom, left, right], dim=1)
    for shape in shapes.unique(dim=0).tolist():
        pick = (shapes == torch.tensor(shape, device=shapes.device)).all(dim=1).nonzero()[:, 0]
        t, b, lft, rgt = shape
        rows = (ci[pick] - t)[:, None] + torch.arange(t + b, device=act.device)  # (m, hh)
        cols = (cj[pick] - lft)[:, None] + torch.arange(lft + rgt, device=act.device)  # (m, ww)
        index = (images[pick][:, None, None], slice(None), rows[:, :, None], cols[:, None, :])
        crop = act[index].permute(0, 3, 1, 2).detach().requires_grad_(True)  # (m, C, hh, ww)
        with torch.enable_grad():
            z = branch(crop)
            score = z[torch.arange(len(pick), device=z.device), classes[pick], t, lft].sigmoid()
            (g,) = torch.autograd.grad(score.sum(), crop)  # crops are independent: per box
        out[(pick[:, None, None], slice(None), rows[:, :, None], cols[:, None, :])] = g.permute(
            0, 2, 3, 1
        )
    return out


def run(explainer: Explainer, images: Tensor, target: Detections) -> Explanation:
    """Explain every box of a YOLO detector at its own scale (see the module docstring)."""
    model, info = explainer.model, explainer.method
    head = yolo_head(model)
    names = [f"model.{i}" for i in head.f]
    leaves: list[Tensor] = []
    radii = [radius(head.cv3[lev]) for lev in range(len(names))]
    local_only = CROPS and all(r != float("inf") for r in radii)

    def pre_hook(_m: nn.Module, inputs: tuple) -> tuple:
        # the head's inputs are the outputs of model.{f[l]}. With local class branches the
        # gradients come from crops afterwards and the whole forward runs without a graph; else
        # each input becomes a leaf and autograd records the head alone
        if local_only:
            leaves[:] = [t.detach() for t in inputs[0]]
            return inputs
        torch.set_grad_enabled(True)
        leaves[:] = [t.detach().requires_grad_(True) for t in inputs[0]]
        return ([t.clone() for t in leaves], *inputs[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            output = model(images)
    finally:
        handle.remove()
    if len(leaves) != len(names):
        raise LayerError(f"the YOLO head did not receive its inputs {names} as a list")
    batch = images.shape[0]
    with torch.set_grad_enabled(not local_only):
        sel = select_yolo(target, output, batch)
    _, _, sizes = predictions(output)
    logits = output[1]["scores"]  # (B, nc, A): sigmoid(logits) are the class scores in y
    anchors, levels, ids = sel.extras["anchors"], sel.extras["levels"], sel.ids
    t = ids.shape[1]
    live = (anchors >= 0).reshape(-1)
    flat = live.nonzero()[:, 0]
    b_of, a_of = flat // t, anchors.reshape(-1)[flat]
    lev_of = levels.reshape(-1)[flat]
    widths = [int(leaves[lev].shape[3]) for lev in range(len(names))]
    starts = torch.tensor([0, *sizes], device=anchors.device).cumsum(0)[:-1]
    local = a_of - starts[lev_of]
    w_of = torch.tensor(widths, device=anchors.device)[lev_of]
    cells = torch.stack([local // w_of, local % w_of], dim=1)
    raws = [images.new_zeros(batch, t, *leaves[lev].shape[2:]) for lev in range(len(names))]
    group = (
        None
        if local_only
        else _groups(b_of.cpu(), lev_of.cpu(), cells.cpu(), radii).to(b_of.device)
    )
    for lev, act in enumerate(leaves):
        mine = (lev_of == lev).nonzero()[:, 0]
        if not len(mine):
            continue
        if local_only:
            box_grad = _window_gradients(
                head.cv3[lev],
                act,
                b_of[mine],
                cells[mine],
                ids.reshape(-1)[flat[mine]],
                int(radii[lev]),
            )
            with torch.no_grad():
                raw = info.fn(act[b_of[mine]].float(), box_grad.float(), **explainer._fn_options)
                raws[lev].view(-1, *raw.shape[1:])[flat[mine]] = raw
            continue
        # one batched backward per scale, through that scale's class branch alone (autograd
        # runs only the nodes between these scores and this leaf; the other branches' nodes
        # are not touched, so no graph needs to be retained)
        groups, slot = group[mine].unique(return_inverse=True)
        with torch.enable_grad():
            scores = logits[b_of[mine], ids.reshape(-1)[flat[mine]], a_of[mine]].sigmoid()
            pick = torch.zeros(len(groups), len(mine), device=act.device, dtype=scores.dtype)
            pick[slot, torch.arange(len(mine), device=act.device)] = 1
            (g,) = torch.autograd.grad(scores, act, grad_outputs=pick, is_grads_batched=True)
        with torch.no_grad():
            box_grad = g[slot, b_of[mine]]  # (n, C, h, w): the sum over each box's group
            if radii[lev] != float("inf"):  # keep each box's own window of the sum
                h, w = act.shape[2:]
                ii = torch.arange(h, device=act.device)[None, :, None]
                jj = torch.arange(w, device=act.device)[None, None, :]
                ci, cj = cells[mine, 0][:, None, None], cells[mine, 1][:, None, None]
                window = ((ii - ci).abs() <= radii[lev]) & ((jj - cj).abs() <= radii[lev])
                box_grad = box_grad * window[:, None].to(box_grad.dtype)
            raw = info.fn(
                act.detach()[b_of[mine]].float(), box_grad.float(), **explainer._fn_options
            )
            raws[lev].view(-1, *raw.shape[1:])[flat[mine]] = raw
    size = tuple(images.shape[2:])
    maps = images.new_zeros(batch, t, *size)
    with torch.no_grad():
        for lev in range(len(names)):
            mine = flat[lev_of == lev]
            if len(mine):
                level_raw = raws[lev].view(-1, *raws[lev].shape[2:])[mine]
                maps.view(-1, *size)[mine] = display_maps([level_raw], size)
    return Explanation(
        maps=maps,
        raw=dict(zip(names, raws, strict=True)),
        targets=ids,
        scores=sel.scores.detach(),
        layers=names,
        method=info.name,
        extras=dict(sel.extras),
    )
