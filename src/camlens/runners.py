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

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camlens.display import display_maps, logits_or_none
from camlens.errors import InputError, LayerError
from camlens.explanation import Explanation
from camlens.layers import layout_hint_module
from camlens.layouts import Layout, infer_layout
from camlens.maps import minmax
from camlens.probe import Probe
from camlens.suffix import layer_runner
from camlens.targets import Selection, TargetSpec

if TYPE_CHECKING:
    from camlens.engine import Explainer


def run_layer_probe(
    ex: Explainer, images: Tensor, model_input: Any, target: TargetSpec
) -> Explanation:
    info, batch = ex.method, images.shape[0]
    if isinstance(model_input, (list, tuple)):
        raise InputError(f"{info.name} re-runs the network after the layer; pass a tensor")
    raws: list[Tensor] = []
    first: tuple[Selection, Any] | None = None
    for name, module in ex._layers:
        with torch.no_grad():
            act, run = layer_runner(ex.model, name, module, images)
            if not isinstance(act, Tensor) or act.ndim != images.ndim:
                shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
                raise LayerError(
                    f"{info.name} zeroes channels of a channels-first feature map, but layer "
                    f"{name!r} outputs {shape}; use a CNN layer, or gradcam / scorecam / "
                    "layercam, which read any layout"
                )
            # a callable layout is the user's word for this map; else decide it as _run does
            layout = (
                Layout("custom", fn=ex.layout_spec)
                if callable(ex.layout_spec)
                else infer_layout(
                    name,
                    tuple(act.shape),
                    tuple(images.shape[2:]),
                    layout_hint_module(ex.model, name, module),
                    spec=ex.layout_spec,
                )
            )
            if layout.kind not in ("channels_first", "custom"):
                raise LayerError(
                    f"{info.name} zeroes channels of a channels-first feature map, but layer "
                    f"{name!r} is {layout.name}; use gradcam / scorecam / layercam here"
                )
            owner = torch.arange(batch, device=images.device)
            output = run(act, owner)
            sel = ex._select(target, output, batch, 0)
            probe = Probe(
                run,
                images,
                act,
                sel.ids,
                sel.scores,
                ex.batch_size,
                ex.progress,
                ex.seed,
                desc=f"{info.name} {name}",
            )
            raws.append(info.fn(act.float(), probe, **ex._fn_options))
        if first is None:
            first = (sel, output)
    assert first is not None
    sel, output = first
    logits = logits_or_none(output, batch)
    return ex._explanation(images, raws, sel.ids, sel.scores, logits, sel.extras)


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
    from camlens.cams.model_based import ModelCall

    batch = images.shape[0]
    tokens = token_layout(ex, images, model_input) if ex.method.uses_tokens else None
    call = ModelCall(
        model=ex.model,
        images=images,
        target=target,
        score=lambda out: _pair(ex._select(target, out, batch, 0)),
        layers=ex._layers,
        explain=lambda method, layers: type(ex)(
            ex.model, method, [m for _, m in layers], layout=ex.layout_spec
        )(model_input, target),
        to_grid=None if tokens is None else tokens.tokens_to_grid,
        num_prefix=0 if tokens is None else tokens.prefix,
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
        extras=result.extras,
    )


def _pair(sel: Selection) -> tuple[Tensor, Tensor]:
    return sel.scores, sel.ids
