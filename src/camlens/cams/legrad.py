"""LeGrad: layer-wise gradients of each block's own readout with respect to its attention.

Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, "LeGrad: An Explainability Method for
Vision Transformers via Feature Formation Sensitivity", ICCV 2025, arXiv:2404.03214.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from camlens.blocks import BlockTaps, Readout, default_pool, find_blocks, find_readout, ran
from camlens.cams.attention import AttentionCapture, _check_attentions, _to_grid
from camlens.cams.model_based import ModelCall, ModelResult
from camlens.errors import InputError, LayerError, UnsupportedModelError
from camlens.layouts import primary_or_none
from camlens.registry import register


def legrad_relevance(gradients: Sequence[Tensor]) -> Tensor:
    """LeGrad's map from the per-block gradients, on all N tokens (eqs. 4-6 of the paper).

        E^l = mean_h mean_i ReLU(d s^l / d A^l)_{h, i, :}      (over heads h and query rows i)
        E   = sum_l E^l

    gradients[l]: d s^l / d A^l, (..., H, N, N) -> (..., N): the relevance of every key token
    (prefix tokens included; the caller keeps the patch tokens). The attention values are not
    multiplied in (unlike GAE): LeGrad reads the gradient alone.
    """
    if not gradients:
        raise UnsupportedModelError("legrad needs at least one transformer block")
    return torch.stack([g.clamp(min=0).mean(dim=(-3, -2)) for g in gradients]).sum(dim=0)


def _chosen(call: ModelCall, blocks: list[tuple[str, torch.nn.Module]]) -> list[int]:
    """Indices of the explained blocks: all of them for the automatic layer, else those given."""
    if call.layer_auto:
        return list(range(len(blocks)))
    index = {id(module): i for i, (_, module) in enumerate(blocks)}
    wrong = [name for name, module in call.layers if id(module) not in index]
    if wrong:
        names = [name for name, _ in blocks]
        raise LayerError(
            f"legrad explains transformer blocks; {wrong} is not one. Pass layer=None (all "
            f"blocks) or a list of blocks, e.g. {names[-2:]} (blocks: {names[0]} .. {names[-1]})"
        )
    return sorted(index[id(module)] for _, module in call.layers)


def _layer_scores(call: ModelCall, out: object, ids: Tensor, batch: int) -> Tensor:
    """The explained score read from one block's readout: the target's classes (``ids``,
    decided on the model's output) gathered from its logits, or, for targets without class ids
    (similarity, callables), the target applied to the readout output."""
    logits = primary_or_none(out)
    if bool((ids >= 0).all()) and logits is not None and logits.ndim == 2:
        picked = logits.gather(1, ids.reshape(batch, -1))
        return picked.reshape(ids.shape)
    scores, _ = call.score(out)
    return scores


_NO_ATTENTION = "the blocks' readout scores do not depend on their attention; check readout="


def _gradients(total: Tensor, attentions: list[Tensor], shapes: list[tuple]) -> list[Tensor]:
    """d total / d A for each A, as (B, H, N, N) for total (B,), (B, T, H, N, N) for (B, T):
    one backward, batched over the T target columns (``is_grads_batched``). A block whose
    attention the scores do not reach gets zeros; none reached at all is an error."""
    if total.ndim == 1:
        raw = torch.autograd.grad(total.sum(), attentions, allow_unused=True)
        lead: tuple[int, ...] = ()
    else:
        n_targets = total.shape[1]
        eye = torch.eye(n_targets, dtype=total.dtype, device=total.device)
        seeds = eye[:, None, :].expand(n_targets, *total.shape)
        raw = torch.autograd.grad(
            total, attentions, seeds, is_grads_batched=True, allow_unused=True
        )
        lead = (n_targets,)
    if all(g is None for g in raw):  # e.g. a readout that detaches the tokens
        raise UnsupportedModelError(_NO_ATTENTION)
    out = []
    for g, a, shape in zip(raw, attentions, shapes, strict=True):
        g = torch.zeros(*lead, *a.shape, dtype=a.dtype, device=a.device) if g is None else g
        g = g.reshape(*lead, *shape)
        out.append(g.movedim(0, 1) if lead else g)
    return out


@register(
    "legrad",
    inputs="model",
    tokens=True,
    paper="Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, LeGrad: An Explainability Method "
    "for Vision Transformers via Feature Formation Sensitivity, ICCV 2025, arXiv:2404.03214",
)
def legrad(call: ModelCall, pool: str = "auto", readout: Readout | None = None) -> ModelResult:
    """LeGrad: each block's own prediction, differentiated with respect to its attention.

        s^l = target(readout(z^l))                         z^l: block l's output tokens
        E   = sum_l mean_h mean_i ReLU(d s^l / d A^l)[h, i, patches]

    A^l: block l's attention probabilities (B, heads, N, N) (read by
    :class:`~camlens.cams.attention.AttentionCapture`, fused SDPA included). ``readout`` maps
    tokens to the model's output as after the last block (see :mod:`camlens.blocks`):
    ``pool="auto"`` is ``heads(encoder.ln(mean_t z_t))`` for a torchvision ViT (the paper's
    code and TorchCAM) and the model's own pooling elsewhere (timm class token, average pool,
    distillation and register tokens; HF ViT; CLIP towers: the image projection, explained
    with ``target=camlens.targets.similarity(embedding)``); ``pool="mean"`` forces the mean
    over all tokens, ``pool="model"`` the model's pooling; ``readout=callable`` any other head.
    ``layer=None``: every block; a list of blocks restricts the sum to those.

    One forward and ONE backward for all blocks: the forward runs with every block's input
    cut from the graph (:class:`~camlens.blocks.BlockTaps`), so d(sum_l s^l)/dA^l = ds^l/dA^l
    exactly; T targets per image share it (batched backward). raw ``{"legrad": (B[, T], h,
    w)}``; ``extras["tokens"]`` the relevance of all N tokens, ``extras["layers"]`` each
    block's map (B[, T], L, h, w). The paper and TorchCAM average the layers; the sum here is
    the same map up to the factor L, which the min-max normalisation removes.
    """
    model, batch = call.model, call.images.shape[0]
    blocks = find_blocks(model)
    chosen = _chosen(call, blocks)
    if readout is None:
        readout = find_readout(model, default_pool(model) if pool == "auto" else pool)
    elif not callable(readout):
        raise InputError(f"readout must be a callable tokens (B, N, C) -> output, got {readout!r}")
    with torch.enable_grad():
        with BlockTaps(blocks) as taps, AttentionCapture() as capture:
            output = model(call.images.detach())
        scores, ids = call.score(output)
        _check_attentions(capture.attentions(), batch)
        if len(capture.tensors) != len(blocks):
            raise UnsupportedModelError(
                f"{type(model).__name__} ran {len(capture.tensors)} attention maps in "
                f"{len(blocks)} blocks; legrad needs one self-attention per block"
            )
        outputs = ran(taps)
        total = sum(_layer_scores(call, readout(outputs[i]), ids, batch) for i in chosen)
        assert isinstance(total, Tensor)
        if not total.requires_grad:
            raise UnsupportedModelError(_NO_ATTENTION)  # a frozen model's detached readout
        shapes = [capture.shapes[i] for i in chosen]
        grads = _gradients(total, [capture.tensors[i] for i in chosen], shapes)
    per_layer = [legrad_relevance([g]) for g in grads]  # each (B[, T], N)
    tokens = torch.stack(per_layer).sum(dim=0)
    layers = torch.stack([_to_grid(call, t) for t in per_layer], dim=-3)
    return ModelResult(
        raw={"legrad": _to_grid(call, tokens)},
        maps=None,
        scores=scores.detach(),
        class_ids=ids,
        extras={"tokens": tokens, "layers": layers},
    )
