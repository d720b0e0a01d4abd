"""How an :class:`~camlens.Explanation` shows itself: an HTML table in notebooks and a matplotlib
figure.

One row per (image, target): the image, the heatmap, the heatmap over the image, and the
method, layer(s), class and score. The pictures are self-contained base64 PNGs (no file, no
network), drawn by :mod:`camlens.viz` (the same colours as every other camlens picture).

The image comes from ``Explanation.images``, the batch :func:`camlens.explain` was called with
(a reference, not a copy). It is de-normalised with ``preset`` (or ``mean``/``std``); the
default ``preset=None`` reads images whose values all lie in [0, 1] as unnormalised ("none")
and any other images as ImageNet-normalised ("imagenet"): say ``preset=`` when that is wrong.
Volumes and video show their middle slice (``depth=`` picks another).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camlens.errors import InputError
from camlens.viz import denormalize, heatmap_image, overlays

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from camlens.explanation import Explanation

#: the longest side of a picture in the HTML table (larger images are downscaled for it).
THUMBNAIL = 192


@dataclass(frozen=True)
class Item:
    """One row of the display: image ``index``, target column ``column`` (None: one target)."""

    index: int
    column: int | None
    image: np.ndarray | None  # (H, W, 3) uint8, or None when the explanation has no images
    heatmap: np.ndarray  # (H, W, 3) uint8
    overlay: np.ndarray | None  # (H, W, 3) uint8
    caption: dict[str, str]


def auto_preset(images: Tensor) -> str:
    """``"none"`` when every value of ``images`` lies in [0, 1], else ``"imagenet"``."""
    lo, hi = float(images.min()), float(images.max())
    return "none" if lo >= 0.0 and hi <= 1.0 else "imagenet"


def _targets_per_image(ex: Explanation) -> int | None:
    """T for (B, T, *spatial) maps (targets (B, T)), None for (B, *spatial) maps."""
    return int(ex.targets.shape[1]) if ex.targets.ndim == 2 else None


def _slice(x: Tensor, depth: int | None) -> Tensor:
    """The (H, W) slice ``depth`` (default the middle one) of a (D, H, W) map."""
    d = x.shape[0] // 2 if depth is None else depth
    if not 0 <= d < x.shape[0]:
        raise InputError(f"depth={depth} is outside the volume's {x.shape[0]} slices")
    return x[d]


def items(
    ex: Explanation,
    preset: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    classes: Sequence[str] | None = None,
    max_items: int = 8,
    depth: int | None = None,
) -> tuple[list[Item], int]:
    """The rows to show (at most ``max_items``, in order) and how many rows there are in all."""
    if max_items < 1:
        raise InputError(f"max_items must be >= 1, got {max_items}")
    T = _targets_per_image(ex)
    B = int(ex.maps.shape[0])
    pairs = [(b, t) for b in range(B) for t in (range(T) if T is not None else [None])]
    total, pairs = len(pairs), pairs[:max_items]
    volume = ex.maps.ndim - 1 - (0 if T is None else 1) == 3
    images = ex.images
    if images is not None and volume and images.ndim == 5:
        images = images[:, :, _slice(torch.arange(images.shape[2]), depth)]
    if images is not None and (images.ndim != 4 or images.shape[1] not in (1, 3)):
        images = None  # not a picture (e.g. a 2-channel input): show the maps alone
    if images is not None and preset is None and mean is None and std is None:
        preset = auto_preset(images)
    preset = preset or "imagenet"
    out = []
    for b, t in pairs:
        heat = ex.maps[b] if t is None else ex.maps[b, t]
        heat = _slice(heat, depth) if volume else heat
        heat = heat.detach().float().cpu()
        image = ov = None
        if images is not None:
            img = images[b].detach().float().cpu()
            ov = overlays(img[None], heat[None], colormap, alpha, preset, mean, std)[0].numpy()
            image = (denormalize(img, preset, mean, std) * 255).round().astype(np.uint8)
        hm = np.asarray(heatmap_image(heat, colormap))
        out.append(Item(b, t, image, hm, ov, _caption(ex, b, t, classes)))
    return out, total


def _caption(
    ex: Explanation, b: int, t: int | None, classes: Sequence[str] | None
) -> dict[str, str]:
    target = int(ex.targets[b] if t is None else ex.targets[b, t])
    score = float(ex.scores[b] if t is None else ex.scores[b, t])
    name = str(target)
    if classes is not None and 0 <= target < len(classes):
        name = f"{classes[target]} ({target})"
    return {
        "image": str(b) if t is None else f"{b}, target {t}",
        "method": ex.method,
        "layer": ", ".join(ex.layers),
        "class": name,
        "score": f"{score:.4g}",
    }


def png_base64(rgb: np.ndarray, size: int = THUMBNAIL) -> str:
    """An (H, W, 3) uint8 array as a ``data:image/png;base64,...`` URI, downscaled so that its
    longer side is at most ``size`` (never upscaled: the browser scales small maps up)."""
    img = Image.fromarray(rgb)
    if max(img.size) > size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_html(ex: Explanation, **options: Any) -> str:
    """The explanation as one self-contained HTML table (see the module docstring)."""
    rows, total = items(ex, **options)
    head = ["image", "heatmap", "overlay"] if rows and rows[0].image is not None else ["heatmap"]
    td = 'style="padding:4px;text-align:center;vertical-align:middle"'
    img_style = 'style="width:128px;image-rendering:auto"'
    lines = [
        '<table class="camlens-explanation" style="border-collapse:collapse">',
        "<thead><tr>"
        + "".join(f"<th {td}>{h}</th>" for h in head)
        + f"<th {td}>explanation</th></tr></thead><tbody>",
    ]
    for item in rows:
        pics = (
            [item.image, item.heatmap, item.overlay] if item.image is not None else [item.heatmap]
        )
        cells = "".join(
            f'<td {td}><img {img_style} alt="{h}" src="{png_base64(p)}"></td>'
            for h, p in zip(head, pics, strict=True)
        )
        text = "<br>".join(
            f"<b>{html.escape(k)}</b> {html.escape(v)}" for k, v in item.caption.items()
        )
        lines.append(f'<tr>{cells}<td {td} style="text-align:left">{text}</td></tr>')
    lines.append("</tbody></table>")
    if total > len(rows):
        lines.append(
            f"<p><i>{len(rows)} of {total} rows shown; ex.html(max_items=...) shows more.</i></p>"
        )
    return "\n".join(lines)


def figure(ex: Explanation, **options: Any) -> Figure:
    """The explanation as a matplotlib figure: one row per item, the columns of :func:`to_html`,
    the caption as the overlay's title."""
    import matplotlib.pyplot as plt

    rows, _ = items(ex, **options)
    ncols = 3 if rows[0].image is not None else 1
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.4 * ncols, 2.5 * len(rows)), squeeze=False
    )
    for r, item in enumerate(rows):
        pics = [item.image, item.heatmap, item.overlay] if ncols == 3 else [item.heatmap]
        titles = ["image", "heatmap", ""] if ncols == 3 else [""]
        c = item.caption
        titles[-1] = f"{c['method']} · {c['class']}\nscore {c['score']} · {c['layer']}"
        for k, (pic, title) in enumerate(zip(pics, titles, strict=True)):
            ax = axes[r, k]
            ax.imshow(pic)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig
