"""The result of an explanation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Explanation:
    """What :func:`camlens.explain` returns.

    Shapes: one target per image gives maps (B, H, W), raw (B, h, w), targets and scores (B,).
    Several targets per image (``camlens.targets.top(k)``, (B, T) class ids, detections, a
    callable returning (B, T)) insert a T dimension after B: maps (B, T, H, W), raw
    (B, T, h, w), targets and scores (B, T). Volumes and video have one more spatial dimension:
    (B, D, H, W) and (B, d, h, w).

    Attributes:
        maps: float32 in [0, 1] at the input's size: ReLU, bilinear (trilinear) upsampling,
            (layer fusion,) per-image min-max. A map with no spatial information is all zeros.
        raw: layer name -> the method's weighted sum of activations at the layer's resolution,
            read as (B, C, *spatial) whatever the layer's layout (tokens, channels-last), before
            ReLU, normalisation and upsampling.
        targets: the explained class ids (-1 where a target has no class id).
        scores: the explained scores (the logits of ``targets``, or the target's score), detached.
        layers: the layer names used, in the order given (or found).
        method: the method's registered name.
        logits: (B, classes) the model's output when it is a classifier's logits, else None.
        extras: method- and target-specific tensors (e.g. FullGrad's completeness check, Guided
            Grad-CAM's (B, C, H, W) map, the (B, T, 4) boxes of detection targets).
        images: the (B, C, *spatial) batch that was explained (a reference to the caller's
            tensor, not a copy; a detector's list of images stacked), kept so that the
            explanation can show itself: :meth:`show`, :meth:`html` and, in notebooks,
            ``_repr_html_``. None for an explanation built by hand.
    """

    maps: Tensor
    raw: dict[str, Tensor]
    targets: Tensor
    scores: Tensor
    layers: list[str]
    method: str
    logits: Tensor | None = field(default=None, repr=False)
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)
    images: Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def html(
        self,
        preset: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        colormap: str = "jet",
        alpha: float = 0.4,
        classes: Sequence[str] | None = None,
        max_items: int = 8,
        depth: int | None = None,
    ) -> str:
        r"""One self-contained HTML table (base64 PNGs): per image and target, the image, the
        heatmap and the overlay $(1 - \alpha)\, x + \alpha \operatorname{colormap}(M)$ (``alpha``
        $= \alpha$, image $x$, map $M$), with the method, layer(s), class and score.

        ``preset`` (or ``mean``/``std``) undoes the images' normalisation (None: "none" when
        every value lies in [0, 1], else "imagenet"); ``classes`` names the class ids; at most
        ``max_items`` rows; ``depth`` picks a volume's slice (default the middle one).
        Notebooks show ``_repr_html_``, which is ``html()`` with these defaults.
        """
        from camlens.view import to_html

        return to_html(
            self,
            preset=preset,
            mean=mean,
            std=std,
            colormap=colormap,
            alpha=alpha,
            classes=classes,
            max_items=max_items,
            depth=depth,
        )

    def _repr_html_(self) -> str:
        return self.html()

    def show(self, **options: Any) -> Figure:
        """The rows of :meth:`html` as a matplotlib figure (image | heatmap | overlay, the
        method, class, score and layer as the overlay's title); same options. Returns the
        figure (``fig.savefig(path)`` saves it; in a script, ``matplotlib.pyplot.show()``
        opens it)."""
        from camlens.view import figure

        return figure(self, **options)
