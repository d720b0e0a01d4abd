"""The engine: run the model once, capture activations (and their gradients), restore the model.

Speed and memory come from where autograd runs. The forward pass starts under ``torch.no_grad``;
the capture hook of the first target layer turns its output into a fresh leaf that requires grad
and switches autograd on for the rest of the forward. So no graph is recorded below the target
layer(s), and ``torch.autograd.grad(score.sum(), activations)`` walks only the part of the network
after them. No ``backward()``, no parameter ``.grad``, no ``retain_graph``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
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
from camlens.probe import Probe
from camlens.registry import MethodInfo, get_method
from camlens.suffix import layer_runner
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
            "load and preprocess them first (camlens.io.load_image, camlens.io.preprocess)"
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


def _option_names(fn: Callable[..., Any]) -> set[str]:
    """The keyword options a method function accepts: its parameters with defaults."""
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _noisy_copies(images: Tensor, samples: int, std: float, gen: torch.Generator) -> Tensor:
    """``samples`` copies of each image plus N(0, sigma^2), sigma = std * (max - min) of that
    image (SmoothGrad's convention); image-major order: (B * samples, C, H, W)."""
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, 1, 1, 1, 1)
    rep = images[:, None].expand(-1, samples, *images.shape[1:])
    noise = torch.randn(rep.shape, generator=gen, device=images.device, dtype=images.dtype)
    return (rep + noise * std * span).reshape(-1, *images.shape[1:])


class Explainer:
    """A reusable explainer: one model, one method, one or more layers.

    ``Explainer(model, "gradcam", "layer4")(images, target)`` is what :func:`explain` does, but
    the automatic layer search (one dry run) and the model split of gradient-free methods happen
    once and are reused for later calls.

    Keyword arguments:
        batch_size: images (or activations) per forward pass for methods that re-run the model.
        progress: show a tqdm progress bar for those passes (off by default).
        seed: seeds the noise of SS-CAM, Smooth Grad-CAM++ and ``smooth``.
        smooth: for gradient methods, average the raw maps over this many noisy copies of each
            image (SmoothGrad-style; 0 = off); ``smooth_std`` is the noise's standard deviation
            as a fraction of each image's value range (default 0.15).
        samples, smooth_std: also the number of copies and noise of ``smoothgradcampp``.
        other options go to the method (e.g. ``gamma`` and ``base`` for Finer-CAM).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam",
        layer: LayerSpec = None,
        *,
        batch_size: int = 64,
        progress: bool = False,
        seed: int = 0,
        smooth: int = 0,
        smooth_std: float = 0.15,
        **options: Any,
    ):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.method: MethodInfo = get_method(method)
        self._layers: list[tuple[str, nn.Module]] | None = (
            None if layer is None else resolve_layers(model, layer)
        )
        self.batch_size, self.progress, self.seed = batch_size, progress, seed
        if smooth and self.method.inputs != "grads":
            raise InputError(
                f"smooth= applies to gradient methods that take (acts, grads); {method!r} does "
                "not (smoothgradcampp has its own samples= option)"
            )
        self.smooth, self.smooth_std = int(smooth), float(smooth_std)
        self.exact = bool(options.pop("exact", False))
        if self.exact and self.method.name != "gradcampp":
            raise InputError(f"exact=True is an option of gradcampp, not of {method!r}")
        self.exact_chunk = int(options.pop("exact_chunk", 256))
        self._fn_options, self._score_options = self._split_options(options)

    def _split_options(self, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        info = self.method
        fn_names = _option_names(info.fn) - {"d2", "d3"}
        score_names = _option_names(info.score) if info.score is not None else set()
        if info.inputs == "grad_samples":
            fn_names |= {"samples"}
        unknown = set(options) - fn_names - score_names
        if unknown:
            accepted = sorted(fn_names | score_names) or ["none"]
            raise InputError(
                f"unknown option(s) {sorted(unknown)} for method {info.name!r}; it accepts: "
                f"{', '.join(accepted)} (and batch_size, progress, seed for any method)"
            )
        return (
            {k: v for k, v in options.items() if k in fn_names},
            {k: v for k, v in options.items() if k in score_names},
        )

    @property
    def layers(self) -> list[str] | None:
        """The layer names in use, or None before the first call resolves an automatic layer."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def __call__(self, images: Tensor, target: TargetSpec = None) -> Explanation:
        """Explain a batch. ``target``: None (top class), an int, B ints, or a callable."""
        model, info = self.model, self.method
        images = _check_images(model, images)
        if (info.needs_grads or info.inputs == "model") and torch.is_inference_mode_enabled():
            raise GradientUnavailableError(
                f"{info.name!r} needs gradients, which torch.inference_mode() forbids; call "
                "it outside inference_mode (torch.no_grad() is fine), or use a gradient-free "
                "method (cam, scorecam, ablationcam, eigencam, reciprocam)"
            )
        with preserved_model(model):
            if self._layers is None:
                self._layers = resolve_layers(model, find_last_spatial_layer(model, images))
            if info.inputs == "model":
                return self._run_model_level(images, target)
            if info.inputs == "layer_probe":
                return self._run_layer_probe(images, target)
            return self._run(images, target)

    # -- one forward with capture hooks (gradient methods, CAM, Eigen-CAM, Score-CAM family) --

    def _forward(self, batch: Tensor, track_grads: bool, linears: bool) -> tuple[Any, _Capture]:
        model = self.model
        heads = (
            [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if linears
            else []
        )
        capture = _Capture(self._layers, track_grads=track_grads, linears=heads)
        with capture, torch.no_grad():
            output = model(batch)
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
        return output, capture

    def _select(self, target: TargetSpec, output: Any, clean: int, copies: int) -> tuple:
        """Scores and class ids (see :func:`camlens.targets.select_scores`), with the method's
        own score (Finer-CAM) when it has one."""
        info = self.method
        score = (
            None
            if info.score is None
            else lambda logits, ids: info.score(logits, ids, **self._score_options)
        )
        return select_scores(target, output, clean, copies, score)

    def _run(self, images: Tensor, target: TargetSpec) -> Explanation:
        info = self.method
        batch = images.shape[0]
        copies = 0
        forward_batch = images
        if info.inputs == "grad_samples" or self.smooth:
            copies = self._fn_options.get("samples", 8) if not self.smooth else self.smooth
            gen = torch.Generator(device=images.device).manual_seed(self.seed)
            noisy = _noisy_copies(images, copies, self.smooth_std, gen)
            forward_batch = torch.cat([images, noisy])
        output, capture = self._forward(
            forward_batch, track_grads=info.needs_grads, linears=info.inputs == "class_weights"
        )
        with torch.set_grad_enabled(info.needs_grads):
            scores, ids = self._select(target, output, batch, copies)
        acts = [capture.acts[name] for name, _ in self._layers]
        options = {k: v for k, v in self._fn_options.items() if k != "samples"}
        raws: list[Tensor] = []
        if info.needs_grads and self.exact:
            grads, d2s, d3s = self._diagonal_derivatives(scores, acts)
        elif info.needs_grads:
            grads, hvps = self._gradients(scores, acts, hessian=info.inputs == "grads_hvp")
        for i, (name, _) in enumerate(self._layers):
            act = acts[i].detach().float()
            with torch.no_grad():
                if info.inputs == "grads" and copies:  # SmoothGrad-style average of raw maps
                    noisy_raw = info.fn(act[batch:], grads[i][batch:].float(), **options)
                    raw = noisy_raw.view(batch, copies, *noisy_raw.shape[1:]).mean(dim=1)
                elif info.inputs == "grads" and self.exact:
                    raw = info.fn(act, grads[i].float(), d2s[i], d3s[i], **options)
                elif info.inputs == "grads":
                    raw = info.fn(act, grads[i].float(), **options)
                elif info.inputs == "grads_hvp":
                    raw = info.fn(act, grads[i].float(), hvps[i].float(), **options)
                elif info.inputs == "grad_samples":
                    g = grads[i][batch:].float()
                    raw = info.fn(act[:batch], g.view(batch, copies, *g.shape[1:]), **options)
                elif info.inputs == "class_weights":
                    raw = info.fn(act, self._class_weights(act, output, ids, capture, name))
                elif info.inputs == "acts":
                    raw = info.fn(act, **options)
                else:  # input_probe
                    probe = Probe(
                        lambda x, _owner: self.model(x),
                        images,
                        act,
                        ids,
                        scores.detach(),
                        self.batch_size,
                        self.progress,
                        self.seed,
                        desc=f"{info.name} {name}",
                    )
                    raw = info.fn(act, probe, **options)
            raws.append(raw)
        logits = output[:batch] if isinstance(output, Tensor) and output.ndim == 2 else None
        return self._explanation(images, raws, ids[:batch], scores[:batch], logits)

    def _class_weights(
        self, act: Tensor, output: Any, ids: Tensor, capture: _Capture, name: str
    ) -> Tensor:
        if not isinstance(output, Tensor) or bool(ids.lt(0).any()):
            raise TargetError("CAM explains a class of a classifier: pass class ids as target")
        weight = find_gap_linear_head(act, output, capture.linears, name)
        return weight.detach()[ids].float()

    def _score_gradients(
        self, scores: Tensor, acts: list[Tensor], create_graph: bool
    ) -> tuple[Tensor, ...]:
        """dS/dA for every layer, with a clear error when S does not depend on one of them.
        Call under ``torch.enable_grad()`` (the caller may be under ``torch.no_grad()``)."""
        if not scores.requires_grad:
            raise TargetError(
                "the target score does not depend on the explained layer(s) "
                f"{self.layers}; pick a layer before the output that the score is computed from"
            )
        grads = torch.autograd.grad(
            scores.sum(), acts, allow_unused=True, create_graph=create_graph
        )
        missing = [name for (name, _), g in zip(self._layers, grads, strict=True) if g is None]
        if missing:
            raise TargetError(
                f"the target score does not depend on layer(s) {missing}; pick layers on "
                "the path from the input to the explained output"
            )
        return grads

    def _gradients(
        self, scores: Tensor, acts: list[Tensor], hessian: bool = False
    ) -> tuple[list[Tensor], list[Tensor]]:
        with torch.enable_grad():
            grads = self._score_gradients(scores, acts, create_graph=hessian)
            hvps: list[Tensor] = []
            if hessian:  # H A = d/dA (g . A) with A held constant in the product
                dot = sum((g * a.detach()).sum() for g, a in zip(grads, acts, strict=True))
                if dot.requires_grad:
                    hvps = [
                        h if h is not None else torch.zeros_like(a)
                        for h, a in zip(
                            torch.autograd.grad(dot, acts, allow_unused=True), acts, strict=True
                        )
                    ]
                else:  # piecewise-linear head: the Hessian is zero
                    hvps = [torch.zeros_like(a) for a in acts]
        return [g.detach() for g in grads], hvps

    def _diagonal_derivatives(
        self, scores: Tensor, acts: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """g = dS/dA and the exact diagonal d2 = d^2S/dA_i^2, d3 = d^3S/dA_i^3 per element.

        For a chunk of element indices i, one-hot tensors E_i (the same index in every image:
        images are independent, so one pass serves the batch) give, by batched double backward
        (``is_grads_batched``), the Hessian columns H E_i, whose i-th entries are d2; a second
        batched backward of E_i . (H E_i) gives d(d2_i)/dA, whose i-th entries are d3.
        Costs 2 * (elements / exact_chunk) backward passes through the network after the layer.
        """
        grads_out, d2s, d3s = [], [], []
        with torch.enable_grad():
            grads = self._score_gradients(scores, acts, create_graph=True)
            for act, g in zip(acts, grads, strict=True):
                d2 = torch.zeros_like(act)
                d3 = torch.zeros_like(act)
                if g.requires_grad:  # else S is linear in A: d2 = d3 = 0
                    n = act[0].numel()
                    flat2, flat3 = d2.view(act.shape[0], n), d3.view(act.shape[0], n)
                    for start in range(0, n, self.exact_chunk):
                        idx = torch.arange(
                            start, min(n, start + self.exact_chunk), device=act.device
                        )
                        eye = torch.zeros(len(idx), *act.shape, device=act.device, dtype=act.dtype)
                        eye.view(len(idx), act.shape[0], n)[torch.arange(len(idx)), :, idx] = 1
                        (hcol,) = torch.autograd.grad(
                            g,
                            act,
                            grad_outputs=eye,
                            is_grads_batched=True,
                            retain_graph=True,
                            create_graph=True,
                            allow_unused=True,
                        )
                        if hcol is None:
                            continue
                        hflat = hcol.reshape(len(idx), act.shape[0], n)
                        flat2[:, idx] = hflat[torch.arange(len(idx)), :, idx].T.detach()
                        if hcol.requires_grad:
                            # d2_i summed over the batch (images are independent), one per i
                            diag = (hcol * eye).reshape(len(idx), -1).sum(dim=1)
                            pick = torch.eye(len(idx), device=act.device, dtype=diag.dtype)
                            (tcol,) = torch.autograd.grad(
                                diag,
                                act,
                                grad_outputs=pick,
                                is_grads_batched=True,
                                retain_graph=True,
                                allow_unused=True,
                            )
                            if tcol is not None:
                                tflat = tcol.reshape(len(idx), act.shape[0], n)
                                flat3[:, idx] = tflat[torch.arange(len(idx)), :, idx].T.detach()
                grads_out.append(g.detach())
                d2s.append(d2.float())
                d3s.append(d3.float())
        return grads_out, d2s, d3s

    # -- gradient-free methods that re-run the part of the network after the layer --

    def _run_layer_probe(self, images: Tensor, target: TargetSpec) -> Explanation:
        info, batch = self.method, images.shape[0]
        raws: list[Tensor] = []
        first: tuple[Tensor, Tensor, Any] | None = None
        for name, module in self._layers:
            with torch.no_grad():
                act, run = layer_runner(self.model, name, module, images)
                if not isinstance(act, Tensor) or act.ndim != 4:
                    raise LayerError(f"layer {name!r} does not output a (B, C, h, w) feature map")
                owner = torch.arange(batch, device=images.device)
                output = run(act, owner)
                scores, ids = self._select(target, output, batch, 0)
                probe = Probe(
                    run,
                    images,
                    act,
                    ids,
                    scores,
                    self.batch_size,
                    self.progress,
                    self.seed,
                    desc=f"{info.name} {name}",
                )
                raws.append(info.fn(act.float(), probe, **self._fn_options))
            if first is None:
                first = (scores, ids, output)
        assert first is not None
        scores, ids, output = first
        logits = output if isinstance(output, Tensor) and output.ndim == 2 else None
        return self._explanation(images, raws, ids, scores, logits)

    # -- methods defined on the whole network (FullGrad, Guided Grad-CAM) --

    def _run_model_level(self, images: Tensor, target: TargetSpec) -> Explanation:
        from camlens.cams.model_based import ModelCall

        batch = images.shape[0]
        call = ModelCall(
            model=self.model,
            images=images,
            target=target,
            score=lambda out: self._select(target, out, batch, 0),
            layers=self._layers,
        )
        result = self.method.fn(call, **self._fn_options)
        size = (images.shape[-2], images.shape[-1])
        if result.maps is not None:
            maps = minmax(result.maps)
        else:
            maps = minmax(fuse_layers(list(result.raw.values()), size))
        return Explanation(
            maps=maps,
            raw=result.raw,
            targets=result.class_ids,
            scores=result.scores,
            layers=list(result.raw),
            method=self.method.name,
            extras=result.extras,
        )

    def _explanation(
        self, images: Tensor, raws: list[Tensor], ids: Tensor, scores: Tensor, logits: Any
    ) -> Explanation:
        size = (images.shape[-2], images.shape[-1])
        with torch.no_grad():
            maps = to_heatmap(raws[0], size) if len(raws) == 1 else minmax(fuse_layers(raws, size))
        return Explanation(
            maps=maps,
            raw={name: raw for (name, _), raw in zip(self._layers, raws, strict=True)},
            targets=ids,
            scores=scores.detach(),
            layers=[name for name, _ in self._layers],
            method=self.method.name,
            logits=logits.detach() if isinstance(logits, Tensor) else None,
        )


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    layer: LayerSpec = None,
    target: TargetSpec = None,
    **options: Any,
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

        options: ``batch_size``, ``progress``, ``seed``, ``smooth``, ``smooth_std`` and the
            method's own options, see :class:`Explainer`.

    Returns:
        an :class:`Explanation` with ``maps`` (B, H, W) in [0, 1] and ``raw`` maps per layer.
    """
    return Explainer(model, method, layer, **options)(images, target)
