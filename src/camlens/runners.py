"""The runs of :class:`camlens.engine.Explainer` that do not go through one captured forward.

- gradient-free methods that re-run only the part of the network after the layer
  (Ablation-CAM, Recipro-CAM): the model is split there once (:mod:`camlens.suffix`) and a
  :class:`camlens.probe.Probe` feeds the method batches of modified activations;
- methods defined on the whole network (FullGrad, Guided Grad-CAM, the attention methods):
  the method receives a :class:`camlens.cams.model_based.ModelCall`.

Each function reads the explainer's state (model, method, layers, options) and returns an
:class:`camlens.explanation.Explanation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camlens.display import display_maps, logits_or_none
from camlens.errors import InputError, LayerError
from camlens.explanation import Explanation
from camlens.layers import layout_hint_module
from camlens.layouts import Layout, infer_layout
from camlens.maps import minmax
from camlens.precision import as_caller, autocast_state, float32_maths
from camlens.probe import Probe
from camlens.suffix import layer_runner
from camlens.targets import Selection, TargetSpec

if TYPE_CHECKING:
    from camlens.engine import Explainer


def run_layer_probe(
    ex: Explainer, images: Tensor, model_input: Any, target: TargetSpec
) -> Explanation:
    """Gradient-free methods that re-run only the network after each layer (Ablation-CAM,
    Recipro-CAM): one explanation of ``images``."""
    info, batch = ex.method, images.shape[0]
    if isinstance(model_input, (list, tuple)):
        raise InputError(f"{info.name} re-runs the network after the layer; pass a tensor")
    raws: list[Tensor] = []
    first: tuple[Selection, Any] | None = None
    for name, module in ex._layers:
        with torch.no_grad():
            native, native_run = layer_runner(ex.model, name, module, images)
            if not isinstance(native, Tensor) or native.ndim < 3:
                shape = tuple(native.shape) if isinstance(native, Tensor) else type(native).__name__
                raise LayerError(
                    f"{info.name} modifies a feature map, channels-last map or tokens, but layer "
                    f"{name!r} outputs {shape}; pick a convolutional layer, block or transformer "
                    "norm"
                )
            layout = _probe_layout(ex, name, module, native, images, model_input)
            act, run = _spatial_runner(layout, native, native_run)
            owner = torch.arange(batch, device=images.device)
            output = run(act, owner)
            sel = ex._select(target, output, batch, 0)
            device = images.device.type  # re-runs keep the caller's autocast; formulas float32
            probe = Probe(
                as_caller(run, device, autocast_state(device)),
                images,
                act,
                sel.ids,
                sel.scores,
                ex.batch_size,
                ex.progress,
                ex.seed,
                desc=f"{info.name} {name}",
                input_dtype=act.dtype,
            )
            with float32_maths(device):
                raws.append(info.fn(act.float(), probe, **ex._fn_options))
        if first is None:
            first = (sel, output)
    assert first is not None
    sel, output = first
    logits = logits_or_none(output, batch)
    return ex._explanation(images, raws, sel.ids, sel.scores, logits, sel.extras)


def _probe_layout(
    ex: Explainer, name: str, module: Any, act: Tensor, images: Tensor, model_input: Any
) -> Layout:
    """The layout of the layer's output, decided as the captured-forward path decides it: a
    callable ``layout=`` is the user's word; tokens need the patch grid of one captured forward
    (taken once per input size, then reused)."""
    if callable(ex.layout_spec):
        return Layout("custom", fn=ex.layout_spec)
    if act.ndim == 3:
        key = (name, tuple(act.shape[1:]), tuple(images.shape[2:]))
        if key not in ex._layouts:
            _, capture = ex._forward(images, model_input, track_grads=False, linears=False)
            return ex._layout_of(name, module, capture.acts[name], capture, images)
        return ex._layouts[key]
    return infer_layout(
        name,
        tuple(act.shape),
        tuple(images.shape[2:]),
        layout_hint_module(ex.model, name, module),
        spec=ex.layout_spec,
    )


def _spatial_runner(
    layout: Layout, native: Tensor, run: Callable[[Tensor, Tensor], Any]
) -> tuple[Tensor, Callable[[Tensor, Tensor], Any]]:
    """(the activation as (B, K, *spatial), a runner that takes modified (N, K, *spatial)
    activations of images ``owner`` back to the layer's own layout before the rest runs).

    Channels-last maps are permuted back. Tokens get their patch tokens from the modified map
    and their prefix tokens (class, distillation, register tokens) from the unmodified output
    of the same image: the methods mask or ablate the patch grid, never the prefix (as
    ViT-ReciproCAM keeps the class token). A custom layout (a callable) cannot be inverted to
    put modified activations back, so it is accepted only where it leaves the layer's output as
    it is (already channels-first); otherwise the call is refused, not run on the wrong axes.
    """
    if layout.kind == "custom" and layout.fn is not None:
        mapped = layout.fn(native)
        if not isinstance(mapped, Tensor) or not torch.equal(mapped, native):
            raise InputError(
                f"this method re-runs the network after the layer on modified activations of "
                f"shape {tuple(native.shape)}, and a callable layout= cannot be undone to put "
                "them back; pass layout='tokens', 'nhwc' or None instead"
            )
    if layout.kind == "channels_last":
        return native.movedim(-1, 1), lambda x, owner: run(x.movedim(1, -1), owner)
    if layout.kind == "tokens":
        prefix = native[:, : layout.prefix]

        def tokens(x: Tensor, owner: Tensor) -> Any:
            patches = x.flatten(2).transpose(1, 2).to(native.dtype)
            return run(torch.cat([prefix[owner], patches], dim=1), owner)

        return layout.to_spatial(native), tokens
    return native, run


def token_layout(ex: Explainer, images: Tensor, model_input: Any) -> Layout | None:
    """The token layout of the first explained layer, when it holds tokens (one no-grad
    forward the first time; attention methods map token relevance to the patch grid)."""
    name, module = ex._layers[0]
    known = ex.layout(name)
    if known is None:
        _, capture = ex._forward(images, model_input, track_grads=False, linears=False)
        known = ex._layout_of(name, module, capture.acts[name], capture, images)
    return known if known.kind == "tokens" else None


def run_model_level(
    ex: Explainer, images: Tensor, model_input: Any, target: TargetSpec
) -> Explanation:
    """Methods that need the whole model (FullGrad, Guided Grad-CAM, the attention methods): one
    explanation of ``images``."""
    from camlens.cams.model_based import ModelCall

    batch = images.shape[0]
    tokens = token_layout(ex, images, model_input) if ex.method.uses_tokens else None
    extras: dict[str, Tensor] = {}  # the selection's own (a detection target's boxes)

    def score(out: Any) -> tuple[Tensor, Tensor]:
        sel = ex._select(target, out, batch, 0)
        for key, value in sel.extras.items():
            extras.setdefault(key, value)  # the first scored output: the images themselves
        return _pair(sel)

    call = ModelCall(
        model=ex.model,
        images=images,
        target=target,
        score=score,
        layers=ex._layers or [],
        explain=lambda method, layers: type(ex)(
            ex.model, method, [m for _, m in layers], layout=ex.layout_spec
        )(model_input, target),
        to_grid=None if tokens is None else tokens.tokens_to_grid,
        num_prefix=0 if tokens is None else tokens.prefix,
        select=lambda out, copies: _pair(ex._select(target, out, batch, copies)),
        batch_size=ex.batch_size,
        progress=ex.progress,
        seed=ex.seed,
        layer_auto=ex._auto_layer,
    )
    result = ex.method.fn(call, **ex._fn_options)
    if result.maps is not None:
        maps = minmax(result.maps)
    else:  # model-level raw maps always go through the fusion's scaling, as before
        maps = display_maps(list(result.raw.values()), tuple(images.shape[2:]), fuse_one=True)
    return Explanation(
        maps=maps,
        raw=result.raw,
        targets=result.class_ids,
        scores=result.scores,
        layers=list(result.raw),
        method=ex.method.name,
        extras={**extras, **result.extras},
    )


def _pair(sel: Selection) -> tuple[Tensor, Tensor]:
    return sel.scores, sel.ids
