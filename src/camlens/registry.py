"""Method names -> implementations, with what the engine needs to know about each one."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from camlens.errors import MethodNotFoundError


@dataclass(frozen=True)
class MethodInfo:
    """A registered CAM method.

    Attributes:
        name: the short name users pass as ``method=``.
        fn: the pure maths, tensors in, raw map ``(B, h, w)`` out (see ``inputs``).
        inputs: what ``fn`` takes after the activations ``acts`` (B, K, h, w):
            ``"grads"``: ``grads``, dS/dA, same shape as acts;
            ``"class_weights"``: ``weights`` (B, K), the GAP + linear head's row for each class;
            ``"acts"``: nothing more (class-agnostic methods);
            ``"grads_hvp"``: ``grads`` and ``hvp`` = H A, the Hessian of S w.r.t. A times A;
            ``"grad_samples"``: ``grads`` (B, S, K, h, w) at S noisy copies of each image;
            ``"input_probe"``: ``probe``, which scores batches of modified *images*;
            ``"layer_probe"``: ``probe``, which scores batches of modified *activations* by
            running only the network after the layer;
            ``"model"``: the engine hands the whole model (FullGrad, Guided Grad-CAM).
        paper: the reference the implementation follows.
        score: optional ``(logits, class_ids, **options) -> (B,)``: the scalar explained instead
            of the logit (Finer-CAM's contrast with similar classes).
        tokens: a model-level method that maps token relevance to the patch grid (attention
            methods); the engine passes the token layout in its ``ModelCall``.
    """

    name: str
    fn: Callable[..., Tensor]
    inputs: str
    paper: str
    score: Callable[..., Tensor] | None = None
    tokens: bool = False

    @property
    def uses_tokens(self) -> bool:
        """Whether the method reads a transformer's tokens (the engine hands it the token grid)."""
        return self.tokens

    @property
    def needs_grads(self) -> bool:
        """Whether the method needs gradients of the score (so no ``torch.inference_mode``)."""
        return self.inputs in ("grads", "grads_hvp", "grad_samples")


_REGISTRY: dict[str, MethodInfo] = {}
_INPUTS = (
    "grads",
    "class_weights",
    "acts",
    "grads_hvp",
    "grad_samples",
    "input_probe",
    "layer_probe",
    "model",
)


def register(
    name: str,
    *,
    inputs: str,
    paper: str,
    score: Callable[..., Tensor] | None = None,
    tokens: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn`` under ``name``; returns ``fn`` unchanged so it stays a plain function."""
    if inputs not in _INPUTS:
        raise ValueError(f"inputs must be one of {_INPUTS}, got {inputs!r}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(
            name=name, fn=fn, inputs=inputs, paper=paper, score=score, tokens=tokens
        )
        return fn

    return decorator


def get_method(name: str) -> MethodInfo:
    """Look a method up by name; unknown names raise with the names that exist."""
    if not isinstance(name, str):
        raise MethodNotFoundError(
            f"method must be a name (str), got {type(name).__name__}; known: {', '.join(methods())}"
        )
    key = name.lower().replace("-", "").replace("_", "") if name not in _REGISTRY else name
    if key in _REGISTRY:
        return _REGISTRY[key]
    for known in _REGISTRY:  # forgive "Grad-CAM", "grad_cam", "GradCAM++"
        if known.replace("_", "") == key.replace("++", "pp"):
            return _REGISTRY[known]
    near = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise MethodNotFoundError(
        f"unknown method {name!r}.{hint} Registered methods: {', '.join(methods())}."
    )


def methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    """The metadata of a registered method (its paper, what it needs)."""
    return get_method(name)
