"""The result of an explanation."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Explanation:
    """What :func:`camlens.explain` returns.

    Shapes: one target per image gives maps (B, H, W), raw (B, h, w), targets and scores (B,).
    Several targets per image (``camlens.targets.top(k)``, (B, T) class ids, detections, a
    callable returning (B, T)) insert a T dimension after B: maps (B, T, H, W), raw
    (B, T, h, w), targets and scores (B, T). Volumes and video have one more spatial dimension:
    (B, D, H, W) and (B, d, h, w).

    A detector given a list of images of different sizes gives ``maps`` as a list with one
    (T, H_i, W_i) tensor per image and ``raw`` as a list per layer (see
    :mod:`camlens.detection.mixed`).

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
    """

    maps: Tensor | list[Tensor]
    raw: dict[str, Tensor] | dict[str, list[Tensor]]
    targets: Tensor
    scores: Tensor
    layers: list[str]
    method: str
    logits: Tensor | None = field(default=None, repr=False)
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.maps)
