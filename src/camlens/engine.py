"""The engine: run the model once, capture activations (and their gradients), restore the model.

Speed and memory come from where autograd runs. The forward pass starts under ``torch.no_grad``;
the capture hook of the first target layer turns its output into a fresh leaf that requires grad
and switches autograd on for the rest of the forward. So no graph is recorded below the target
layer(s), and ``torch.autograd.grad(score.sum(), activations)`` walks only the part of the network
after them. No ``backward()``, no parameter ``.grad``, no ``retain_graph``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from camlens import cams as _cams  # noqa: F401  (registers the methods)
from camlens.errors import GradientUnavailableError, InputError, LayerError, TargetError
from camlens.explanation import Explanation
from camlens.fusion import fuse_layers
from camlens.layers import (
    LayerSpec,
    LinearCall,
    find_gap_linear_head,
    find_last_spatial_layer,
    resolve_layers,
)
from camlens.maps import minmax, to_heatmap
from camlens.registry import MethodInfo, get_method
from camlens.targets import TargetSpec, select_scores


@contextmanager
def preserved_model(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the call and give it back exactly as it came.

    Restores every module's ``training`` flag (mixed modes too) and every parameter's
    ``requires_grad``, also when the body raises.
    """
    training = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in training:
            module.training = flag
        for param, flag in requires:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


class _Capture:
    """Forward hooks that record the activations of the target layers.

    With ``track_grads`` the first hook to fire makes its output a leaf that requires grad and
    switches autograd on for the rest of the forward. Each hook hands a clone downstream, so
    that an in-place op after the layer (VGG's ReLU(inplace=True), DenseNet's F.relu_) cannot
    change the captured activation: it is the layer's true output.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        track_grads: bool,
        linears: list[tuple[str, nn.Module]],
    ):
        self.layers = layers
        self.track_grads = track_grads
        self.acts: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self.linears: list[LinearCall] = []
        self._linears = linears
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.ndim != 4:
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise LayerError(
                    f"layer {name!r} outputs {shape}, not a (B, C, h, w) feature map; pick a "
                    "convolutional layer or block, or pass layer=None to use the last spatial one"
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.track_grads:
                if not output.requires_grad:
                    torch.set_grad_enabled(True)
                    output = output.detach().requires_grad_(True)
                self.acts[name] = output
            else:
                self.acts[name] = output.detach()
            return output.clone()

        return hook

    def _linear_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
                self.linears.append(LinearCall(name, module, inputs[0].detach(), output.detach()))

        return hook

    def __enter__(self) -> _Capture:
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._hook(name)))
            for name, module in self._linears:
                self._handles.append(module.register_forward_hook(self._linear_hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _check_images(model: nn.Module, images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        raise InputError(
            f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}; "
            "load and preprocess them first (camlens.io.load_images)"
        )
    if images.ndim != 4:
        hint = " (add a batch dimension: images.unsqueeze(0))" if images.ndim == 3 else ""
        raise InputError(f"images must be 4-D (B, C, H, W), got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise InputError(
            f"images must be a float tensor (preprocessed), got dtype {images.dtype}; "
            "convert with images.float() / 255 and normalise as the model expects"
        )
    if images.shape[0] == 0:
        raise InputError("images is an empty batch (B=0)")
    param = next(model.parameters(), None)
    if param is not None and param.device != images.device:
        raise InputError(
            f"images are on {images.device} but the model is on {param.device}; "
            f"move them with images.to('{param.device}')"
        )
    return images


class Explainer:
    """A reusable explainer: one model, one method, one or more layers.

    ``Explainer(model, "gradcam", "layer4")(images, target)`` is what :func:`explain` does, but
    the automatic layer search (one dry run) happens once and is reused for later calls.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", layer: LayerSpec = None):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.method: MethodInfo = get_method(method)
        self._layer_spec = layer
        self._layers: list[tuple[str, nn.Module]] | None = (
            None if layer is None else resolve_layers(model, layer)
        )

    @property
    def layers(self) -> list[str] | None:
        """The layer names in use, or None before the first call resolves an automatic layer."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def __call__(self, images: Tensor, target: TargetSpec = None) -> Explanation:
        """Explain a batch. ``target``: None (top class), an int, B ints, or a callable."""
        model, info = self.model, self.method
        images = _check_images(model, images)
        if info.needs_grads and torch.is_inference_mode_enabled():
            raise GradientUnavailableError(
                f"{info.name!r} needs gradients, which torch.inference_mode() forbids; call it "
                "outside inference_mode (torch.no_grad() is fine), or use method='cam'"
            )
        with preserved_model(model):
            if self._layers is None:
                self._layers = resolve_layers(model, find_last_spatial_layer(model, images))
            return self._run(images, target)

    def _run(self, images: Tensor, target: TargetSpec) -> Explanation:
        model, info = self.model, self.method
        batch = images.shape[0]
        linears = (
            []
            if info.needs_grads
            else [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        )
        capture = _Capture(self._layers, track_grads=info.needs_grads, linears=linears)
        with capture, torch.no_grad():
            output = model(images)
        for name, _ in self._layers:
            if name not in capture.acts:
                raise LayerError(
                    f"layer {name!r} did not run during the forward pass, so it cannot be "
                    "explained; pick a layer on the path from the input to the output"
                )
            if capture.calls[name] > 1:
                raise LayerError(
                    f"layer {name!r} ran {capture.calls[name]} times in one forward pass (a "
                    "shared module); its activation is ambiguous, pick a layer that runs once"
                )
        with torch.set_grad_enabled(info.needs_grads):
            scores, ids = select_scores(target, output, batch)
        acts = [capture.acts[name] for name, _ in self._layers]
        if info.needs_grads:
            extra = self._gradients(scores, acts)
        else:
            logits = output if isinstance(output, Tensor) else None
            if logits is None or ids.lt(0).any():
                raise TargetError("CAM explains a class of a classifier: pass class ids as target")
            extra = []
            for (name, _), act in zip(self._layers, acts, strict=True):
                weight = find_gap_linear_head(act, logits, capture.linears, name)
                extra.append(weight.detach()[ids].to(act.dtype))
        with torch.no_grad():
            raw = {
                name: info.fn(act.detach().float(), ext.float())
                for (name, _), act, ext in zip(self._layers, acts, extra, strict=True)
            }
            size = (images.shape[-2], images.shape[-1])
            if len(raw) == 1:
                maps = to_heatmap(next(iter(raw.values())), size)
            else:
                maps = minmax(fuse_layers(list(raw.values()), size))
        logits_out = output.detach() if isinstance(output, Tensor) and output.ndim == 2 else None
        return Explanation(
            maps=maps,
            raw=raw,
            targets=ids,
            scores=scores.detach(),
            layers=[name for name, _ in self._layers],
            method=info.name,
            logits=logits_out,
        )

    def _gradients(self, scores: Tensor, acts: list[Tensor]) -> list[Tensor]:
        if not scores.requires_grad:
            raise TargetError(
                "the target score does not depend on the explained layer(s) "
                f"{self.layers}; pick a layer before the output that the score is computed from"
            )
        with torch.enable_grad():  # the caller may be under torch.no_grad()
            grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        missing = [name for (name, _), g in zip(self._layers, grads, strict=True) if g is None]
        if missing:
            raise TargetError(
                f"the target score does not depend on layer(s) {missing}; pick layers on the "
                "path from the input to the explained output"
            )
        return list(grads)


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    layer: LayerSpec = None,
    target: TargetSpec = None,
) -> Explanation:
    """Explain what ``model`` looked at in ``images``, with a CAM method.

    Args:
        model: any PyTorch vision model; it is left exactly as it came (mode, flags, hooks).
        images: (B, C, H, W) float tensor, preprocessed, on the model's device.
        method: a registered name, see :func:`camlens.methods` ("cam", "gradcam", ...).
        layer: None (the last spatial layer, found by one dry run), a dotted name from
            ``model.named_modules()``, an nn.Module, or a list of these (maps fused as LayerCAM).
        target: None (each image's top class), an int (one class for all), B ints, or a
            callable ``output -> (B,) scores``.

    Returns:
        an :class:`Explanation` with ``maps`` (B, H, W) in [0, 1] and ``raw`` maps per layer.
    """
    return Explainer(model, method, layer)(images, target)
