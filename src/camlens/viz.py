"""Pictures: colour maps, overlays on the de-normalised image, side-by-side grids, raw maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camlens.errors import InputError
from camlens.maps import upsample

#: mean and std of the normalisation presets; "none" means images are already in [0, 1].
#: "inception" (0.5 everywhere) is what many timm and Hugging Face ViTs use, "clip" OpenAI CLIP's.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": None,
}


def _stats(
    preset: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[Sequence[float], Sequence[float]]:
    """The (mean, std) to undo: the given ones, else the preset's ("none": 0 and 1)."""
    if mean is None and std is None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        stats = PRESETS[preset]
        mean, std = stats if stats is not None else ((0.0,), (1.0,))
    return mean or (0.0,), std or (1.0,)


def denormalize(
    image: Tensor,
    preset: str = "imagenet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W, 3) float array in [0, 1].

    ``image * std + mean`` with the preset's statistics (or the given ``mean``/``std``);
    one-channel images are repeated to grey RGB.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"image must be (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    mean, std = _stats(preset, mean, std)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    img = image.detach().float().cpu()
    if img.shape[0] == 1:
        mean_t, std_t = mean_t[:1], std_t[:1]
    img = (img * std_t + mean_t).clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def _colormap(colormap: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise InputError(
            f"unknown colormap {colormap!r}; any matplotlib name works, e.g. jet, turbo, viridis"
        ) from None


def colorize(heat: Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) RGB float array, with any matplotlib colormap."""
    cmap = _colormap(colormap)
    arr = heat.detach().float().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat)
    return cmap(np.clip(arr, 0.0, 1.0))[..., :3]


def overlay(
    image: Tensor,
    heat: Tensor,
    colormap: str = "jet",
    alpha: float = 0.4,
    preset: str = "imagenet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """The heatmap blended over the de-normalised image: (1 - alpha) * image + alpha * colour.

    image: (C, H, W), C = 1 or 3, normalised with ``preset`` (or ``mean``/``std``).
    heat: (h, w) map in [0, 1]; upsampled bilinearly to (H, W) when the sizes differ.
    One image of :func:`overlays`.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"image must be (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    if heat.ndim != 2:
        raise InputError(f"map must be (H, W), got {tuple(heat.shape)}")
    rgb = overlays(
        image.detach().cpu()[None], heat.detach().cpu()[None], colormap, alpha, preset, mean, std
    )
    return Image.fromarray(rgb[0].numpy())


def colormap_lut(colormap: str = "jet", device: torch.device | str = "cpu") -> Tensor:
    """The colormap's N RGB entries as an (N, 3) float tensor, the table matplotlib indexes
    (N = 256 for jet, viridis, ...; 10 for tab10)."""
    cmap = _colormap(colormap)
    return torch.as_tensor(cmap(np.arange(cmap.N))[:, :3], device=device).float()


def overlays(
    images: Tensor,
    heats: Tensor,
    colormap: str = "jet",
    alpha: float = 0.4,
    preset: str = "imagenet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Overlays for a whole batch, in torch: (B, C, H, W) images and (B, h, w) maps in [0, 1]
    -> (B, H, W, 3) uint8.

    The map is upsampled bilinearly when its size differs, coloured through the colormap's N
    entries the way matplotlib indexes them (floor(x * N), 1.0 -> N - 1), and blended:
    (1 - alpha) * image + alpha * colour.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or heats.ndim != 3:
        raise InputError(
            f"overlays needs images (B, C, H, W) with C = 1 or 3 and maps (B, h, w), got "
            f"{tuple(images.shape)} and {tuple(heats.shape)}"
        )
    mean, std = _stats(preset, mean, std)
    img = images.detach().float()
    channels = img.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=img.device)[:channels]
    std_t = torch.as_tensor(std, dtype=torch.float32, device=img.device)[:channels]
    rgb = (img * std_t.view(1, -1, 1, 1) + mean_t.view(1, -1, 1, 1)).clamp(0, 1)
    rgb = rgb.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    heat = heats.detach().float().to(img.device)
    if tuple(heat.shape[1:]) != tuple(rgb.shape[1:3]):
        heat = upsample(heat, tuple(rgb.shape[1:3])).clamp(0, 1)
    lut = colormap_lut(colormap, img.device)
    index = (heat.clamp(0, 1) * len(lut)).long().clamp_(max=len(lut) - 1)
    blend = (1 - alpha) * rgb + alpha * lut[index]
    return (blend * 255).round().to(torch.uint8)


def heatmap_image(heat: Tensor, colormap: str = "jet") -> Image.Image:
    """The colour-mapped heatmap alone, as a PIL image."""
    return Image.fromarray((colorize(heat, colormap) * 255).round().astype(np.uint8))


def grid(
    images: Tensor,
    columns: dict[str, Tensor],
    path: str | Path,
    row_titles: Sequence[Sequence[str]] | None = None,
    preset: str = "imagenet",
    colormap: str = "jet",
    alpha: float = 0.4,
    heatmaps: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Save a side-by-side grid: one row per image; the image, then one column per method.

    columns: method name -> maps (B, H, W) in [0, 1]. ``row_titles[i][j]`` titles the cell of
    row i and method column j (e.g. "star 0.98"). With ``heatmaps=True`` every method gets the
    tutorial's pair of columns, heatmap | overlay.
    """
    # A bare Figure (no pyplot): drawn with Agg whatever the session's backend, which is left
    # alone (a notebook's inline figures keep working after a grid).
    from matplotlib.figure import Figure

    n = images.shape[0]
    names = list(columns)
    per = 2 if heatmaps else 1
    ncols = 1 + per * len(names)
    fig = Figure(figsize=(1.9 * ncols, 2.0 * n + 0.3))
    axes = fig.subplots(n, ncols, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(denormalize(images[i], preset, mean, std))
        axes[i, 0].set_title("image" if i == 0 else "", fontsize=9)
        for j, name in enumerate(names):
            heat = columns[name][i]
            label = row_titles[i][j] if row_titles else ""
            cells = []
            if heatmaps:
                cells.append((heatmap_image(heat, colormap), f"{name} heatmap"))
            img = overlay(images[i], heat, colormap, alpha, preset, mean, std)
            cells.append((img, name))
            for k, (pic, head) in enumerate(cells):
                ax = axes[i, 1 + per * j + k]
                ax.imshow(pic)
                ax.set_title(f"{head}\n{label}" if i == 0 else label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def save_raw(raw: dict[str, Tensor], path: str | Path) -> Path:
    """Save raw maps (name -> tensor) as a compressed ``.npz`` (keys are the names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().float().cpu().numpy() for k, v in raw.items()}
    np.savez_compressed(path, **arrays)
    return path
