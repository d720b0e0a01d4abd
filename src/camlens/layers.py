"""Finding layers: by dotted name, by module, automatically; and CAM's GAP + linear head."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from camlens.errors import LayerError, LayerNotFoundError, UnsupportedModelError

LayerSpec = Union[None, str, nn.Module, Sequence[Union[str, nn.Module]]]


def _near_names(name: str, names: list[str], n: int = 5) -> list[str]:
    near = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not near:  # a prefix or suffix is often what was meant ("layer4" vs "model.layer4")
        near = [m for m in names if name and (m.endswith(name) or m.startswith(name))][:n]
    return near


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Resolve ``spec`` (a dotted name, a module, or a sequence of these) to (name, module) pairs.

    Names are those of ``model.named_modules()``; duplicates are dropped, order is kept.
    ``spec=None`` is resolved by :func:`find_last_spatial_layer` instead.
    """
    by_name = dict(model.named_modules())
    by_module = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    items: Sequence[Any]
    items = [spec] if isinstance(spec, (str, nn.Module)) else list(spec or [])
    if not items:
        raise LayerError("layer list is empty; pass None (automatic), a name or a module")
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        if isinstance(item, str):
            if item not in by_name or item == "":
                names = [n for n in by_name if n]
                near = _near_names(item, names)
                hint = f" Near matches: {', '.join(near)}." if near else ""
                raise LayerNotFoundError(
                    f"no layer named {item!r} in {type(model).__name__}.{hint} Names are those of "
                    f"model.named_modules(), e.g. {', '.join(names[-5:])}; or pass layer=None "
                    "to use the last spatial layer."
                )
            pair = (item, by_name[item])
        elif isinstance(item, nn.Module):
            if id(item) not in by_module or item is model:
                raise LayerNotFoundError(
                    f"the module {type(item).__name__} passed as layer is not a submodule of "
                    f"{type(model).__name__}; pass a module of this model or its dotted name"
                )
            pair = (by_module[id(item)], item)
        else:
            raise LayerError(
                f"a layer must be a dotted name (str) or an nn.Module, got {type(item).__name__}"
            )
        if all(pair[0] != name for name, _ in out):
            out.append(pair)
    return out


@torch.no_grad()
def find_last_spatial_layer(model: nn.Module, images: Tensor) -> str:
    """The last layer whose output is still spatial, found by one dry run on the first image.

    "Last" in the order in which modules finish their forward (a container finishes after its
    children, so ``layer4`` wins over ``layer4.1.relu``); "spatial" means a (B, C, h, w) tensor
    with h * w > 1; the module must hold parameters, so that a parameter-free pooling that keeps
    the spatial size (VGG's adaptive ``avgpool``) does not hide the feature extractor.
    The model must already be in the state to explain (eval).
    """
    finished: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if not name or next(module.parameters(), None) is None:
            continue

        def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            if isinstance(output, Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
                finished.append(name)

        hooks.append(module.register_forward_hook(hook))
    try:
        model(images[:1])
    finally:
        for h in hooks:
            h.remove()
    if not finished:
        raise LayerError(
            f"{type(model).__name__} has no layer with a spatial (B, C, h, w) output with h*w > 1, "
            "so there is no feature map to explain automatically; pass layer= a module name"
        )
    return finished[-1]


@dataclass(frozen=True)
class LinearCall:
    """One call of an nn.Linear during a forward pass."""

    name: str
    module: nn.Linear
    input: Tensor
    output: Tensor


def find_gap_linear_head(
    acts: Tensor, logits: Tensor, calls: list[LinearCall], layer: str
) -> Tensor:
    """The weight (classes, K) of the linear layer that maps GAP(acts) to the logits.

    Checked numerically on the batch rather than trusted from names: some recorded nn.Linear
    call must have produced the logits from exactly the spatial mean of ``acts``. Raises
    :class:`UnsupportedModelError` otherwise (VGG, MobileNetV3, ConvNeXt: use Grad-CAM).
    """
    pooled = acts.mean(dim=(2, 3))
    reasons = []
    for call in reversed(calls):
        if call.output.shape != logits.shape or not _close(call.output, logits):
            reasons.append(f"the output of linear {call.name!r} is not the model's output")
            continue
        if call.input.shape != pooled.shape or not _close(call.input, pooled):
            reasons.append(
                f"the input of linear {call.name!r} is not the global average of {layer!r}"
            )
            continue
        return call.module.weight
    found = "; ".join(reasons[:2]) if reasons else "no nn.Linear runs in the forward pass"
    raise UnsupportedModelError(
        f"CAM needs layer {layer!r} to be followed by global average pooling and a single "
        f"linear layer (as in torchvision ResNet, EfficientNet or camlens' demo model), but here "
        f"{found}. Use method='gradcam' instead: it works on any CNN and equals CAM / (h*w) on "
        "GAP + linear heads."
    )


def _close(a: Tensor, b: Tensor) -> bool:
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))
