"""Loading images, preprocessing presets, and loading checkpoints safely (no pickle)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from camlens.errors import CamlensError, InputError
from camlens.viz import PRESETS


class CheckpointError(CamlensError, ValueError):
    """A weights file could not be read or does not fit the model."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; unreadable or non-image files raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({type(exc).__name__})") from None


def preprocess(
    images: Sequence[Image.Image],
    size: int = 224,
    resize: int | tuple[int, int] | None = 256,
    preset: str = "imagenet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bilinear",
) -> Tensor:
    """PIL images -> (B, 3, size, size) float tensor.

    Shorter side resized to ``resize`` (antialiased; a pair (h, w) resizes to exactly that, as
    timm's "squash" crop mode and DeiT-style image processors do), centre crop ``size``, scaled
    to [0, 1],
    normalised as ``(x - mean) / std`` with the preset's statistics ("imagenet", "inception",
    "clip", or "none" to keep [0, 1]) or, when given, the explicit ``mean`` and ``std`` (one
    value per channel; the preset is then ignored). With ``resize=None`` the image is resized
    straight to ``size`` x ``size``. ``interpolation``: "bilinear" (default), "bicubic" (the
    result is clamped to [0, 1] before normalising, as an 8-bit resize would be) or "nearest".
    """
    import torchvision.transforms.functional as TF

    modes = {
        "bilinear": TF.InterpolationMode.BILINEAR,
        "bicubic": TF.InterpolationMode.BICUBIC,
        "nearest": TF.InterpolationMode.NEAREST,
    }
    if interpolation not in modes:
        raise InputError(f"unknown interpolation {interpolation!r}; known: {', '.join(modes)}")
    stats: tuple[Sequence[float], Sequence[float]] | None
    if mean is not None or std is not None:
        if mean is None or std is None or len(mean) != len(std) or len(mean) not in (1, 3):
            raise InputError(
                f"mean and std must both be given, with 1 or 3 values each; got mean={mean}, "
                f"std={std}"
            )
        if any(s <= 0 for s in std):
            raise InputError(f"std must be positive, got {std}")
        stats = (mean, std)
    elif preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    else:
        stats = PRESETS[preset]
    mode = modes[interpolation]
    out = []
    for img in images:
        t = TF.pil_to_tensor(img).float() / 255
        if resize is None:
            t = TF.resize(t, [size, size], mode, antialias=True)
        else:
            target = resize if isinstance(resize, int) else [int(v) for v in resize]
            t = TF.center_crop(TF.resize(t, target, mode, antialias=True), [size, size])
        if interpolation == "bicubic":
            t = t.clamp(0, 1)
        if stats is not None:
            t = TF.normalize(t, [float(v) for v in stats[0]], [float(v) for v in stats[1]])
        out.append(t)
    return torch.stack(out)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling code.

    Torch files are read with ``torch.load(weights_only=True)``; a checkpoint that wraps the
    weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:150]})."
            " camlens reads safetensors or torch state dicts with weights_only=True (no pickle)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict file into ``model`` (strict), with a readable error on a mismatch."""
    return load_state(model, read_state_dict(path), path)


def load_state(model: nn.Module, state: dict[str, Tensor], source: str | Path) -> nn.Module:
    """Load ``state`` into ``model`` (strict); errors name ``source`` and what did not fit."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{source}: the weights do not fit {type(model).__name__}: {first[-1].strip()[:200]}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: the weights do not fit {type(model).__name__}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    return model
