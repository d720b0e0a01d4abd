"""Capturing a layer's activations during one forward pass, and giving the model back as it came.

The forward pass starts under ``torch.no_grad``; the capture hook of the first target layer turns
its output into a fresh leaf that requires grad and switches autograd on for the rest of the
forward. So no graph is recorded below the target layer(s), and gradients with respect to the
captured activations walk only the part of the network after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from camlens.errors import InputError, LayerError
from camlens.layers import LinearCall
from camlens.layouts import detector_frame, detector_transform


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


H = TypeVar("H", bound="HookSet")


class HookSet:
    """Hooks registered on entering the ``with`` block and removed on leaving it, also when
    registering one of them fails half-way. Subclasses yield their handles from
    :meth:`_register`."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def _register(self) -> Iterator[Any]:
        raise NotImplementedError

    def __enter__(self: H) -> H:
        try:
            for handle in self._register():
                self._handles.append(handle)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Capture(HookSet):
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
        super().__init__()

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            rest: tuple | None = None  # a tuple output stays a tuple (HF layers return (x,))
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
            return (out, *rest) if rest is not None else out

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

    def _register(self) -> Iterator[Any]:
        for name, module in self.layers:
            yield module.register_forward_hook(self._hook(name))
        for name, module in self._linears:
            yield module.register_forward_hook(self._linear_hook(name))
        if self._model is not None:
            for module in self._model.modules() if self._grids else []:
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    yield module.register_forward_hook(self._grid_hook)
            transform = detector_transform(self._model)
            if transform is not None:
                yield transform.register_forward_hook(self._frame_hook)


def check_images(model: nn.Module, images: Any) -> tuple[Tensor, Any]:
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


def noisy_copies(images: Tensor, samples: int, std: float, gen: torch.Generator) -> Tensor:
    """``samples`` copies of each image plus N(0, sigma^2), sigma = std * (max - min) of that
    image (SmoothGrad's convention); image-major order: (B * samples, C, H, W)."""
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, *[1] * images.ndim)
    rep = images[:, None].expand(-1, samples, *images.shape[1:])
    noise = torch.randn(rep.shape, generator=gen, device=images.device, dtype=images.dtype)
    return (rep + noise * std * span).reshape(-1, *images.shape[1:])
