"""The result of an explanation."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Explanation:
    """What :func:`camlens.explain` returns.

    Attributes:
        maps: (B, H, W) float32 in [0, 1] at the input's size: ReLU, bilinear upsampling,
            (layer fusion,) per-image min-max. A map with no spatial information is all zeros.
        raw: layer name -> (B, h, w), the method's weighted sum of activations at the layer's
            resolution, before ReLU, normalisation and upsampling.
        targets: (B,) long, the explained class ids (-1 for a callable target).
        scores: (B,) the explained scores (the logits of ``targets``), detached.
        layers: the layer names used, in the order given (or found).
        method: the method's registered name.
        logits: (B, classes) the model's output when it is a classifier's logits, else None.
        extras: method-specific tensors (e.g. FullGrad's completeness check, Guided Grad-CAM's
            (B, C, H, W) map).
    """

    maps: Tensor
    raw: dict[str, Tensor]
    targets: Tensor
    scores: Tensor
    layers: list[str]
    method: str
    logits: Tensor | None = field(default=None, repr=False)
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.maps.shape[0])
