"""The engine: run the model once, capture activations (and their gradients), restore the model.

Speed and memory come from where autograd runs. The forward pass starts under ``torch.no_grad``;
the capture hook of the first target layer turns its output into a fresh leaf that requires grad
and switches autograd on for the rest of the forward. So no graph is recorded below the target
layer(s), and ``torch.autograd.grad(score.sum(), activations)`` walks only the part of the network
after them. No ``backward()``, no parameter ``.grad``, no ``retain_graph``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from camlens import cams as _cams  # noqa: F401  (registers the methods)
from camlens.errors import (
    GradientUnavailableError,
    InputError,
    LayerError,
    TargetError,
)
from camlens.explanation import Explanation
from camlens.fusion import fuse_layers
from camlens.layers import (
    LayerSpec,
    LinearCall,
    find_default_layer,
    find_gap_linear_head,
    layout_hint_module,
    resolve_layers,
)
from camlens.layouts import (
    Layout,
    LayoutSpec,
    detector_frame,
    detector_transform,
    infer_layout,
    primary_or_none,
    primary_output,
)
from camlens.maps import minmax, to_heatmap, upsample
from camlens.probe import Probe
from camlens.registry import MethodInfo, get_method
from camlens.suffix import layer_runner
from camlens.targets import Selection, Target, TargetSpec, select_scores
from camlens.targets_output import check_signed


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
    change the captured activation: it is the layer's true output. A layer may output a tensor
    of any layout (feature maps, channels-last maps, tokens, volumes) or a tuple whose first
    element is one (as some transformer blocks do); :mod:`camlens.layouts` reads it afterwards.

    With ``grids`` the hooks also note, for each target layer, the spatial shape of the last
    convolution output before it (a transformer's patch embedding: the token grid), and for
    torchvision detectors the size of the resized, padded images the backbone sees.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        track_grads: bool,
        linears: list[tuple[str, nn.Module]],
        model: nn.Module | None = None,
        grids: bool = True,
    ):
        self.layers = layers
        self._grids = grids
        self.track_grads = track_grads
        self.acts: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self.grid_at: dict[str, tuple[int, ...] | None] = {}
        self.frame: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (padded, resized)
        self.linears: list[LinearCall] = []
        self._linears = linears
        self._model = model
        self._grid: tuple[int, ...] | None = None
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            rest: tuple = ()
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                output, rest = output[0], tuple(output[1:])
            if not isinstance(output, Tensor) or output.ndim < 3:
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise LayerError(
                    f"layer {name!r} outputs {shape}, not a feature map, channels-last map or "
                    "tokens; pick a convolutional layer, block or transformer norm, or pass "
                    "layer=None to use the automatic one"
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            self.grid_at[name] = self._grid
            if self.track_grads:
                if not output.requires_grad:
                    torch.set_grad_enabled(True)
                    output = output.detach().requires_grad_(True)
                self.acts[name] = output
            else:
                self.acts[name] = output.detach()
            out = output.clone()
            return (out, *rest) if rest else out

        return hook

    def _linear_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
                self.linears.append(LinearCall(name, module, inputs[0].detach(), output.detach()))

        return hook

    def _grid_hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim >= 3:
            self._grid = tuple(output.shape[2:])

    def _frame_hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.frame = detector_frame(output) or self.frame

    def __enter__(self) -> _Capture:
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._hook(name)))
            for name, module in self._linears:
                self._handles.append(module.register_forward_hook(self._linear_hook(name)))
            if self._model is not None:
                for module in self._model.modules() if self._grids else []:
                    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                        self._handles.append(module.register_forward_hook(self._grid_hook))
                transform = detector_transform(self._model)
                if transform is not None:
                    self._handles.append(transform.register_forward_hook(self._frame_hook))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _check_images(model: nn.Module, images: Any) -> tuple[Tensor, Any]:
    """(images as one (B, C, *spatial) tensor, what the model is called with).

    A tensor is both. A list of (C, H, W) images of one size (torchvision detectors' input) is
    stacked for the maps and passed to the model as the list.
    """
    given = images
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, Tensor) for i in images):
        sizes = {tuple(i.shape) for i in images}
        if len(sizes) != 1:
            raise InputError(
                f"a list of images must hold images of one size, got sizes {sorted(sizes)}; "
                "resize them first or explain them one at a time"
            )
        images = torch.stack(list(images))
    if not isinstance(images, Tensor):
        raise InputError(
            f"images must be a torch.Tensor of shape (B, C, H, W) (or (B, C, D, H, W) for "
            f"volumes and video), or a list of (C, H, W) tensors, got {type(images).__name__}; "
            "load and preprocess them first (camlens.io.load_image, camlens.io.preprocess)"
        )
    if images.ndim not in (4, 5):
        hint = " (add a batch dimension: images.unsqueeze(0))" if images.ndim == 3 else ""
        raise InputError(
            f"images must be 4-D (B, C, H, W) or, for volumes and video, 5-D (B, C, D, H, W); "
            f"got shape {tuple(images.shape)}{hint}"
        )
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
    return images, (given if isinstance(given, (list, tuple)) else images)


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
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, *[1] * images.ndim)
    rep = images[:, None].expand(-1, samples, *images.shape[1:])
    noise = torch.randn(rep.shape, generator=gen, device=images.device, dtype=images.dtype)
    return (rep + noise * std * span).reshape(-1, *images.shape[1:])


class Explainer:
    """A reusable explainer: one model, one method, one or more layers.

    ``Explainer(model, "gradcam", "layer4")(images, target)`` is what :func:`explain` does, but
    the automatic layer search (one dry run), the layers' layouts and the model split of
    gradient-free methods happen once and are reused for later calls.

    Keyword arguments:
        layout: how to read the layer's activation: None (decided from the model, see
            :mod:`camlens.layouts`), ``"nchw"``, ``"nhwc"``, ``"tokens"``, or a callable
            activation -> (B, C, *spatial) applied to activations and gradients alike (like
            pytorch-grad-cam's ``reshape_transform``: a re-indexing such as permute, reshape or
            slicing).
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
        layout: LayoutSpec = None,
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
        if layout is not None and not callable(layout) and layout not in ("nchw", "nhwc", "tokens"):
            raise InputError(
                f"layout must be None, 'nchw', 'nhwc', 'tokens' or a callable, got {layout!r}"
            )
        self.layout_spec = layout
        self._layouts: dict[tuple, Layout] = {}
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
        self._frame: tuple[tuple[int, ...], tuple[int, ...]] | None = None

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
                f"{', '.join(accepted)} (and layout, batch_size, progress, seed for any method)"
            )
        return (
            {k: v for k, v in options.items() if k in fn_names},
            {k: v for k, v in options.items() if k in score_names},
        )

    @property
    def layers(self) -> list[str] | None:
        """The layer names in use, or None before the first call resolves an automatic layer."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def layout(self, name: str) -> Layout | None:
        """The layout decided for layer ``name`` at the last call (None before any call)."""
        found = [lay for (n, *_), lay in self._layouts.items() if n == name]
        return found[-1] if found else None

    def __call__(self, images: Tensor | list[Tensor], target: TargetSpec = None) -> Explanation:
        """Explain a batch.

        ``images``: (B, C, H, W), (B, C, D, H, W) for volumes and video, or a list of
        same-size (C, H, W) images (torchvision detectors). ``target``: None (top class), an
        int, B ints, (B, T) ints, a :mod:`camlens.targets` target (``top(k)``,
        ``segmentation``, ``similarity``, ``detections``) or a callable output -> (B,) or
        (B, T) scores. With T targets per image, maps are (B, T, *spatial).
        """
        info = self.method
        check_signed(target, info.name, info.inputs)
        with self._bound(target):
            return self._call(images, target)

    @contextmanager
    def _bound(self, target: TargetSpec) -> Iterator[None]:
        """Run the module a target asks for (``target.bind(model)``, e.g. a CLIP model's image
        tower scored against text prompts, whose submodules are the model's own) for one call."""
        bind = getattr(target, "bind", None)
        if not callable(bind):
            yield
            return
        model = self.model
        self.model = bind(model)
        try:
            with preserved_model(model):
                yield
        finally:
            self.model = model

    def _call(self, images: Tensor | list[Tensor], target: TargetSpec) -> Explanation:
        model, info = self.model, self.method
        images, model_input = _check_images(model, images)
        if (info.needs_grads or info.inputs == "model") and torch.is_inference_mode_enabled():
            raise GradientUnavailableError(
                f"{info.name!r} needs gradients, which torch.inference_mode() forbids; call "
                "it outside inference_mode (torch.no_grad() is fine), or use a gradient-free "
                "method (cam, scorecam, ablationcam, eigencam, reciprocam)"
            )
        try:
            return self._explain(images, model_input, target)
        except TypeError as exc:
            if not isinstance(model_input, (list, tuple)):
                raise
            raise InputError(
                f"{type(model).__name__} does not take a list of images "
                f"({str(exc).splitlines()[0]}); pass a (B, C, H, W) tensor (lists are for "
                "torchvision detectors)"
            ) from exc

    def _explain(self, images: Tensor, model_input: Any, target: TargetSpec) -> Explanation:
        model, info = self.model, self.method
        with preserved_model(model):
            if self._layers is None:
                self._layers = resolve_layers(model, find_default_layer(model, model_input))
            if not self._fast_multi() and self._maybe_multi(target):
                with torch.no_grad():
                    sel = self._select(target, model(model_input), images.shape[0], 0)
                if sel.scores.ndim == 2:
                    return self._per_target(images, model_input, target, sel)
            if info.inputs == "model":
                return self._run_model_level(images, model_input, target)
            if info.inputs == "layer_probe":
                return self._run_layer_probe(images, model_input, target)
            return self._run(images, model_input, target)

    # -- several targets per image --

    def _fast_multi(self) -> bool:
        """Whether T targets per image go through one forward and one batched gradient."""
        info = self.method
        if info.inputs == "grads":
            return not self.exact and not self.smooth
        if info.inputs == "model":
            return info.uses_tokens  # the attention methods batch their targets themselves
        return info.inputs in ("class_weights", "acts", "input_probe")

    @staticmethod
    def _maybe_multi(target: TargetSpec) -> bool:
        if target is None or isinstance(target, int):
            return False
        if isinstance(target, Tensor):
            return target.ndim == 2
        if isinstance(target, (list, tuple)):
            return any(isinstance(t, (list, tuple, Tensor)) for t in target)
        return True  # targets and callables may select (B, T)

    def _per_target(
        self, images: Tensor, model_input: Any, target: TargetSpec, sel: Selection
    ) -> Explanation:
        """Methods without a batched multi-target path: one run per target column."""
        runs = []
        for t in range(sel.scores.shape[1]):
            column = _Column(target, t)
            if self.method.inputs == "model":
                runs.append(self._run_model_level(images, model_input, column))
            elif self.method.inputs == "layer_probe":
                runs.append(self._run_layer_probe(images, model_input, column))
            else:
                runs.append(self._run(images, model_input, column))
        first = runs[0]
        return Explanation(
            maps=torch.stack([r.maps for r in runs], dim=1),
            raw={k: torch.stack([r.raw[k] for r in runs], dim=1) for k in first.raw},
            targets=torch.stack([r.targets for r in runs], dim=1),
            scores=torch.stack([r.scores for r in runs], dim=1),
            layers=first.layers,
            method=first.method,
            logits=first.logits,
            extras={**sel.extras, **first.extras},
        )

    # -- one forward with capture hooks (gradient methods, CAM, Eigen-CAM, Score-CAM family) --

    def _forward(
        self, batch: Tensor, model_input: Any, track_grads: bool, linears: bool
    ) -> tuple[Any, _Capture]:
        model = self.model
        heads = (
            [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if linears
            else []
        )
        # the token grid is only needed until every layer's layout is known for this input size
        known = {(key[0], key[2]) for key in self._layouts}
        inputs = tuple(batch.shape[2:])
        grids = detector_transform(model) is not None or not all(
            (name, inputs) in known for name, _ in self._layers
        )
        capture = _Capture(
            self._layers, track_grads=track_grads, linears=heads, model=model, grids=grids
        )
        with capture, torch.no_grad():
            output = model(model_input)
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
        self._frame = capture.frame
        return output, capture

    def _layout_of(
        self, name: str, module: nn.Module, act: Tensor, capture: _Capture, images: Tensor
    ) -> Layout:
        inputs = capture.frame[0] if capture.frame else tuple(images.shape[2:])
        key = (name, tuple(act.shape[1:]), inputs)
        if key not in self._layouts:
            hint = layout_hint_module(self.model, name, module)
            self._layouts[key] = infer_layout(
                name, tuple(act.shape), inputs, hint, capture.grid_at.get(name), self.layout_spec
            )
        return self._layouts[key]

    def _select(self, target: TargetSpec, output: Any, clean: int, copies: int) -> Selection:
        """Scores, class ids and extras (see :func:`camlens.targets.select_scores`), with the
        method's own score (Finer-CAM) when it has one."""
        info = self.method
        score = (
            None
            if info.score is None
            else lambda logits, ids: info.score(logits, ids, **self._score_options)
        )
        return select_scores(target, output, clean, copies, score)

    def _run(self, images: Tensor, model_input: Any, target: TargetSpec) -> Explanation:
        info = self.method
        batch = images.shape[0]
        copies = 0
        forward_batch = images
        if info.inputs == "grad_samples" or self.smooth:
            copies = self._fn_options.get("samples", 8) if not self.smooth else self.smooth
            gen = torch.Generator(device=images.device).manual_seed(self.seed)
            noisy = _noisy_copies(images, copies, self.smooth_std, gen)
            forward_batch = model_input = torch.cat([images, noisy])
        output, capture = self._forward(
            forward_batch,
            model_input,
            track_grads=info.needs_grads,
            linears=info.inputs == "class_weights",
        )
        with torch.set_grad_enabled(info.needs_grads):
            sel = self._select(target, output, batch, copies)
        scores, ids = sel.scores, sel.ids
        multi = scores.ndim == 2
        T = scores.shape[1] if multi else 1
        acts = [capture.acts[name] for name, _ in self._layers]
        layouts = [
            self._layout_of(name, module, act, capture, images)
            for (name, module), act in zip(self._layers, acts, strict=True)
        ]
        options = {k: v for k, v in self._fn_options.items() if k != "samples"}
        raws: list[Tensor] = []
        if info.needs_grads and self.exact:
            grads, d2s, d3s = self._diagonal_derivatives(scores, acts)
        elif info.needs_grads:
            grads, hvps = self._gradients(scores, acts, hessian=info.inputs == "grads_hvp")
        if info.needs_grads and not any(bool(g.any()) for g in grads):
            warnings.warn(
                f"the gradient of the target score with respect to layer(s) {self.layers} is zero "
                "everywhere, so every gradient map is empty: the score does not vary with the "
                "layer (an untrained head initialised to zero, as torchvision's ViT heads are, "
                "or a saturated target)",
                stacklevel=4,
            )
        for i, (name, _) in enumerate(self._layers):
            layout = layouts[i]
            spatial = layout.to_spatial
            act = spatial(acts[i].detach()).float()
            with torch.no_grad():
                if info.inputs == "grads" and copies:  # SmoothGrad-style average of raw maps
                    noisy_raw = info.fn(act[batch:], spatial(grads[i][batch:]).float(), **options)
                    raw = noisy_raw.view(batch, copies, *noisy_raw.shape[1:]).mean(dim=1)
                elif info.inputs == "grads" and self.exact:
                    raw = info.fn(
                        act, spatial(grads[i]).float(), spatial(d2s[i]), spatial(d3s[i]), **options
                    )
                elif info.inputs == "grads" and multi:
                    g = grads[i]  # (T, N, ...): one gradient per target column
                    g = spatial(g.reshape(T * g.shape[1], *g.shape[2:])).float()
                    g = g.view(T, batch, *g.shape[1:]).transpose(0, 1).reshape(-1, *g.shape[1:])
                    raw = info.fn(act.repeat_interleave(T, dim=0), g, **options)
                elif info.inputs == "grads":
                    raw = info.fn(act, spatial(grads[i]).float(), **options)
                elif info.inputs == "grads_hvp":
                    raw = info.fn(
                        act, spatial(grads[i]).float(), spatial(hvps[i]).float(), **options
                    )
                elif info.inputs == "grad_samples":
                    g = spatial(grads[i][batch:]).float()
                    raw = info.fn(act[:batch], g.view(batch, copies, *g.shape[1:]), **options)
                elif info.inputs == "class_weights":
                    flat_ids = ids.reshape(-1)
                    weights = self._class_weights(act, output, flat_ids, capture, name)
                    raw = info.fn(act.repeat_interleave(T, dim=0), weights)
                elif info.inputs == "acts":
                    raw = info.fn(act, **options)
                    if multi:
                        raw = raw.repeat_interleave(T, dim=0)
                else:  # input_probe
                    raw = self._input_probe(images, act, ids, scores, name, options)
            if multi:
                raw = raw.view(batch, T, *raw.shape[1:])
            raws.append(raw)
        logits = _logits_or_none(output, batch)
        return self._explanation(images, raws, ids[:batch], scores[:batch], logits, sel.extras)

    def _input_probe(
        self, images: Tensor, act: Tensor, ids: Tensor, scores: Tensor, name: str, options: dict
    ) -> Tensor:
        """Score-CAM family: every masked image is scored once for all T targets."""
        info = self.method
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
        return raw if ids.ndim == 1 else raw.reshape(-1, *raw.shape[2:])

    def _class_weights(
        self, act: Tensor, output: Any, ids: Tensor, capture: _Capture, name: str
    ) -> Tensor:
        if bool(ids.lt(0).any()):
            raise TargetError("CAM explains a class of a classifier: pass class ids as target")
        logits = primary_output(output)
        weight = find_gap_linear_head(act, logits, capture.linears, name)
        return weight.detach()[ids].float()

    def _score_gradients(
        self, scores: Tensor, acts: list[Tensor], create_graph: bool
    ) -> tuple[Tensor, ...]:
        """dS/dA for every layer, with a clear error when S does not depend on one of them.
        Call under ``torch.enable_grad()`` (the caller may be under ``torch.no_grad()``).

        For scores (N, T) (several targets per image) the gradient of each column comes from
        one batched backward (``is_grads_batched``): grads (T, N, ...)."""
        if not scores.requires_grad:
            raise TargetError(
                "the target score does not depend on the explained layer(s) "
                f"{self.layers}; pick a layer before the output that the score is computed from"
            )
        if scores.ndim == 2:
            T = scores.shape[1]
            eye = torch.eye(T, device=scores.device, dtype=scores.dtype)
            grad_outputs = eye[:, None, :].expand(T, scores.shape[0], T)
            grads = torch.autograd.grad(
                scores, acts, grad_outputs=grad_outputs, is_grads_batched=True, allow_unused=True
            )
        else:
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

    def _run_layer_probe(self, images: Tensor, model_input: Any, target: TargetSpec) -> Explanation:
        info, batch = self.method, images.shape[0]
        if isinstance(model_input, (list, tuple)):
            raise InputError(f"{info.name} re-runs the network after the layer; pass a tensor")
        raws: list[Tensor] = []
        first: tuple[Selection, Any] | None = None
        for name, module in self._layers:
            with torch.no_grad():
                act, run = layer_runner(self.model, name, module, images)
                if not isinstance(act, Tensor) or act.ndim != images.ndim:
                    shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
                    raise LayerError(
                        f"{info.name} zeroes channels of a channels-first feature map, but layer "
                        f"{name!r} outputs {shape}; use a CNN layer, or gradcam / scorecam / "
                        "layercam, which read any layout"
                    )
                # a callable layout is the user's word for this map; else decide it as _run does
                layout = (
                    Layout("custom", fn=self.layout_spec)
                    if callable(self.layout_spec)
                    else infer_layout(
                        name,
                        tuple(act.shape),
                        tuple(images.shape[2:]),
                        layout_hint_module(self.model, name, module),
                        spec=self.layout_spec,
                    )
                )
                if layout.kind not in ("channels_first", "custom"):
                    raise LayerError(
                        f"{info.name} zeroes channels of a channels-first feature map, but layer "
                        f"{name!r} is {layout.name}; use gradcam / scorecam / layercam here"
                    )
                owner = torch.arange(batch, device=images.device)
                output = run(act, owner)
                sel = self._select(target, output, batch, 0)
                probe = Probe(
                    run,
                    images,
                    act,
                    sel.ids,
                    sel.scores,
                    self.batch_size,
                    self.progress,
                    self.seed,
                    desc=f"{info.name} {name}",
                )
                raws.append(info.fn(act.float(), probe, **self._fn_options))
            if first is None:
                first = (sel, output)
        assert first is not None
        sel, output = first
        logits = _logits_or_none(output, batch)
        return self._explanation(images, raws, sel.ids, sel.scores, logits, sel.extras)

    # -- methods defined on the whole network (FullGrad, Guided Grad-CAM, attention methods) --

    def _token_layout(self, images: Tensor, model_input: Any) -> Layout | None:
        """The token layout of the first explained layer, when it holds tokens (one no-grad
        forward the first time; attention methods map token relevance to the patch grid)."""
        name, module = self._layers[0]
        known = self.layout(name)
        if known is None:
            _, capture = self._forward(images, model_input, track_grads=False, linears=False)
            known = self._layout_of(name, module, capture.acts[name], capture, images)
        return known if known.kind == "tokens" else None

    def _run_model_level(self, images: Tensor, model_input: Any, target: TargetSpec) -> Explanation:
        from camlens.cams.model_based import ModelCall

        batch = images.shape[0]
        tokens = self._token_layout(images, model_input) if self.method.uses_tokens else None
        call = ModelCall(
            model=self.model,
            images=images,
            target=target,
            score=lambda out: _pair(self._select(target, out, batch, 0)),
            layers=self._layers,
            explain=lambda method, layers: Explainer(
                self.model, method, [m for _, m in layers], layout=self.layout_spec
            )(model_input, target),
            to_grid=None if tokens is None else tokens.tokens_to_grid,
            num_prefix=0 if tokens is None else tokens.prefix,
        )
        result = self.method.fn(call, **self._fn_options)
        if result.maps is not None:
            maps = minmax(result.maps)
        else:  # model-level raw maps always go through the fusion's scaling, as before
            maps = _display_maps(list(result.raw.values()), tuple(images.shape[2:]), fuse_one=True)
        return Explanation(
            maps=maps,
            raw=result.raw,
            targets=result.class_ids,
            scores=result.scores,
            layers=list(result.raw),
            method=self.method.name,
            extras=result.extras,
        )

    def _framed(self, raw: Tensor) -> Tensor:
        """A detector's feature map covers the resized image plus its padding to a multiple of
        32: upsample the positive map to the padded size and keep the resized image's pixels,
        so that it lines up with the input after the final resize. raw: (N, *s)."""
        if self._frame is None:
            return raw
        padded, resized = self._frame
        if len(padded) != raw.ndim - 1 or any(r > p for r, p in zip(resized, padded, strict=True)):
            return raw
        full = upsample(raw.clamp(min=0), padded)
        return full[(slice(None), *(slice(0, r) for r in resized))]

    def _explanation(
        self,
        images: Tensor,
        raws: list[Tensor],
        ids: Tensor,
        scores: Tensor,
        logits: Any,
        extras: dict[str, Tensor] | None = None,
    ) -> Explanation:
        with torch.no_grad():
            maps = _display_maps(raws, tuple(images.shape[2:]), self._framed)
        return Explanation(
            maps=maps,
            raw={name: raw for (name, _), raw in zip(self._layers, raws, strict=True)},
            targets=ids,
            scores=scores.detach(),
            layers=[name for name, _ in self._layers],
            method=self.method.name,
            logits=logits.detach() if isinstance(logits, Tensor) else None,
            extras=dict(extras or {}),
        )


def _display_maps(
    raws: list[Tensor],
    size: tuple[int, ...],
    prepare: Callable[[Tensor], Tensor] | None = None,
    fuse_one: bool = False,
) -> Tensor:
    """Raw maps (B, *s) or (B, T, *s), one per layer -> displayed maps (B[, T], *size) in [0, 1]:
    ReLU, upsampling and min-max for one layer, LayerCAM's fusion for several (or always, with
    ``fuse_one``). ``prepare`` maps each (N, *s) raw first (a detector's frame crop)."""
    nd = len(size)
    lead = raws[0].shape[: raws[0].ndim - nd]  # (B,) or (B, T)
    flat = [r.reshape(-1, *r.shape[-nd:]) for r in raws]
    if prepare is not None:
        flat = [prepare(r) for r in flat]
    if len(flat) == 1 and not fuse_one:
        maps = to_heatmap(flat[0], size)
    else:
        maps = minmax(fuse_layers(flat, size))
    return maps.view(*lead, *size)


class _Column(Target):
    """Column ``t`` of a multi-target spec, for methods that explain one target per run."""

    def __init__(self, target: TargetSpec, t: int):
        self.target, self.t = target, t

    def select(self, output: Any, batch: int, copies: int = 0, score: Any = None) -> Selection:
        sel = select_scores(self.target, output, batch, copies, score)
        if sel.scores.ndim == 1:
            return sel
        return Selection(sel.scores[:, self.t], sel.ids[:, self.t], sel.extras)


def _pair(sel: Selection) -> tuple[Tensor, Tensor]:
    return sel.scores, sel.ids


def _logits_or_none(output: Any, batch: int) -> Tensor | None:
    """The (B, classes) logits of a classifier's output (for Explanation.logits), else None."""
    out = primary_or_none(output)
    return out[:batch] if out is not None and out.ndim == 2 else None


def explain(
    model: nn.Module,
    images: Tensor | list[Tensor],
    method: str = "gradcam",
    layer: LayerSpec = None,
    target: TargetSpec = None,
    **options: Any,
) -> Explanation:
    """Explain what ``model`` looked at in ``images``, with a CAM method.

    Args:
        model: any PyTorch vision model (CNN, ViT, Swin, segmentation, detection, embedding,
            3-D); it is left exactly as it came (mode, flags, hooks).
        images: (B, C, H, W) float tensor, preprocessed, on the model's device; (B, C, D, H, W)
            for volumes and video; a list of same-size (C, H, W) images for detectors.
        method: a registered name, see :func:`camlens.methods` ("cam", "gradcam", ...).
        layer: None (automatic, found by one dry run: the last feature map of a CNN, the input
            norm of a ViT's last block, a backbone's last stage), a dotted name from
            ``model.named_modules()``, an nn.Module, or a list of these (fused as LayerCAM).
        target: None (each image's top class), an int, B ints, (B, T) ints,
            ``camlens.targets.top(k)``, ``segmentation(...)``, ``similarity(...)``,
            ``detections(...)``, or a callable ``output -> (B,) or (B, T) scores``.

        options: ``layout``, ``batch_size``, ``progress``, ``seed``, ``smooth``,
            ``smooth_std`` and the method's own options, see :class:`Explainer`.

    Returns:
        an :class:`Explanation` with ``maps`` (B, H, W) in [0, 1] ((B, T, H, W) for T targets
        per image, (B, D, H, W) for volumes) and ``raw`` maps per layer.
    """
    return Explainer(model, method, layer, **options)(images, target)
