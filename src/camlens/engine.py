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
from camlens.caller import warn_user
from camlens.capture import Capture, check_images, noisy_copies, preserved_model
from camlens.detection import scales
from camlens.detection.mixed import explain_list, needs_grouping
from camlens.display import display_maps, framed, logits_or_none, warn_empty_maps
from camlens.errors import GradientUnavailableError, InputError, LayerError, TargetError
from camlens.explanation import Explanation
from camlens.gradients import diagonal_derivatives, gradients
from camlens.layers import (
    LayerSpec,
    find_default_layer,
    find_gap_linear_head,
    layout_hint_module,
    resolve_layers,
)
from camlens.layouts import Layout, LayoutSpec, detector_transform, infer_layout, primary_output
from camlens.precision import as_caller, autocast_state, float32_maths
from camlens.probe import Probe
from camlens.registry import MethodInfo, get_method
from camlens.runners import run_layer_probe, run_model_level
from camlens.targets import Selection, Target, TargetSpec, select_scores
from camlens.targets_output import check_signed
from camlens.wrappers import Wrapping

__all__ = ["Explainer", "explain", "preserved_model"]


def _option_names(fn: Callable[..., Any]) -> set[str]:
    """The keyword options a method function accepts: its parameters with defaults."""
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


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
        seed: seeds the noise of SS-CAM, Smooth Grad-CAM++ and ``smooth``, Random-CAM's weights
            and RISE's masks.
        smooth: for gradient methods, average the raw maps over this many noisy copies of each
            image (SmoothGrad-style; 0 = off); ``smooth_std`` is the noise's standard deviation
            as a fraction of each image's value range (default 0.15).
        samples, smooth_std: also the number of copies and noise of ``smoothgradcampp``.
        eigen_smooth, aug_smooth, sess (+ ``sess_*`` settings): options that wrap the method,
            see :mod:`camlens.wrappers` (principal component of the per-channel terms; six
            test-time augmentations; SESS's multi-scale sliding windows).
        **options: the method's own options (e.g. ``gamma`` and ``base`` for Finer-CAM).
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
        self._auto_layer = layer is None  # YOLO detections then go per scale (detection.scales)
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
        self.wrapping = Wrapping.pop(options)  # eigen_smooth, aug_smooth, sess: camlens.wrappers
        self.method = self.wrapping.method(self.method)
        self._fn_options, self._score_options = self._split_options(options)
        if "seed" in _option_names(self.method.fn):  # Random-CAM draws from the explainer's seed
            self._fn_options["seed"] = seed
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
        (C, H, W) images for detectors (torchvision, YOLO); of different sizes, one pass per
        size and ``maps`` a list of (T, H_i, W_i) (see :mod:`camlens.detection.mixed`).
        ``target``: None (top class), an int, B ints, (B, T) ints, a :mod:`camlens.targets`
        target (``top(k)``, ``segmentation``, ``similarity``, ``detections``) or a callable
        output -> (B,) or (B, T) scores. With T targets per image, maps are (B, T, *spatial).
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
        if needs_grouping(model, images):  # detectors: images of several sizes, YOLO lists
            return explain_list(self, images, target)
        images, model_input = check_images(model, images)
        if (info.needs_grads or info.inputs == "model") and torch.is_inference_mode_enabled():
            raise GradientUnavailableError(
                f"{info.name!r} needs gradients, which torch.inference_mode() forbids; call "
                "it outside inference_mode (torch.no_grad() is fine), or use a gradient-free "
                "method (cam, scorecam, ablationcam, eigencam, reciprocam)"
            )
        try:
            ex = self.wrapping.run(
                lambda x, t: self._explain(x, model_input if x is images else x, t),
                images,
                model_input,
                target,
            )
        except TypeError as exc:
            if not isinstance(model_input, (list, tuple)):
                raise
            raise InputError(
                f"{type(model).__name__} does not take a list of images "
                f"({str(exc).splitlines()[0]}); pass a (B, C, H, W) tensor (lists are for "
                "torchvision detectors)"
            ) from exc
        ex.images = images  # for ex.show() and notebooks (camlens.view): a reference
        return ex

    def _explain(self, images: Tensor, model_input: Any, target: TargetSpec) -> Explanation:
        model, info = self.model, self.method
        with preserved_model(model):
            if scales.applies(self, target):  # YOLO boxes, each at its own scale
                return scales.run(self, images, target)
            if self._layers is None and info.inputs != "black_box":  # black boxes have no layer
                self._layers = resolve_layers(model, find_default_layer(model, model_input))
            if not self._fast_multi() and self._maybe_multi(target):
                with torch.no_grad():
                    sel = self._select(target, model(model_input), images.shape[0], 0)
                if sel.scores.ndim == 2:
                    return self._per_target(images, model_input, target, sel)
            if info.inputs in ("model", "black_box"):
                return run_model_level(self, images, model_input, target)
            if info.inputs == "layer_probe":
                return run_layer_probe(self, images, model_input, target)
            return self._run(images, model_input, target)

    # -- several targets per image --

    def _fast_multi(self) -> bool:
        """Whether T targets per image go through one forward and one batched gradient."""
        info = self.method
        if info.inputs == "grads":
            return not self.exact and not self.smooth
        if info.inputs == "model":
            return info.uses_tokens  # the attention methods batch their targets themselves
        if info.inputs == "black_box":
            return True  # Occlusion, RISE: every perturbed image is scored for all T targets
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
                runs.append(run_model_level(self, images, model_input, column))
            elif self.method.inputs == "layer_probe":
                runs.append(run_layer_probe(self, images, model_input, column))
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
    ) -> tuple[Any, Capture]:
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
        capture = Capture(
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
        self, name: str, module: nn.Module, act: Tensor, capture: Capture, images: Tensor
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
            noisy = noisy_copies(images, copies, self.smooth_std, gen)
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
            grads, d2s, d3s = diagonal_derivatives(scores, acts, self.layers, self.exact_chunk)
        elif info.needs_grads:
            grads, hvps = gradients(scores, acts, self.layers, hessian=info.inputs == "grads_hvp")
        if info.needs_grads and not any(bool(g.any()) for g in grads):
            warn_user(
                f"the gradient of the target score with respect to layer(s) {self.layers} is zero "
                "everywhere, so every gradient map is empty: the score does not vary with the "
                "layer (an untrained head initialised to zero, as torchvision's ViT heads are, "
                "or a saturated target)"
            )
        # Half-precision models and autocast: the formulas run in float32 (see precision.py).
        caller = autocast_state(images.device.type)
        for i, (name, _) in enumerate(self._layers):
            layout = layouts[i]
            spatial = layout.to_spatial
            act = spatial(acts[i].detach()).float()
            with torch.no_grad(), float32_maths(images.device.type):
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
                    raw = self._input_probe(images, act, ids, scores, name, options, caller)
            if multi:
                raw = raw.view(batch, T, *raw.shape[1:])
            raws.append(raw)
        logits = logits_or_none(output, batch)
        return self._explanation(images, raws, ids[:batch], scores[:batch], logits, sel.extras)

    def _input_probe(
        self,
        images: Tensor,
        act: Tensor,
        ids: Tensor,
        scores: Tensor,
        name: str,
        options: dict,
        caller: tuple[bool, Any] = (False, None),
    ) -> Tensor:
        """Score-CAM family: every masked image is scored once for all T targets."""
        info = self.method
        run = as_caller(lambda x, _owner: self.model(x), images.device.type, caller)
        probe = Probe(
            run,
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
        self, act: Tensor, output: Any, ids: Tensor, capture: Capture, name: str
    ) -> Tensor:
        if bool(ids.lt(0).any()):
            raise TargetError("CAM explains a class of a classifier: pass class ids as target")
        logits = primary_output(output)
        weight = find_gap_linear_head(act, logits, capture.linears, name)
        return weight.detach()[ids].float()

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
            maps = display_maps(raws, tuple(images.shape[2:]), lambda raw: framed(raw, self._frame))
            warn_empty_maps(raws, images.ndim - 2, self.layers, self.method.name)
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


class _Column(Target):
    """Column ``t`` of a multi-target spec, for methods that explain one target per run."""

    def __init__(self, target: TargetSpec, t: int):
        self.target, self.t = target, t

    def select(self, output: Any, batch: int, copies: int = 0, score: Any = None) -> Selection:
        sel = select_scores(self.target, output, batch, copies, score)
        if sel.scores.ndim == 1:
            return sel
        return Selection(sel.scores[:, self.t], sel.ids[:, self.t], sel.extras)


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
