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
    ``spec=None`` is resolved by :func:`find_default_layer` instead.
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


_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: parameter-free activations that may be explained: a conv's ReLU in a Sequential is its output
_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.Mish)


def _search_root(model: nn.Module) -> str:
    """Where the automatic layer is searched: the whole model, or for segmentation and detection
    models (torchvision's ``backbone`` attribute) the backbone's body, never a head."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return (
            "backbone.body."
            if isinstance(getattr(backbone, "body", None), nn.Module)
            else "backbone."
        )
    return ""


#: top-level children (below the search root) that are heads: never the automatic layer
_HEADS = ("head", "heads", "head_dist", "classifier", "fc", "pre_logits")


def _excluded(model: nn.Module, root: str, name: str) -> bool:
    """A head (timm's ``head``, torchvision's ``classifier``, ...) or, in torchvision's SSD
    feature extractors, an extra layer added after the base network (``backbone.extra.1``...):
    its maps shrink to 1 x 1, the base network's last map is the feature map to explain."""
    rest = name[len(root) :] if name.startswith(root) else name
    first = rest.split(".", 1)[0]
    if first in _HEADS:
        return True
    base = model.get_submodule(root[:-1]) if root else model
    extra = getattr(base, "extra", None)
    if isinstance(extra, nn.ModuleList) and isinstance(getattr(base, "features", None), nn.Module):
        parts = rest.split(".")
        # VGG's SSD puts the base network's fc6/fc7 in extra[0]; SSDLite's extras are all added
        keep_first = len(extra) > 0 and any(isinstance(m, nn.MaxPool2d) for m in extra[0].modules())
        return first == "extra" and not (keep_first and len(parts) > 1 and parts[1] == "0")
    return False


def _reach_score(output: Any, head_input: Tensor | None) -> Tensor | None:
    """A scalar for the dry run's gradient check: what reaches it reaches the score.

    The input of the last linear layer that maps (B, D) features (the classifier head) when
    there is one: with it the check does not depend on the head's weights (torchvision's ViT
    initialises its head to zero, which would make every gradient of the output zero). Else the
    largest output value per image.
    """
    from camlens.layouts import primary_or_none

    if head_input is not None and head_input.requires_grad:
        return head_input.float().square().sum()
    out = primary_or_none(output)
    if out is None or not out.is_floating_point() or not out.requires_grad:
        return None
    return out.flatten(1).float().amax(dim=1).sum()


def _first_tensor(out: Any) -> Tensor | None:
    """A module's output tensor, or the first element of a tuple output (as the capture reads)."""
    if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
        out = out[0]
    return out if isinstance(out, Tensor) else None


def find_default_layer(model: nn.Module, images: Any, call: Any = None) -> str:
    """The layer ``layer=None`` explains, found by one dry run on the first image.

    Candidates are the modules that hold parameters or are activation modules (so a conv's ReLU
    in a Sequential is explained, not the conv before it), run once, and output (or output
    first, in a tuple) a feature map or patch tokens:

    - feature maps (channels-first or channels-last, see :mod:`camlens.layouts`) with more than
      one position, not from a normalisation layer, and not inside a module that outputs tokens
      (a patch embedding's convolution, CvT's convolutional attention projections);
    - token outputs (B, N, C) of a LayerNorm (the input norm of the last block in class-token
      models, ``encoder_layer_11.ln_1``, ``blocks.11.norm1``) or of a block holding such a norm
      (in mean-pooled models the last block's output reaches the score: it wins over the norm
      of its MLP branch); in token models without LayerNorm (LeViT's BatchNorm blocks), of any
      such module (its blocks and stages).

    One forward with autograd on (the first image only) and one gradient keep the candidates
    whose output reaches the score (for tokens: whose *patch* tokens do, as in class-token
    models only the class token of the last norms does). The automatic layer is the last
    candidate to finish its forward (so a container wins over its children: ``layer4``,
    ``features``). Never a head (``head``, ``classifier``, ``fc``, ... below the root).
    Segmentation and detection models (a ``backbone`` attribute): the same rules inside the
    backbone (its ``body`` with FPN; SSD: the base network, not the extra layers).
    Ultralytics YOLO detectors: the neck's P3 output, the detection head's first input (see
    :mod:`camlens.detection.yolo`), without a dry run.
    The model must already be in the state to explain (eval). ``call(model, x)`` runs it
    (default ``model(x)``); ``images`` is a (B, C, *spatial) tensor or a list of images.
    Under ``torch.inference_mode`` no gradient can be taken: the check is skipped.
    """
    from camlens.detection.yolo import default_layer
    from camlens.layouts import _fits, detector_frame, detector_transform, token_grid

    yolo_layer = default_layer(model)
    if yolo_layer is not None:
        return yolo_layer

    first = images[:1]
    probe: Any
    if isinstance(first, Tensor):
        probe = first.detach()
        spatial = tuple(first.shape[2:])
    else:
        probe = [im.detach() for im in first]
        spatial = tuple(first[0].shape[1:])
    root = _search_root(model)
    events: list[tuple[str, nn.Module, Tensor, tuple[int, ...] | None]] = []
    counts: dict[str, int] = {}
    state: dict[str, Any] = {"grid": None, "inputs": spatial, "head": None}
    hooks = []

    transform = detector_transform(model)
    if transform is not None:
        # torchvision detectors resize and pad the images first: feature maps follow that size
        def t_hook(_m: nn.Module, _i: Any, out: Any) -> None:
            frame = detector_frame(out)
            if frame is not None:
                state["inputs"] = frame[0]

        hooks.append(transform.register_forward_hook(t_hook))

    def head_hook(_m: nn.Module, inputs: Any, _out: Any) -> None:
        if inputs and isinstance(inputs[0], Tensor) and inputs[0].ndim == 2:
            state["head"] = inputs[0]

    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(head_hook))
        if isinstance(module, _CONVS):

            def g_hook(_m: nn.Module, _i: Any, out: Any) -> None:
                if isinstance(out, Tensor) and out.ndim >= 3:
                    state["grid"] = tuple(out.shape[2:])

            hooks.append(module.register_forward_hook(g_hook))
        inside = name.startswith(root) or name == root[:-1]
        learned = next(module.parameters(), None) is not None
        if not inside or not (learned or isinstance(module, _ACTS)):
            continue
        if _excluded(model, root, name):
            continue

        def hook(m: nn.Module, _i: Any, out: Any, name: str = name) -> Any:
            counts[name] = counts.get(name, 0) + 1
            tensor = _first_tensor(out)
            if tensor is None:
                return None
            # hand a copy downstream, as the capture does: a tuple's other elements or an
            # in-place op after the module must not pass for the path from this output
            tensor = tensor.clone()
            events.append((name, m, tensor, state["grid"]))
            return (tensor, *out[1:]) if isinstance(out, tuple) else tensor

        hooks.append(module.register_forward_hook(hook))

    grad = not torch.is_inference_mode_enabled()
    try:
        events.clear()
        x = probe
        if grad:  # the features must sit in a graph even when every parameter is frozen
            x = (
                probe.detach().requires_grad_(True)
                if isinstance(probe, Tensor)
                else [im.detach().requires_grad_(True) for im in probe]
            )
        with torch.set_grad_enabled(grad):
            output = model(x) if call is None else call(model, x)
    finally:
        for h in hooks:
            h.remove()

    order = {name: i for i, (name, *_rest) in enumerate(events)}
    nd = len(state["inputs"])
    spatial_cands: list[tuple[str, Tensor, int]] = []
    norm_tokens: list[tuple[str, Tensor, int]] = []
    other_tokens: list[tuple[str, Tensor, int]] = []
    token_modules: set[str] = set()
    for name, module, out, grid in events:
        if counts[name] != 1:
            continue
        shape = tuple(out.shape)
        if len(shape) == nd + 2 and not isinstance(module, _NORMS):
            last = _fits(shape[1:-1], state["inputs"]) and not _fits(shape[2:], state["inputs"])
            if max(shape[1:-1] if last else shape[2:]) > 1:
                spatial_cands.append((name, out, 0))
        elif len(shape) == 3:
            found = token_grid(shape[1], state["inputs"], grid)
            if found is not None and found[1] and max(found[1]) > 1:
                token_modules.add(name)
                if isinstance(module, nn.LayerNorm):
                    norm_tokens.append((name, out, found[0]))
                elif not isinstance(module, _NORMS):
                    other_tokens.append((name, out, found[0]))

    def inside_tokens(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in token_modules for i in range(1, len(parts)))

    spatial_cands = [c for c in spatial_cands if not inside_tokens(c[0])]
    with torch.enable_grad():  # the caller may be under torch.no_grad()
        score = _reach_score(output, state["head"]) if grad else None
    cands = spatial_cands + norm_tokens + other_tokens
    if score is None or not cands:  # nothing to differentiate: feature maps as they are
        found_all = [name for name, _, _ in spatial_cands]
    else:
        with torch.enable_grad():
            grads = torch.autograd.grad(score, [o for _, o, _ in cands], allow_unused=True)
        reach = {
            name: g is not None and bool(g[:, prefix:].abs().sum() > 0)
            for (name, _o, prefix), g in zip(cands, grads, strict=True)
        }
        tokens = [n for n, _, _ in norm_tokens if reach[n]]
        if tokens:  # a block whose own output reaches wins over the norms inside it (its MLP's)
            tokens += [
                n
                for n, _, _ in other_tokens
                if reach[n] and any(t.startswith(n + ".") for t in tokens)
            ]
        else:
            tokens = [n for n, _, _ in other_tokens if reach[n]]
        found_all = [n for n, _, _ in spatial_cands if reach[n]] + tokens
    if not found_all:
        where = f" inside {root[:-1]!r}" if root else ""
        raise LayerError(
            f"{type(model).__name__} has no layer{where} with a spatial output (a (B, C, h, w) "
            "feature map, channels-last map or patch tokens) that runs once and reaches the "
            "score, so there is no feature map to explain automatically; pass layer= a module "
            "name"
        )
    return max(found_all, key=lambda n: order[n])


def layout_hint_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """The module whose type tells the layout of ``module``'s output: itself, or for an
    element-wise activation in a Sequential the learned layer before it (a ReLU keeps its
    input's layout)."""
    if not isinstance(module, _ACTS):
        return module
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    if not isinstance(parent, nn.Sequential):
        return module
    before = []
    for child in parent.children():
        if child is module:
            break
        before.append(child)
    for child in reversed(before):
        if next(child.parameters(), None) is not None:
            return child
    return module


def find_last_spatial_layer(model: nn.Module, images: Tensor) -> str:
    """The automatic layer: see :func:`find_default_layer` (kept for backwards compatibility)."""
    return find_default_layer(model, images)


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
    pooled = acts.float().mean(dim=tuple(range(2, acts.ndim)))
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
    """Equal up to rounding in the coarser of the two dtypes (float16 / bfloat16 models)."""
    eps = max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in (a, b))
    rtol = max(1e-4, 4 * eps)
    a, b = a.detach().float(), b.detach().float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol / 10 * scale))
