"""Methods that need the whole network's gradients: FullGrad and Guided Grad-CAM.

They receive a :class:`ModelCall` (the model, the images, the target) instead of one layer's
tensors, because their definitions involve every layer (FullGrad's biases) or the input
gradient through every ReLU (guided backpropagation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camlens.errors import InputError
from camlens.maps import upsample
from camlens.precision import float32_maths
from camlens.registry import register


@dataclass
class ModelCall:
    """What a model-level method gets from the engine.

    Attributes:
        model: the model, in eval mode (the engine restores it afterwards).
        images: (B, C, *spatial) the images.
        target: the target as the user gave it.
        score: ``output -> (scores (B,), class ids (B,))``.
        layers: the resolved (name, module) layers.
        explain: ``(method name, layers) -> Explanation``: another method on the same images and
            target (Guided Grad-CAM's Grad-CAM), so that no method imports the engine.
        to_grid: for token models, per-token values (B, N) -> (B, *grid) (prefix tokens
            dropped); None otherwise.
        num_prefix: the number of prefix tokens (class, distillation, register tokens).
        select: ``(output of [B clean images; B * m copies, image-major], m) -> (scores, ids)``
            for all B * (1 + m) rows: the target decided on the clean images and applied to
            their copies (perturbation methods score any target on modified images with it).
        batch_size, progress, seed: the explainer's options for methods that re-run the model.
        layer_auto: True when the user gave no layer (``layers`` is the automatic one); a
            method defined over several blocks (LeGrad) then uses all of them.
    """

    model: nn.Module
    images: Tensor
    target: Any
    score: Callable[[Any], tuple[Tensor, Tensor]]
    layers: list[tuple[str, nn.Module]]
    explain: Callable[[str, list[tuple[str, nn.Module]]], Any] | None = None
    to_grid: Callable[[Tensor], Tensor] | None = None
    num_prefix: int = 0
    select: Callable[[Any, int], tuple[Tensor, Tensor]] | None = None
    batch_size: int = 64
    progress: bool = False
    seed: int = 0
    layer_auto: bool = False


@dataclass
class ModelResult:
    """raw maps by name, display maps before normalisation (None: from raw), the explained
    scores and class ids, and extra tensors worth returning."""

    raw: dict[str, Tensor]
    maps: Tensor | None
    scores: Tensor
    class_ids: Tensor
    extras: dict[str, Tensor]


def _effective_bias(module: nn.Module) -> Tensor | None:
    """The bias a module adds to its output, per output channel, or None.

    Conv/Linear: their bias. BatchNorm in eval mode is the affine map
    y = gamma (x - mu) / sqrt(var + eps) + beta, whose bias is beta - gamma mu / sqrt(var + eps).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.running_var is None:
            return None
        scale = torch.rsqrt(module.running_var + module.eps)
        gamma = module.weight if module.weight is not None else torch.ones_like(scale)
        beta = module.bias if module.bias is not None else torch.zeros_like(scale)
        return (beta - gamma * module.running_mean * scale).detach()
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and module.bias is not None:
        return module.bias.detach()
    return None


def _psi(term: Tensor, size: tuple[int, int]) -> Tensor:
    """FullGrad's post-processing, summed over channels: (B, C, h, w) -> (B, H, W).

    psi = |.|, rescaled to [0, 1] per image and channel, bilinear upsampling. The rescaling is
    done at the term's own resolution and the channels are summed before the upsampling, which
    is linear, so each layer is upsampled once instead of once per channel.
    """
    mag = term.abs().flatten(2)
    lo = mag.amin(dim=2, keepdim=True)
    span = mag.amax(dim=2, keepdim=True) - lo
    norm = torch.where(span > 0, (mag - lo) / torch.where(span > 0, span, 1.0), 0.0)
    summed = norm.sum(dim=1).view(term.shape[0], *term.shape[2:])
    return upsample(summed, size)


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


@register(
    "fullgrad",
    inputs="model",
    paper="Srinivas & Fleuret, Full-Gradient Representation for Neural Network "
    "Visualization, NeurIPS 2019, arXiv:1905.00780",
)
def fullgrad(call: ModelCall) -> ModelResult:
    """FullGrad: the input-gradient term plus every layer's bias-gradient terms.

        f(x) = grad_x f . x + sum_l sum_c (grad_b f * b)_{l,c}                 (completeness)
        S(x) = psi(grad_x f * x) + sum_l sum_c psi((grad_{z_l} f * b_l)_c)

    z_l is the output of layer l and b_l its bias (conv and linear biases, and batch norm's
    effective bias beta - gamma mu / sigma), broadcast over positions. Completeness holds
    exactly for networks that are piecewise linear in (x, b): ReLU, max/average pooling,
    convolutions, linear layers and eval-mode batch norm; ``extras["completeness"]`` holds
    (sum of all terms, score) per image so that it can be checked. Linear-layer bias terms have
    no spatial extent: they count in completeness, not in the map. Not tied to one layer: the
    raw map is at the input's resolution (key ``"input"``).
    """
    model, images = call.model, call.images
    if images.ndim != 4:
        raise InputError(
            f"fullgrad is defined here for images (B, C, H, W), got {tuple(images.shape)}; for "
            "volumes use gradcam, gradcampp, layercam, hirescam, xgradcam, cam or scorecam"
        )
    biased = [(n, m, b) for n, m in model.named_modules() if (b := _effective_bias(m)) is not None]
    outs: list[tuple[Tensor, Tensor, bool]] = []

    def make_hook(bias: Tensor):
        def hook(m: nn.Module, _i: Any, out: Any) -> Any:
            if isinstance(out, Tensor) and out.requires_grad:
                outs.append((out, bias, isinstance(m, nn.Linear)))
                return out.clone()  # an in-place op after the layer must not change ``out``
            return None

        return hook

    handles = [m.register_forward_hook(make_hook(b)) for _, m, b in biased]
    x = images.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            scores, ids = call.score(model(x))
            grads = torch.autograd.grad(
                scores.sum(), [x, *(o for o, _, _ in outs)], allow_unused=True
            )
    finally:
        for h in handles:
            h.remove()
    size = (images.shape[-2], images.shape[-1])
    with float32_maths(images.device.type):  # a half-precision model: terms summed in float32
        up = _at_least_float32
        input_term = (up(grads[0]) * up(x)).detach()
        total = input_term.flatten(1).sum(dim=1)
        saliency = _psi(input_term, size)
        for (_out, bias, linear), g in zip(outs, grads[1:], strict=True):
            if g is None:
                continue
            g, bias = up(g), up(bias.detach())
            if linear:
                term = g * bias  # a Linear's bias is on the last dimension (channels-last if 4-D)
                if term.ndim == 4:
                    term = term.permute(0, 3, 1, 2)
            else:
                term = g * bias.view(1, -1, *([1] * (g.ndim - 2)))
            total = total + term.flatten(1).sum(dim=1)
            if term.ndim == 4:
                saliency = saliency + _psi(term, size)
    return ModelResult(
        raw={"input": saliency},
        maps=None,
        scores=scores.detach(),
        class_ids=ids,
        extras={"completeness": torch.stack([total, scores.detach()], dim=1)},
    )


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _GuidedBackprop(TorchFunctionMode):
    """Routes every ReLU call (modules and functional, in-place too) to :class:`_GuidedReLU`
    for the duration of one forward pass, without touching the model's modules."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


@register(
    "guided_gradcam",
    inputs="model",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017, Sec. 3.1 (Guided Grad-CAM); guided "
    "backpropagation: Springenberg et al., ICLR Workshops 2015",
)
def guided_gradcam(call: ModelCall) -> ModelResult:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

        G = d S^c / d x with every ReLU's backward replaced by ReLU(grad) * [x > 0]
        GGC = G * upsample(Grad-CAM)           (B, C, H, W), in ``extras["guided_gradcam"]``
        maps = minmax(sum_c |GGC|)

    Batched; the ReLUs are intercepted with a TorchFunctionMode, so no module is swapped or
    mutated. Only ReLU is guided; other activations backpropagate as usual.
    """
    model, images = call.model, call.images
    if call.explain is None:
        raise ValueError("guided_gradcam needs the engine's explain callback (ModelCall.explain)")
    cam = call.explain("gradcam", call.layers)
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with _GuidedBackprop():
            output = model(x)
        scores, ids = call.score(output)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    guided = grad.detach() * cam.maps[:, None]
    return ModelResult(
        raw=cam.raw,
        maps=guided.abs().sum(dim=1),
        scores=scores.detach(),
        class_ids=ids,
        extras={"guided_backprop": grad.detach(), "guided_gradcam": guided},
    )
