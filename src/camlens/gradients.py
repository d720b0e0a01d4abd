"""Gradients of the target scores with respect to captured activations.

Only ``torch.autograd.grad`` on the captured leaves: no ``backward()``, no parameter ``.grad``,
no ``retain_graph`` except where a higher derivative needs the graph again (Grad-CAM++ exact).
Several targets per image (scores (N, T)) take one batched backward (``is_grads_batched``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.errors import TargetError


def score_gradients(
    scores: Tensor, acts: list[Tensor], names: list[str], create_graph: bool = False
) -> tuple[Tensor, ...]:
    """dS/dA for every layer, with a clear error when S does not depend on one of them.
    Call under ``torch.enable_grad()`` (the caller may be under ``torch.no_grad()``).

    scores: (N,) -> grads shaped as ``acts``; scores (N, T) (several targets per image) ->
    each column's gradient from one batched backward (``is_grads_batched``): grads (T, N, ...).
    ``names`` are the layers' names, for the errors.
    """
    if not scores.requires_grad:
        raise TargetError(
            "the target score does not depend on the explained layer(s) "
            f"{names}; pick a layer before the output that the score is computed from"
        )
    if scores.ndim == 2:
        T = scores.shape[1]
        eye = torch.eye(T, device=scores.device, dtype=scores.dtype)
        grad_outputs = eye[:, None, :].expand(T, scores.shape[0], T)
        grads = torch.autograd.grad(
            scores, acts, grad_outputs=grad_outputs, is_grads_batched=True, allow_unused=True
        )
    else:
        grads = torch.autograd.grad(
            scores.sum(), acts, allow_unused=True, create_graph=create_graph
        )
    missing = [name for name, g in zip(names, grads, strict=True) if g is None]
    if missing:
        raise TargetError(
            f"the target score does not depend on layer(s) {missing}; pick layers on "
            "the path from the input to the explained output"
        )
    return grads


def gradients(
    scores: Tensor, acts: list[Tensor], names: list[str], hessian: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """(g = dS/dA per layer, detached; H A per layer when ``hessian``, else []).

    The Hessian-vector product H A = d/dA (g . A), with A held constant in the product, is one
    more backward through the network after the layer (ShapleyCAM); on a piecewise-linear head
    g does not depend on A and H A = 0.
    """
    with torch.enable_grad():
        grads = score_gradients(scores, acts, names, create_graph=hessian)
        hvps: list[Tensor] = []
        if hessian:
            dot = sum((g * a.detach()).sum() for g, a in zip(grads, acts, strict=True))
            if dot.requires_grad:
                hvps = [
                    h if h is not None else torch.zeros_like(a)
                    for h, a in zip(
                        torch.autograd.grad(dot, acts, allow_unused=True), acts, strict=True
                    )
                ]
            else:  # piecewise-linear head: the Hessian is zero
                hvps = [torch.zeros_like(a) for a in acts]
    return [g.detach() for g in grads], hvps


def diagonal_derivatives(
    scores: Tensor, acts: list[Tensor], names: list[str], chunk: int = 256
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """g = dS/dA and the exact diagonal d2 = d^2S/dA_i^2, d3 = d^3S/dA_i^3 per element.

    For a chunk of element indices i, one-hot tensors E_i (the same index in every image:
    images are independent, so one pass serves the batch) give, by batched double backward
    (``is_grads_batched``), the Hessian columns H E_i, whose i-th entries are d2; a second
    batched backward of E_i . (H E_i) gives d(d2_i)/dA, whose i-th entries are d3.
    Costs 2 * (elements / chunk) backward passes through the network after the layer.
    """
    grads_out, d2s, d3s = [], [], []
    with torch.enable_grad():
        grads = score_gradients(scores, acts, names, create_graph=True)
        for act, g in zip(acts, grads, strict=True):
            d2 = torch.zeros_like(act)
            d3 = torch.zeros_like(act)
            if g.requires_grad:  # else S is linear in A: d2 = d3 = 0
                _diagonal_chunks(act, g, d2, d3, chunk)
            grads_out.append(g.detach())
            d2s.append(d2.float())
            d3s.append(d3.float())
    return grads_out, d2s, d3s


def _diagonal_chunks(act: Tensor, g: Tensor, d2: Tensor, d3: Tensor, chunk: int) -> None:
    """Fill d2 and d3 (shaped as ``act``) chunk by chunk of element indices."""
    n = act[0].numel()
    flat2, flat3 = d2.view(act.shape[0], n), d3.view(act.shape[0], n)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk), device=act.device)
        eye = torch.zeros(len(idx), *act.shape, device=act.device, dtype=act.dtype)
        eye.view(len(idx), act.shape[0], n)[torch.arange(len(idx)), :, idx] = 1
        (hcol,) = torch.autograd.grad(
            g,
            act,
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            create_graph=True,
            allow_unused=True,
        )
        if hcol is None:
            continue
        hflat = hcol.reshape(len(idx), act.shape[0], n)
        flat2[:, idx] = hflat[torch.arange(len(idx)), :, idx].T.detach()
        if hcol.requires_grad:
            # d2_i summed over the batch (images are independent), one per i
            diag = (hcol * eye).reshape(len(idx), -1).sum(dim=1)
            pick = torch.eye(len(idx), device=act.device, dtype=diag.dtype)
            (tcol,) = torch.autograd.grad(
                diag,
                act,
                grad_outputs=pick,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
            if tcol is not None:
                tflat = tcol.reshape(len(idx), act.shape[0], n)
                flat3[:, idx] = tflat[torch.arange(len(idx)), :, idx].T.detach()
