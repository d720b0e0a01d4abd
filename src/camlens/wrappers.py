"""Options that wrap a method: ``eigen_smooth``, ``aug_smooth`` and ``sess``.

``eigen_smooth`` applies to the layer methods that expose their per-channel terms;
``aug_smooth`` and ``sess`` to every method, model-level ones included (LeGrad, GAE, FullGrad:
their maps are flipped back or pasted like any other).

None of them is a branch of the engine's flow. ``eigen_smooth`` wraps the method's function
(a different reduction of the same per-channel terms); ``aug_smooth`` and ``sess`` wrap the
whole explanation (a map of maps): they build a batch of transformed images, explain it in one
call of the plain explainer, and map the maps back to the original frame.

Several targets per image (``top(k)``, (B, T) ids) keep working with each option: the
transformed images are handed to the targets as *copies* of the original images (the
mechanism SmoothGrad-style noise uses, :class:`camlens.targets.Target`), so classes chosen on
an image (its top classes) are chosen on the original and explained in every copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from camlens.errors import InputError
from camlens.explanation import Explanation
from camlens.maps import minmax
from camlens.registry import MethodInfo, get_method, methods
from camlens.targets import Selection, Target, TargetSpec, select_scores

# -- eigen_smooth --------------------------------------------------------------------------


def principal_projection(terms: Tensor) -> Tensor:
    """The first principal component of the per-channel terms, as a map.

        X = terms of one image as (positions, K),   Xc = X - mean over positions
        Xc = U S V^T,   raw = Xc v_1

    terms: (N, K, *spatial) -> (N, *spatial). As pytorch-grad-cam's ``get_2d_projection``
    (mean-centred, then the first right singular vector). A singular vector's sign is arbitrary
    (pytorch-grad-cam keeps whatever LAPACK returns); here it is fixed so that the map
    correlates positively with the plain channel sum sum_k T_k, the map it replaces.
    """
    n, k = terms.shape[:2]
    flat = terms.reshape(n, k, -1).transpose(1, 2)  # (N, P, K)
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = (centred @ vh[:, 0, :, None])[..., 0]  # (N, P)
    plain = flat.sum(dim=2)
    sign = torch.where((proj * plain).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    proj = torch.nan_to_num(proj * sign.to(proj.dtype))
    return proj.reshape(n, *terms.shape[2:])


def eigen_smoothed(info: MethodInfo) -> MethodInfo:
    """``info`` with its channel sum replaced by :func:`principal_projection` of its terms.

    Needs the method's per-channel terms (``terms=`` in :func:`camlens.registry.register`):
    every method whose raw map is a channel sum (CAM, the Grad-CAM family, LayerCAM, HiResCAM,
    XGrad-CAM, element-wise Grad-CAM, ShapleyCAM, Finer-CAM, the Score-CAM family,
    Ablation-CAM, FEM, Random-CAM). Terms (B, T, K, *spatial) (T targets per image, the
    Score-CAM family) are projected target by target.
    """
    if info.terms is None:
        raise InputError(
            f"eigen_smooth=True needs the per-channel terms of the method; {info.name!r} does "
            "not expose them (its map is not a sum of per-channel terms). It applies to "
            + ", ".join(sorted(m for m in methods() if get_method(m).terms is not None))
        )
    terms = info.terms

    @functools.wraps(info.fn)
    def fn(*args: Any, **kwargs: Any) -> Tensor:
        t = terms(*args, **kwargs)
        if t.ndim == args[0].ndim + 1:  # (B, T, K, *spatial): T targets per image
            return principal_projection(t.flatten(0, 1)).view(*t.shape[:2], *t.shape[3:])
        return principal_projection(t)

    return replace(info, fn=fn)


# -- targets for transformed copies -----------------------------------------------------------


class _Copies(Target):
    """The user's target for a batch of ``batch`` originals followed by ``batch * copies``
    transformed copies (image-major), however large the batch the engine sees."""

    def __init__(self, target: TargetSpec, batch: int, copies: int):
        self.target, self.batch, self.copies = target, batch, copies

    def select(self, output: Any, batch: int, copies: int = 0, score: Any = None) -> Selection:
        if copies:
            raise InputError("aug_smooth / sess cannot be combined with smooth=")
        if batch != self.batch * (1 + self.copies):  # the engine's one-image dry run
            return select_scores(self.target, output, batch, 0, score)
        return select_scores(self.target, output, self.batch, self.copies, score)


def _order(originals: Tensor, copies: Tensor) -> Tensor:
    """(B, ...) originals and (B, C, ...) copies -> (B + B * C, ...): originals first, then the
    copies image-major (image 0's C copies, image 1's, ...)."""
    return torch.cat([originals, copies.reshape(-1, *copies.shape[2:])])


def _split(x: Tensor, batch: int, copies: int) -> Tensor:
    """Inverse of :func:`_order`: (B + B * C, ...) -> (B, 1 + C, ...)."""
    first = x[:batch, None]
    rest = x[batch:].reshape(batch, copies, *x.shape[1:])
    return torch.cat([first, rest], dim=1)


def _normalise(maps: Tensor, spatial: int) -> Tensor:
    """Min-max per image and per target of (B[, T], *spatial) maps."""
    flat = maps.reshape(-1, *maps.shape[maps.ndim - spatial :])
    return minmax(flat).view(maps.shape)


# -- aug_smooth ---------------------------------------------------------------------------------

#: pytorch-grad-cam's test-time augmentations: horizontal flip x brightness multipliers.
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)


def aug_smooth(
    explain: Callable[[Tensor, TargetSpec], Explanation], images: Tensor, target: TargetSpec
) -> Explanation:
    """Test-time augmentation: the maps of six transformed copies, mapped back and averaged.

        M = minmax( (1/6) sum_{f in {id, flip}, c in {0.9, 1, 1.1}} f^-1( M(f(c x)) ) )

    As pytorch-grad-cam's ``aug_smooth=True`` (ttach's HorizontalFlip x Multiply([0.9, 1,
    1.1]) on the preprocessed tensor): each copy's map is normalised to [0, 1] before the
    average. ONE call of the plain method on the 6B images (its cost: six times a plain call's
    batch in one pass). The target is decided on the original images (``top(k)``, None) and
    explained in every copy. raw maps: the copies' raw maps flipped back and averaged.
    """
    if images.ndim != 4:
        raise InputError(f"aug_smooth needs images (B, C, H, W), got {tuple(images.shape)}")
    batch = images.shape[0]
    others = [a for a in AUGMENTATIONS if a != (False, 1.0)]
    copies = torch.stack([(images.flip(-1) if f else images) * c for f, c in others], dim=1)
    ex = explain(_order(images, copies), _Copies(target, batch, len(others)))
    flips = torch.tensor([False] + [f for f, _ in others], device=images.device)

    def back(x: Tensor) -> Tensor:  # (6B, [T], h, w) -> (B, [T], h, w), averaged in frame
        parts = _split(x, batch, len(others))
        view = flips.view(1, -1, *[1] * (parts.ndim - 2))
        return torch.where(view, parts.flip(-1), parts).mean(dim=1)

    return Explanation(
        maps=_normalise(back(ex.maps), 2),
        raw={name: back(raw) for name, raw in ex.raw.items()},
        targets=ex.targets[:batch],
        scores=ex.scores[:batch],
        layers=ex.layers,
        method=ex.method,
        logits=None if ex.logits is None else ex.logits[:batch],
        extras={},
    )


# -- SESS -----------------------------------------------------------------------------------------


def sess_windows(size: int, window: int, scales: list[int]) -> list[tuple[int, int, int]]:
    """(scale, x1, y1) of every window: the image resized to scale x scale, a window x window
    sliding window with stride ``window``, windows past the border shifted back in (as
    pytorch-grad-cam's ``sliding_window``). The first is (size, 0, 0): the image itself."""
    out = []
    for scale in scales:
        if scale < window:
            raise InputError(f"every SESS scale must be at least the window {window}, got {scale}")
        starts = []
        for start in range(0, scale, window):
            if start + window >= scale:
                starts.append(max(scale - window, 0))
                break
            starts.append(start)
        out += [(scale, x, y) for y in starts for x in starts]
    return out


def _gaussian_blur(maps: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """OpenCV's GaussianBlur((size, size), sigma) with its default reflect-101 border:
    (N, H, W) -> (N, H, W), separable."""
    x = torch.arange(size, dtype=maps.dtype, device=maps.device) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = size // 2
    out = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


@dataclass
class SessOptions:
    """SESS's settings (pytorch-grad-cam's defaults, the paper's): 12 scales from the window
    size in steps of 2/7 of it, stride = window, mean fusion over covering windows (values
    > theta), a Gaussian blur; ``chunk``: images per call of the plain method (None: all; a
    per-image target, B ids or a (B, T) table, is sliced along; targets holding other
    per-image data need ``chunk=None``)."""

    num_scales: int = 12
    scale_step_ratio: float = 2.0 / 7.0
    theta: float = 0.0
    pool: str = "mean"
    smooth: bool = True
    chunk: int | None = None
    scales: list[int] | None = field(default=None)


def sess(
    explain: Callable[[Tensor, TargetSpec], Explanation],
    images: Tensor,
    target: TargetSpec,
    opts: SessOptions,
) -> Explanation:
    """SESS (Tursun et al., arXiv:2207.01769): multi-scale sliding windows around any method.

        x_s = resize(x, s),  s in {w, w + r w, ..., w + 11 r w}  (w the image side, r = 2/7)
        P_{s,i} = window i of x_s (w x w, stride w),  M_{s,i} its [0, 1] map,
        a_{s,i} = softmax score of the target on P_{s,i} / max over windows
        M = blur( sum over windows covering p with a M > theta of a M / their count )

    Each window's map comes from the plain method; the target is decided on the whole image
    (the first window) and explained in every window (its softmax score weights the window;
    the raw score, clipped at 0, for targets without class logits). Cost: with the defaults
    122 windows per 224 x 224 image (1 + 4 + 4 + 4 + 9 + 9 + 9 + 9 + 16 + 16 + 16 + 25 over
    the 12 scales), i.e. 122 times a plain call, in calls of ``chunk`` images x all their
    windows; the fusion is batched torch (a Gaussian blur as OpenCV's, reflect-101 border).
    Square images only (the first window must be the image itself).
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"sess needs square images (B, C, H, H), got {tuple(images.shape)}")
    if opts.pool not in ("mean", "max"):
        raise InputError(f"sess pool must be 'mean' or 'max', got {opts.pool!r}")
    batch, size = images.shape[0], images.shape[-1]
    step = round(size * opts.scale_step_ratio)
    scales = opts.scales or [size + step * i for i in range(opts.num_scales)]
    windows = sess_windows(size, size, scales)
    if windows[0] != (size, 0, 0):
        raise InputError(f"the first SESS scale must be the image size {size}, got {scales[0]}")
    chunk = batch if opts.chunk is None else max(1, int(opts.chunk))
    results = [
        _sess_chunk(explain, images[i : i + chunk], _slice(target, i, chunk, batch), windows, opts)
        for i in range(0, batch, chunk)
    ]
    if len(results) == 1:
        return results[0]
    first = results[0]
    return Explanation(
        maps=torch.cat([r.maps for r in results]),
        raw={k: torch.cat([r.raw[k] for r in results]) for k in first.raw},
        targets=torch.cat([r.targets for r in results]),
        scores=torch.cat([r.scores for r in results]),
        layers=first.layers,
        method=first.method,
        logits=None if first.logits is None else torch.cat([r.logits for r in results]),
        extras={},
    )


def _slice(target: TargetSpec, start: int, size: int, batch: int) -> TargetSpec:
    """The part of a per-image target (B ids, a (B, T) table) for images start..start+size."""
    if size >= batch:
        return target
    if isinstance(target, Tensor) and target.ndim >= 1 and target.shape[0] == batch:
        return target[start : start + size]
    if isinstance(target, (list, tuple)) and len(target) == batch:
        return list(target[start : start + size])
    return target


def _sess_chunk(
    explain: Callable[[Tensor, TargetSpec], Explanation],
    images: Tensor,
    target: TargetSpec,
    windows: list[tuple[int, int, int]],
    opts: SessOptions,
) -> Explanation:
    batch, size = images.shape[0], images.shape[-1]
    resized = {
        s: F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        if s != size
        else images
        for s in sorted({s for s, _, _ in windows})
    }
    patches = torch.stack([resized[s][..., y : y + size, x : x + size] for s, x, y in windows], 1)
    n = len(windows)
    ex = explain(_order(patches[:, 0], patches[:, 1:]), _Copies(target, batch, n - 1))
    maps = _split(ex.maps, batch, n - 1)  # (B, n, [T], w, w), each in [0, 1]
    ids = _split(ex.targets, batch, n - 1)
    if ex.logits is not None and bool((ids >= 0).all()):
        probs = _split(ex.logits, batch, n - 1).softmax(dim=-1)
        scores = probs.gather(-1, ids.reshape(batch, n, -1)).reshape(ids.shape)
    else:
        scores = _split(ex.scores, batch, n - 1)
    scores = scores.clamp(min=0)
    peak = scores.amax(dim=1, keepdim=True)
    weights = torch.where(peak > 0, scores / torch.where(peak > 0, peak, 1.0), 1.0)
    weighted = maps * weights.view(*weights.shape, 1, 1)
    lead = weighted.shape[2:-2]  # () or (T,)
    total = images.new_zeros(batch, *lead, size, size)
    counts = torch.zeros_like(total)
    for scale in sorted({s for s, _, _ in windows}):
        idx = [i for i, (s, _, _) in enumerate(windows) if s == scale]
        canvas = images.new_zeros(batch, len(idx), *lead, scale, scale)
        for j, i in enumerate(idx):
            _, x, y = windows[i]
            canvas[:, j, ..., y : y + size, x : x + size] = weighted[:, i]
        flat = canvas.reshape(-1, scale, scale)
        pasted = F.interpolate(flat[:, None], size=(size, size), mode="bilinear")[:, 0]
        pasted = pasted.view(batch, len(idx), *lead, size, size)
        if opts.pool == "max":
            total = torch.maximum(total, pasted.amax(dim=1))
        else:
            keep = pasted > opts.theta
            total = total + (pasted * keep).sum(dim=1)
            counts = counts + keep.sum(dim=1)
    fused = total if opts.pool == "max" else torch.where(counts > 0, total / counts.clamp(min=1), 0)
    if opts.smooth:
        fused = _gaussian_blur(fused.reshape(-1, size, size)).view(fused.shape)
    return Explanation(
        maps=_normalise(fused, 2),
        raw={"sess": fused},
        targets=ex.targets[:batch],
        scores=ex.scores[:batch],
        layers=ex.layers,
        method=ex.method,
        logits=None if ex.logits is None else ex.logits[:batch],
        extras={},
    )


# -- the options as the engine sees them ----------------------------------------------------


@dataclass
class Wrapping:
    """The wrapper options of one :class:`camlens.Explainer`, popped from its keyword options."""

    eigen_smooth: bool = False
    aug_smooth: bool = False
    sess: SessOptions | None = None

    @classmethod
    def pop(cls, options: dict[str, Any]) -> Wrapping:
        """Take ``eigen_smooth``, ``aug_smooth``, ``sess`` and ``sess_*`` out of ``options``."""
        eigen = bool(options.pop("eigen_smooth", False))
        aug = bool(options.pop("aug_smooth", False))
        use_sess = bool(options.pop("sess", False))
        names = {f"sess_{k}" for k in SessOptions.__dataclass_fields__}
        given = {k[5:]: options.pop(k) for k in list(options) if k in names}
        if given and not use_sess:
            raise InputError(f"{sorted(given)} are SESS settings: pass sess=True with them")
        if aug and use_sess:
            raise InputError("pass aug_smooth=True or sess=True, not both")
        return cls(eigen, aug, SessOptions(**given) if use_sess else None)

    def method(self, info: MethodInfo) -> MethodInfo:
        """The method as the engine runs it (``eigen_smooth`` swaps its channel reduction)."""
        return eigen_smoothed(info) if self.eigen_smooth else info

    def run(
        self,
        explain: Callable[[Tensor, TargetSpec], Explanation],
        images: Tensor,
        model_input: Any,
        target: TargetSpec,
    ) -> Explanation:
        """``explain(images, target)``, wrapped by ``aug_smooth`` or ``sess`` when set."""
        if not (self.aug_smooth or self.sess):
            return explain(images, target)
        if model_input is not images:
            raise InputError("aug_smooth and sess need a (B, C, H, W) tensor, not a list")
        if self.aug_smooth:
            return aug_smooth(explain, images, target)
        assert self.sess is not None
        return sess(explain, images, target, self.sess)
