"""Loading images, preprocessing presets, and loading checkpoints safely (no pickle)."""

from __future__ import annotations

import os
import stat
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


#: The most pixels (width x height) camlens decodes from one file, checked from the header
#: before any pixel is decoded: 64 Mpx (e.g. 8192 x 8192) cost about 1 GiB at peak in
#: :func:`preprocess` (float32 before the resize). ``load_image(..., max_pixels=N)`` overrides it
#: per call; the web app uses its own, smaller limit.
MAX_PIXELS = 64 * 1024 * 1024
#: What transparent pixels are composited over (white, as a page shows them).
BACKGROUND = (255, 255, 255)


class InputWarning(UserWarning):
    """A file was read, with a caveat worth saying (e.g. only the first frame of an animation)."""


def _describe_os_error(name: str, exc: OSError) -> str:
    import errno

    reasons = {
        errno.ENOENT: "no such file (it may have been moved or deleted)",
        errno.ELOOP: "a symbolic link loop, not an image file",
        errno.EISDIR: "a directory, not an image file",
        errno.EACCES: "permission denied",
        errno.ENAMETOOLONG: "the file name is too long",
    }
    return f"{name}: {reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)}"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float grey scaled (not clipped) to 8 bits,
    transparency composited over :data:`BACKGROUND`, CMYK / palette / grey converted."""
    import numpy as np

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if mode.startswith("I;16") or peak > 255:
            arr = arr / 257.0  # the 16-bit range onto the 8-bit one (65535 -> 255)
        return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(back, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def read_image(
    source: str | Path | bytes,
    *,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    name: str | None = None,
) -> tuple[Image.Image, str | None]:
    """A file (a path, or its bytes) -> (8-bit RGB image in its displayed orientation, note).

    The one decoder every entry point uses (``explain``, ``batch``, ``evaluate``, the app):

    - the pixel count is checked from the header, before any pixel is decoded, against
      ``max_pixels`` (default :data:`MAX_PIXELS`), so a header claiming 100k x 100k pixels is
      refused without allocating them;
    - the EXIF orientation is applied (a phone photo is explained as it is displayed);
    - an animation (GIF, WebP, APNG) or a multi-page TIFF gives its first frame, and ``note``
      says so (``note`` is None otherwise);
    - 16-bit and float grey are scaled to 8 bits, transparency is composited over
      :data:`BACKGROUND`, CMYK and palette images are converted to RGB;
    - ``formats``: the PIL format names to try (None: any).

    Every failure (missing, empty, a directory, a symlink loop, truncated, wrong magic bytes,
    too many pixels, a decoder error) raises :class:`InputError` with one line naming the file.
    """
    import io as _io

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "the file"
        stream: Any = _io.BytesIO(bytes(source))
        size = len(stream.getbuffer())
    else:
        label = name or str(source)
        try:
            info = os.stat(source)
            if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO (reading it would hang)
                what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise InputError(f"{label}: {what}, not an image file")
            stream = open(source, "rb")  # closed by the with below
            size = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise InputError(_describe_os_error(label, exc)) from None
    with stream:
        if size == 0:
            raise InputError(f"{label}: an empty file (0 bytes), not an image")
        return _decode(stream, label, limit, formats)


def _decode(
    stream: Any, label: str, limit: int, formats: Sequence[str] | None
) -> tuple[Image.Image, str | None]:
    import warnings

    from PIL import ImageOps

    note = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream, formats=list(formats) if formats else None)
        with img:
            w, h = img.size
            if w * h > limit:
                raise InputError(
                    f"{label}: the image is {w} x {h} = {w * h} pixels; the limit is {limit} "
                    "(camlens.io.MAX_PIXELS): downscale it first"
                )
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
                note = f"{label}: {img.format} with {frames} frames; explaining the first"
            img.load()
            shown = ImageOps.exif_transpose(img) or img
            return _to_rgb(shown), note
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(
            f"{label}: the header claims more pixels than any photo has (over "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0)}); the limit is {limit} (camlens.io.MAX_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        kinds = ", ".join(formats) if formats else "PNG, JPEG, GIF, BMP, WebP, TIFF, ..."
        raise InputError(
            f"{label}: not a readable image (unknown or wrong magic bytes); expected {kinds}"
        ) from None
    except MemoryError:
        raise InputError(f"{label}: not enough memory to decode this image") from None
    except Exception as exc:  # truncated data, corrupt chunks, decoder errors of any kind
        why = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise InputError(
            f"{label}: not a readable image ({type(exc).__name__}{': ' + why if why else ''})"
        ) from None


def load_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open an image file as RGB (see :func:`read_image`); failures raise :class:`InputError`.

    A caveat (the first frame of an animation) is issued as an :class:`InputWarning` and kept
    in ``image.info["camlens.note"]``.
    """
    import warnings

    img, note = read_image(path, max_pixels=max_pixels)
    if note:
        img.info["camlens.note"] = note
        warnings.warn(note, InputWarning, stacklevel=2)
    return img


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
