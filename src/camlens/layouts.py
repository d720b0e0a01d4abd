"""Layouts: how a captured activation becomes (B, K, *spatial), and how an output becomes scores.

The methods in :mod:`camlens.cams` see only channels-first tensors (B, K, *spatial). Layers of
other models are not shaped like that:

- transformer tokens (B, N, C): N = prefix tokens (class, distillation, register tokens) +
  h * w patch tokens;
- channels-last maps (B, h, w, C), as in Swin and inside ConvNeXt blocks;
- volumes and video (B, C, d, h, w).

A :class:`Layout` turns such an activation (and its gradient, which has the same shape) into
(B, K, *spatial). Layouts are *decided*, never guessed from which dimension is larger: the token
grid comes from the patch embedding's output seen in the same forward pass (or, failing that,
from the input size); channels-first versus channels-last comes from the geometry of the input
(spatial dimensions shrink with the input by one common stride, so a channel count cannot pass
for a spatial size), and when both readings fit, from the module that produced the tensor (a
leaf: a container's last layer can sit inside a permuted block). What cannot be decided raises
an error that names the ``layout=`` option; a map that neither reading fits (unpadded
convolutions on non-square inputs) is read channels-first, PyTorch's convention.

The second half of this module turns a model's output (a tensor, a dict or HF ``ModelOutput``
with ``logits``, torchvision segmentation's ``{"out": ...}``, a tuple) into the tensor that
class targets read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor, nn

from camlens.errors import LayerError, UnsupportedModelError

LAYOUTS = ("nchw", "nhwc", "tokens")
LayoutSpec = Union[None, str, Callable[[Tensor], Tensor]]

#: the most prefix tokens (class + distillation + register tokens) a token layer may have
MAX_PREFIX = 16


@dataclass(frozen=True)
class Layout:
    """How to read one layer's activation as (B, K, *spatial).

    Attributes:
        kind: ``"channels_first"`` (B, K, *spatial), ``"channels_last"`` (B, *spatial, K),
            ``"tokens"`` (B, N, K) with ``prefix`` leading tokens and the rest on ``grid``, or
            ``"custom"`` (``fn``).
        prefix: tokens before the patch tokens (class, distillation, register tokens).
        grid: the spatial shape of the patch tokens, e.g. (14, 14).
        fn: the user's callable for ``"custom"``: activation -> (B, K, *spatial).
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, ...] = ()
    fn: Callable[[Tensor], Tensor] | None = None

    @property
    def name(self) -> str:
        """The layout's short name: "nchw", "nhwc" or "tokens" (as ``layout=`` takes it)."""
        return {"channels_first": "nchw", "channels_last": "nhwc"}.get(self.kind, self.kind)

    def to_spatial(self, x: Tensor) -> Tensor:
        """(B, K, *spatial) view of an activation or of its gradient (the same re-indexing)."""
        if self.kind == "channels_first":
            return x
        if self.kind == "channels_last":
            return x.movedim(-1, 1)
        if self.kind == "tokens":
            patches = x[:, self.prefix :, :]
            return patches.transpose(1, 2).reshape(x.shape[0], x.shape[-1], *self.grid)
        assert self.fn is not None
        out = self.fn(x)
        if not isinstance(out, Tensor) or out.ndim < 3 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise LayerError(
                f"layout callable returned {shape}; it must map the activation "
                f"{tuple(x.shape)} to (B, K, *spatial) with the same batch size"
            )
        return out

    def tokens_to_grid(self, values: Tensor) -> Tensor:
        """Per-token values (B, N) -> (B, *grid), dropping the prefix tokens."""
        if self.kind != "tokens":
            raise LayerError(f"a {self.name} layer has no tokens")
        return values[:, self.prefix :].reshape(values.shape[0], *self.grid)


def _fit_error(spatial: tuple[int, ...], inputs: tuple[int, ...]) -> float:
    """How far ``spatial`` is from the input's spatial shape divided by one common stride.

    A network with total stride s maps each input dimension D_i to d_i ~ D_i / s, up to the
    rounding of padded or unpadded convolutions and pooling (about a cell). The error is
    min over r = 1/s of max_i |d_i - D_i r|, in cells; infinite when a feature dimension exceeds
    the input's. For volumes and video (three dimensions) the first one (depth, time) may have
    its own stride, as video networks downsample time differently: only (h, w) must share one.
    """
    if len(spatial) != len(inputs) or not spatial or min(spatial) < 1:
        return float("inf")
    if any(d > big for d, big in zip(spatial, inputs, strict=True)):
        return float("inf")
    if len(spatial) == 3:
        spatial, inputs = spatial[1:], inputs[1:]
    pairs = list(zip(spatial, inputs, strict=True))
    ratios = [d / big for d, big in pairs]
    ratios += [(d1 + d2) / (b1 + b2) for i, (d1, b1) in enumerate(pairs) for d2, b2 in pairs[i:]]
    return min(max(abs(d - big * r) for d, big in pairs) for r in ratios)


def _fits(spatial: tuple[int, ...], inputs: tuple[int, ...]) -> bool:
    """Whether ``spatial`` can be the input's spatial shape divided by one common stride
    (within a cell of rounding, see :func:`_fit_error`)."""
    return _fit_error(spatial, inputs) <= 1.0


def _module_hint(module: nn.Module | None, shape: tuple[int, ...]) -> str | None:
    """What the producing module itself says about the channel dimension, or None.

    Only a leaf decides: a convolution, batch norm or group norm with C == shape[1] says
    channels-first; a plain ``nn.LayerNorm`` over the last dimension or an ``nn.Linear`` with
    C == shape[-1] says channels-last. A container says nothing (a ConvNeXt block ends with a
    linear layer inside a permuted MLP, yet outputs channels-first), nor does a LayerNorm
    subclass (torchvision's LayerNorm2d normalises channels-first).
    """
    if module is None or next(module.children(), None) is not None:
        return None
    first = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    if isinstance(module, first) and module.out_channels == shape[1]:
        return "channels_first"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == shape[1]:
        return "channels_first"
    if isinstance(module, nn.GroupNorm) and module.num_channels == shape[1]:
        return "channels_first"
    if type(module) is nn.LayerNorm and tuple(module.normalized_shape) == (shape[-1],):
        return "channels_last"
    if type(module) is nn.Linear and module.out_features == shape[-1]:
        return "channels_last"
    return None


def _layout_help(name: str, shape: tuple[int, ...], why: str) -> LayerError:
    return LayerError(
        f"cannot tell how to read layer {name!r} with output {shape}: {why}. Say it with "
        "layout='nchw' (B, C, h, w), 'nhwc' (B, h, w, C), 'tokens' (B, N, C) or a callable "
        "activation -> (B, C, h, w) (like pytorch-grad-cam's reshape_transform)"
    )


def token_grid(
    tokens: int, inputs: tuple[int, ...], patch_grid: tuple[int, ...] | None
) -> tuple[int, tuple[int, ...]] | None:
    """(prefix, grid) for a token layer of ``tokens`` tokens, or None.

    The grid is the patch embedding's output grid seen in the same forward pass (the last
    channels-first feature map before the tokens), when the tokens are that many patches plus at
    most :data:`MAX_PREFIX` prefix tokens. Without one (or when it does not fit), the grid is the
    input's spatial shape divided by the smallest patch size that tiles it exactly and leaves
    0..MAX_PREFIX prefix tokens (and no more prefix tokens than half the patches).
    """
    if patch_grid:
        n = 1
        for d in patch_grid:
            n *= d
        if 0 <= tokens - n <= MAX_PREFIX:
            return tokens - n, tuple(patch_grid)
    for stride in range(1, max(inputs) + 1):
        if any(big % stride for big in inputs):
            continue  # patches tile the input exactly
        grid = tuple(big // stride for big in inputs)
        n = 1
        for d in grid:
            n *= d
        if n >= 4 and 0 <= tokens - n <= min(MAX_PREFIX, n // 2):
            return tokens - n, grid
    return None


def infer_layout(
    name: str,
    shape: tuple[int, ...],
    inputs: tuple[int, ...],
    module: nn.Module | None = None,
    patch_grid: tuple[int, ...] | None = None,
    spec: LayoutSpec = None,
) -> Layout:
    """Decide how to read an activation of ``shape`` from layer ``name``.

    Args:
        shape: the activation's shape, e.g. (B, 197, 768) or (B, 7, 7, 768).
        inputs: the input's spatial shape, e.g. (224, 224) or (16, 112, 112).
        module: the module that produced it (a hint when the geometry allows both readings).
        patch_grid: the spatial shape of the last channels-first map before the tokens.
        spec: the user's ``layout=``: None (decide), "nchw", "nhwc", "tokens" or a callable.
    """
    shape = tuple(int(s) for s in shape)
    if callable(spec):
        return Layout("custom", fn=spec)
    if spec is not None and spec not in LAYOUTS:
        raise LayerError(f"layout must be one of {LAYOUTS} or a callable, got {spec!r}")
    nd = len(inputs)
    if len(shape) == 3 and spec in (None, "tokens"):
        found = token_grid(shape[1], inputs, patch_grid)
        if found is None:
            raise _layout_help(
                name,
                shape,
                f"{shape[1]} tokens are not a grid of patches of the {inputs} input (plus at "
                f"most {MAX_PREFIX} prefix tokens)",
            )
        return Layout("tokens", prefix=found[0], grid=found[1])
    if spec == "tokens":
        raise _layout_help(name, shape, "layout='tokens' needs a (B, N, C) activation")
    if len(shape) != nd + 2:
        raise _layout_help(
            name,
            shape,
            f"the input has {nd} spatial dimensions {inputs}, so a feature map has {nd + 2} "
            "dimensions (or 3 for tokens)",
        )
    if spec in ("nchw", "nhwc"):
        spatial = shape[2:] if spec == "nchw" else shape[1:-1]
        if any(d > big for d, big in zip(spatial, inputs, strict=True)):
            raise _layout_help(
                name,
                shape,
                f"layout={spec!r} reads a spatial size {spatial} larger than the {inputs} input",
            )
        return Layout("channels_first" if spec == "nchw" else "channels_last")
    err_first, err_last = _fit_error(shape[2:], inputs), _fit_error(shape[1:-1], inputs)
    first, last = err_first <= 1.0, err_last <= 1.0
    if first and last and abs(err_first - err_last) >= 0.5:  # one reading fits clearly better
        first, last = err_first < err_last, err_last < err_first
    if first and not last:
        return Layout("channels_first")
    if last and not first:
        return Layout("channels_last")
    if first and last:
        hint = _module_hint(module, shape)
        if hint is not None:
            return Layout(hint)
        raise _layout_help(
            name,
            shape,
            f"both (C, *spatial) and (*spatial, C) fit the {inputs} input and the module "
            f"({type(module).__name__}) does not say which",
        )
    # Neither reading shrinks the input by one stride: unpadded convolutions lose a fixed number
    # of pixels per layer, so the two sides of a non-square input imply different strides.
    # PyTorch's convention (channels-first) holds unless the module itself says otherwise.
    if _module_hint(module, shape) == "channels_last":
        return Layout("channels_last")
    return Layout("channels_first")


# -- outputs ----------------------------------------------------------------------------------


def describe(output: Any) -> str:
    """A short description of a model output for error messages."""
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)[:8]}"
    if isinstance(output, (list, tuple)):
        inner = describe(output[0]) if output else "nothing"
        return f"a {type(output).__name__} of {len(output)} ({inner}, ...)"
    return f"a {type(output).__name__}"


def is_detections(output: Any) -> bool:
    """A torchvision detector's output: a list of dicts with ``boxes``, ``labels``, ``scores``."""
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(isinstance(o, Mapping) and "boxes" in o and "scores" in o for o in output)
    )


def primary_output(output: Any) -> Tensor:
    """The tensor that class targets read from a model's output.

    - a tensor: itself ((B, classes) logits, (B, classes, H, W) segmentation logits, (B, D)
      embeddings);
    - a dict or HF ``ModelOutput`` with ``logits``: the logits;
    - torchvision segmentation's dict: ``out`` (``aux`` is ignored);
    - a tuple or list whose first element is one of these: the first element.
    Anything else (a detector's list of dicts included) raises an error that names ``target=``.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            value = output.get(key)
            if isinstance(value, Tensor):
                return value
    elif isinstance(output, (tuple, list)) and output and not is_detections(output):
        first = output[0]
        if isinstance(first, Tensor) or isinstance(first, Mapping):
            return primary_output(first)
    hint = (
        "pass target=camlens.targets.detections(...) to explain a detector's boxes"
        if is_detections(output)
        else "pass target= a callable output -> (B,) or (B, T) scores"
    )
    raise UnsupportedModelError(
        f"the model returned {describe(output)}, which has no logits (a tensor, or a dict / "
        f"ModelOutput with 'logits' or 'out'); {hint}"
    )


def primary_or_none(output: Any) -> Tensor | None:
    """:func:`primary_output`, or None for outputs without one (detections, unknown dicts)."""
    if is_detections(output):
        return None
    try:
        return primary_output(output)
    except UnsupportedModelError:
        return None


def detector_transform(model: nn.Module) -> nn.Module | None:
    """A torchvision detector's ``GeneralizedRCNNTransform`` (it resizes and pads the images
    before the backbone), or None."""
    transform = getattr(model, "transform", None)
    if isinstance(transform, nn.Module) and hasattr(transform, "postprocess"):
        return transform
    return None


def detector_frame(output: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(padded size, resized size of the first image) from the output of
    :func:`detector_transform`'s module (an ``ImageList`` and the targets), or None."""
    images = output[0] if isinstance(output, tuple) and output else None
    tensors, sizes = getattr(images, "tensors", None), getattr(images, "image_sizes", None)
    if isinstance(tensors, Tensor) and sizes:
        return tuple(tensors.shape[2:]), tuple(int(v) for v in sizes[0])
    return None
