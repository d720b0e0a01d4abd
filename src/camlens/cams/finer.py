"""Finer-CAM: explain the difference between the target class and its most similar classes."""

from __future__ import annotations

from torch import Tensor

from camlens.errors import MethodNotFoundError
from camlens.registry import MethodInfo, get_method, register


def contrast_score(
    logits: Tensor, class_ids: Tensor, gamma: float = 1.0, references: int = 1
) -> Tensor:
    """Finer-CAM's target: S = y^c - gamma * (1/|D|) sum_{d in D} y^d.

    D holds, per image, the ``references`` classes with the highest logits other than c: the
    classes the model finds most similar to the input. logits (B, K), class_ids (B,) -> (B,).
    """
    num = logits.shape[1]
    refs = max(1, min(int(references), num - 1))
    masked = logits.detach().clone()
    masked.scatter_(1, class_ids[:, None], float("-inf"))
    ref_ids = masked.topk(refs, dim=1).indices  # (B, refs)
    y_c = logits.gather(1, class_ids[:, None])[:, 0]
    y_d = logits.gather(1, ref_ids).mean(dim=1)
    return y_c - gamma * y_d


def _base(base: str) -> MethodInfo:
    info = get_method(base)
    if info.inputs != "grads" or info.name == "finercam":
        raise MethodNotFoundError(
            f"finercam's base must be a gradient method that takes (acts, grads), such as "
            f"gradcam, gradcampp, layercam, hirescam or xgradcam; got {base!r}"
        )
    return info


def finercam_terms(acts: Tensor, grads: Tensor, base: str = "gradcam") -> Tensor:
    """Finer-CAM's per-channel terms: those of its ``base`` method on the contrast's gradients
    (for ``eigen_smooth``); a base without per-channel terms is an error naming those that have."""
    info = _base(base)
    if info.terms is None:
        raise MethodNotFoundError(
            f"eigen_smooth with finercam needs a base with per-channel terms (gradcam, "
            f"gradcampp, layercam, hirescam, xgradcam, gradcam_elementwise); got {base!r}"
        )
    return info.terms(acts, grads)


@register(
    "finercam",
    inputs="grads",
    paper="Zhang et al., Finer-CAM, CVPR 2025, arXiv:2501.11309",
    score=contrast_score,
    terms=finercam_terms,
)
def finercam(acts: Tensor, grads: Tensor, base: str = "gradcam") -> Tensor:
    """Finer-CAM: any gradient method applied to the contrast y^c - gamma * y^d.

    The score explained is :func:`contrast_score` (options ``gamma``, default 1, and
    ``references``, default 1: the most similar class); ``base`` names the gradient method that
    turns its gradients into a map (default Grad-CAM). Features shared with the similar classes
    cancel in the gradient, so the map keeps what tells the target class apart.
    """
    return _base(base).fn(acts, grads)


__all__ = ["contrast_score", "finercam"]
