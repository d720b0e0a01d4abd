"""Input-perturbation methods: sliding-window Occlusion and RISE. Any model, any target.

Both score the model on many modified copies of each image and average the scores into a map
at the input's resolution. No gradient and no layer: they treat the model as a black box.
Every modified image is built on demand, chunk by chunk, and scored in no-grad batches of
``batch_size`` (so memory is bounded by the batch size, not by the number of windows or masks).

Class targets (None, ints, (B, T) ids, ``top(k)``) are scored by a :class:`~camlens.probe.Probe`
that gathers the explained logit (or probability) of every modified image, T targets at once.
Any other target (segmentation, similarity, detections, callables) is applied to the model's
output on [the clean images; their modified copies], so that what the target decides from the
output (the predicted pixels, the top box) is decided on the clean images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.cams.model_based import ModelCall, ModelResult
from camlens.errors import InputError
from camlens.layouts import primary_output
from camlens.maps import to_heatmap
from camlens.probe import Probe
from camlens.registry import register
from camlens.targets import Top, _Classes, as_target

#: make(mask ids (m,), image ids (m,)) -> the modified images (m, C, H, W)
Maker = Callable[[Tensor, Tensor], Tensor]


def _check_images(call: ModelCall, name: str) -> None:
    if call.images.ndim != 4:
        raise InputError(
            f"{name} perturbs images (B, C, H, W), got {tuple(call.images.shape)}; for volumes "
            "and video use gradcam, scorecam or another layer method"
        )


def perturbed_scores(
    call: ModelCall, count: int, make: Maker, softmax: bool, desc: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores of ``count`` modified copies of every image.

    Returns (clean scores, scores of the copies (B, count[, T]), explained scores, class ids):
    the first two on the scale the method averages (probabilities with ``softmax`` for class
    targets), the last two as the explanation reports them (the target's own score).
    """
    images, model = call.images, call.model
    batch = images.shape[0]
    with torch.no_grad():
        output = model(images)
        explained, ids = call.score(output)
    explained = explained.detach()
    per = tuple(ids.shape[1:])
    if isinstance(as_target(call.target), (Top, _Classes)):
        probe = Probe(
            lambda x, _owner: model(x),
            images,
            None,
            ids,
            None,
            call.batch_size,
            call.progress,
            call.seed,
            desc=desc,
        )
        logits = primary_output(output).detach().float()  # class targets: (B, classes)
        logits = logits.softmax(dim=1) if softmax else logits
        clean = logits.gather(1, ids if ids.ndim == 2 else ids[:, None])
        clean = clean if ids.ndim == 2 else clean[:, 0]

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            idx = torch.arange(start, stop, device=images.device)
            n, b = idx // batch, idx % batch  # mask-major: a chunk needs few masks
            return make(n, b), b

        flat = probe.scores(count * batch, build, softmax=softmax)
        return clean, flat.view(count, batch, *per).movedim(0, 1), explained, ids
    if call.select is None:
        raise InputError(f"{desc} needs the engine's select callback (ModelCall.select)")
    out = torch.empty(batch, count, *per, device=images.device)
    step = max(1, call.batch_size // batch - 1)  # B clean rows + B * step copies per pass
    bar = None
    if call.progress:
        from tqdm import tqdm

        bar = tqdm(total=count * batch, desc=desc, unit="img", leave=False)
    try:
        for n0 in range(0, count, step):
            m = min(step, count - n0)
            n = torch.arange(n0, n0 + m, device=images.device).repeat(batch)
            b = torch.arange(batch, device=images.device).repeat_interleave(m)  # image-major
            with torch.no_grad():
                scores, _ = call.select(model(torch.cat([images, make(n, b)])), m)
            out[:, n0 : n0 + m] = scores[batch:].detach().float().view(batch, m, *per)
            if bar is not None:
                bar.update(m * batch)
    finally:
        if bar is not None:
            bar.close()
    return explained.float(), out, explained, ids


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise InputError(f"{name} must be a positive int or two (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def window_indicators(size: int, window: int, stride: int, device: torch.device) -> Tensor:
    """(count, size) 0/1 rows: which pixels of one axis each window position covers.

    Positions 0, stride, 2 stride, ... for ceil((size - window) / stride) + 1 windows, the last
    one cut at the border (Captum's Occlusion), so that every pixel is covered.
    """
    count = math.ceil((size - window) / stride) + 1
    start = torch.arange(count, device=device)[:, None] * stride
    pix = torch.arange(size, device=device)[None, :]
    return ((pix >= start) & (pix < start + window)).float()


def _baseline(baseline: float | Tensor, images: Tensor) -> Tensor:
    base = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        return base.expand(images.shape)
    except RuntimeError as exc:
        raise InputError(
            f"baseline of shape {tuple(base.shape)} does not broadcast to the images "
            f"{tuple(images.shape)}; pass a float, (C, 1, 1), (C, H, W) or (B, C, H, W)"
        ) from exc


@register(
    "occlusion",
    inputs="black_box",
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, "
    "arXiv:1311.2901 (as Captum's Occlusion)",
)
def occlusion(
    call: ModelCall,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    baseline: float | Tensor = 0.0,
    softmax: bool = False,
) -> ModelResult:
    """Occlusion: the mean score drop of the windows that cover each pixel.

        X_n = X * (1 - M_n) + X_0 * M_n,     M_n the n-th window (all channels), X_0 the baseline
        raw_ij = sum_n (S(X) - S(X_n)) M_n,ij / sum_n M_n,ij

    Zeiler & Fergus slid a grey square over the image and read the class probability; this is
    Captum's ``Occlusion`` definition (the window covers every channel, positions every
    ``stride`` pixels with the last window cut at the border, the drop of the target's score,
    averaged over the windows that cover a pixel), which it matches on the same model, target,
    window, stride and baseline. ``softmax=True`` scores class probabilities instead of logits.
    Cost: (ceil((H - h) / s_h) + 1) (ceil((W - w) / s_w) + 1) forward passes per image,
    batched. The map is at the input's resolution (raw key ``"input"``), (B[, T], H, W).
    """
    _check_images(call, "occlusion")
    images = call.images
    size = tuple(images.shape[-2:])
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if wh > size[0] or ww > size[1]:
        raise InputError(f"window {(wh, ww)} is larger than the images {size}")
    if (sh > wh and wh < size[0]) or (sw > ww and ww < size[1]):
        raise InputError(
            f"stride {(sh, sw)} is larger than the window {(wh, ww)}: some pixels would never "
            "be occluded; use a stride at most the window"
        )
    rows = window_indicators(size[0], wh, sh, images.device)  # (Na, H)
    cols = window_indicators(size[1], ww, sw, images.device)  # (Nc, W)
    base = _baseline(baseline, images)

    def make(n: Tensor, b: Tensor) -> Tensor:
        mask = rows[n // cols.shape[0]][:, :, None] * cols[n % cols.shape[0]][:, None, :]
        mask = mask[:, None].to(images.dtype)  # (m, 1, H, W)
        return images[b] * (1 - mask) + base[b] * mask

    count = rows.shape[0] * cols.shape[0]
    clean, scores, explained, ids = perturbed_scores(call, count, make, softmax, "occlusion")
    drop = clean.float()[:, None] - scores  # (B, N[, T])
    drop = drop.view(drop.shape[0], rows.shape[0], cols.shape[0], *drop.shape[2:])
    if drop.ndim == 4:  # (B, Na, Nc, T) -> (B, T, Na, Nc)
        drop = drop.permute(0, 3, 1, 2)
    covered = rows.sum(dim=0)[:, None] * cols.sum(dim=0)[None, :]
    raw = torch.einsum("ai,b...ac,cj->b...ij", rows, drop, cols) / covered
    return ModelResult(
        raw={"input": raw},
        maps=_maps(raw, size),
        scores=explained,
        class_ids=ids,
        extras={},
    )


def rise_masks(
    grids: Tensor, shifts: Tensor, size: tuple[int, int], cell: tuple[int, int]
) -> Tensor:
    """RISE's smooth masks (m, H, W) from binary grids (m, s, s) and shifts (m, 2).

    Each grid is upsampled bilinearly to ((s + 1) c_h, (s + 1) c_w), c = ceil(size / s) the
    cell size, and cropped to H x W at its (dy, dx) shift in [0, c): a smooth mask whose cells
    do not line up with a fixed lattice.
    """
    s = grids.shape[-1]
    up = F.interpolate(
        grids[:, None].float(),
        size=((s + 1) * cell[0], (s + 1) * cell[1]),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    m = grids.shape[0]
    dev = grids.device
    r = shifts[:, 0, None] + torch.arange(size[0], device=dev)[None, :]  # (m, H)
    c = shifts[:, 1, None] + torch.arange(size[1], device=dev)[None, :]  # (m, W)
    return up[torch.arange(m, device=dev)[:, None, None], r[:, :, None], c[:, None, :]]


@register(
    "rise",
    inputs="black_box",
    paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box "
    "Models, BMVC 2018, arXiv:1806.07421",
)
def rise(
    call: ModelCall,
    n: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    softmax: bool = True,
) -> ModelResult:
    """RISE: the expected score of randomly masked copies, weighted by each mask.

        S_I(lambda) = 1 / (N p) sum_{n=1..N} f(I * M_n) M_n(lambda)

    M_n: ``cells`` x ``cells`` binary grids with P(1) = ``p``, upsampled bilinearly to
    (cells + 1) x the cell size and randomly shifted by less than a cell (Petsiuk et al.,
    BMVC 2018, Sec. 3.2); 1 / (N p) is the paper's normalisation by the mask density E[M] = p.
    f is the target's score; for class targets its probability (softmax over the classes, as
    the paper; ``softmax=False``: the logit). Defaults N = 4000, cells = 7, p = 0.5 (the
    paper's ResNet50 settings). The masks are drawn from the explainer's ``seed`` on the
    images' device; each is shared by all images of the batch, as in the paper's code.
    Cost: N forward passes per image, batched. Raw map (key ``"input"``): (B[, T], H, W).
    """
    _check_images(call, "rise")
    if not (isinstance(n, int) and n > 0 and isinstance(cells, int) and cells > 0):
        raise InputError(f"rise needs positive ints n and cells, got n={n!r}, cells={cells!r}")
    if not 0 < p <= 1:
        raise InputError(f"rise needs a mask density p in (0, 1], got {p!r}")
    images = call.images
    size = (int(images.shape[-2]), int(images.shape[-1]))
    cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
    gen = torch.Generator(device=images.device).manual_seed(call.seed)
    grids = torch.rand(n, cells, cells, generator=gen, device=images.device) < p
    shifts = torch.stack(
        [
            torch.randint(0, cell[0], (n,), generator=gen, device=images.device),
            torch.randint(0, cell[1], (n,), generator=gen, device=images.device),
        ],
        dim=1,
    )

    def make(idx: Tensor, b: Tensor) -> Tensor:
        uniq, inverse = torch.unique(idx, return_inverse=True)
        masks = rise_masks(grids[uniq], shifts[uniq], size, cell).to(images.dtype)
        return images[b] * masks[inverse][:, None]

    _, scores, explained, ids = perturbed_scores(call, n, make, softmax, "rise")
    raw = torch.zeros(images.shape[0], *scores.shape[2:], *size, device=images.device)
    chunk = max(1, 2**24 // (size[0] * size[1]))  # masks regenerated ~64 MB at a time
    for n0 in range(0, n, chunk):
        sl = slice(n0, min(n, n0 + chunk))
        masks = rise_masks(grids[sl], shifts[sl], size, cell)
        raw += torch.einsum("bn...,nhw->b...hw", scores[:, sl], masks)
    raw /= n * p
    return ModelResult(
        raw={"input": raw}, maps=_maps(raw, size), scores=explained, class_ids=ids, extras={}
    )


def _maps(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU and per-map min-max of (B[, T], H, W) raw maps (already at the input's size)."""
    return to_heatmap(raw.reshape(-1, *size), size).view(raw.shape)
