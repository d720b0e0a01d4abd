"""Methods made for vision transformers: generic attention explainability and attention rollout.

Both read the attention probabilities P = softmax(Q K^T * scale + mask) of every self-attention
layer, which fused kernels never materialise. :class:`AttentionCapture` obtains them without
touching the model: for the duration of one forward pass it is a
:class:`torch.overrides.TorchFunctionMode` that

- computes every ``F.scaled_dot_product_attention`` call explicitly (P, then P V) and records
  P, a non-leaf tensor of the autograd graph (timm ViT/DeiT/EVA, HF ``attn_implementation=
  "sdpa"``);
- calls ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``: torchvision ViT) with
  ``need_weights=True, average_attn_weights=False``, the branch where torch itself computes
  P = softmax(...) and P V explicitly, and records that P; the caller gets back what it asked
  for. While a mode is active ``nn.MultiheadAttention`` never takes its fused fast path
  (``has_torch_function`` is true), so this branch is always the one that runs;
- records the output of every softmax over the last dimension of a 4-D tensor (explicit
  attention: HF ``attn_implementation="eager"``, timm with ``fused_attn=False``).

Nothing is patched, hooked or mutated: the model leaves exactly as it came, also when the
forward raises (the mode is a context manager). The gradients dS/dP come from
``torch.autograd.grad`` on the recorded P. The methods themselves are pure functions of the
lists of P and dS/dP (:func:`gae_relevance`, :func:`rollout_relevance`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from camlens.cams.model_based import ModelCall, ModelResult
from camlens.errors import InputError, UnsupportedModelError
from camlens.precision import full_precision
from camlens.registry import register

_SOFTMAXES = {F.softmax, torch.softmax, Tensor.softmax}
_DROPOUTS = {F.dropout, torch.dropout}


def explicit_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` written out, returning (output, P).

        P = softmax(Q K^T * scale + M),   output = P V,   scale = 1 / sqrt(E) by default

    M: a boolean ``attn_mask`` (True = may attend) becomes 0 / -inf, a float one is added as is;
    ``is_causal`` keeps keys j <= i. With ``enable_gqa`` the H_k key/value heads are repeated to
    the H_q query heads (dim -3), as SDPA does; H_k must divide H_q. A query whose logits are
    all -inf (every key masked, or infinite inputs, with or without a mask) gets P = 0 on that
    row, as SDPA's math backend (its safe softmax). Shapes: query (..., L, E), key (..., S, E),
    value (..., S, E_v) -> output (..., L, E_v), P (..., L, S).
    """
    if dropout_p > 0.0:
        raise UnsupportedModelError(
            f"attention dropout is active (dropout_p={dropout_p}); attention weights under "
            "dropout are random. Put the model in eval mode (camlens.explain does) or set its "
            "attention dropout to 0"
        )
    if is_causal and attn_mask is not None:
        raise InputError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    n_query, n_key = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        if query.shape[-3] % key.shape[-3]:
            raise InputError(
                f"scaled_dot_product_attention with enable_gqa: the {key.shape[-3]} key/value "
                f"heads must divide the {query.shape[-3]} query heads (dim -3); give key and "
                "value a number of heads that divides the query's"
            )
        groups = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = query @ key.transpose(-2, -1) * scale
    keep: Tensor | None = None
    if is_causal:
        keep = torch.ones(n_query, n_key, dtype=torch.bool, device=query.device).tril()
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = attn_mask
    elif attn_mask is not None:
        logits = logits + attn_mask
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # NaN on a row of -inf: such rows get 0, as in SDPA
    probs = probs.masked_fill(torch.isneginf(logits).all(dim=-1, keepdim=True), 0.0)
    return probs @ value, probs


class AttentionCapture(TorchFunctionMode):
    """Record the attention probabilities of one forward pass, in the order the layers run.

    ``with AttentionCapture() as cap: out = model(x)`` then ``cap.tensors`` holds each layer's P
    as it sits in the autograd graph (take ``torch.autograd.grad(score, cap.tensors)``) and
    ``cap.shapes`` the (B, heads, L, S) view of each (``cap.attentions()`` applies them).
    ``cap.sources`` says where each came from: ``"sdpa"``, ``"mha"`` or ``"softmax"``.
    See the module docstring for how each kind is obtained; nothing in the model changes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[Tensor] = []
        self.shapes: list[tuple[int, ...]] = []
        self.sources: list[str] = []

    def _record(self, probs: Tensor, shape: tuple[int, ...], source: str) -> None:
        self.tensors.append(probs)
        self.shapes.append(shape)
        self.sources.append(source)

    def attentions(self) -> list[Tensor]:
        """The recorded P, each viewed as (B, heads, L, S)."""
        return [t.reshape(s) for t, s in zip(self.tensors, self.shapes, strict=True)]

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Attention calls computed (or read) explicitly and recorded; the rest unchanged."""
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out, probs = explicit_attention(*args, **kwargs)
            batch = probs.shape[0] if probs.ndim > 2 else 1
            self._record(probs, (batch, -1, *probs.shape[-2:]), "sdpa")
            return out
        if func is F.multi_head_attention_forward:
            return self._multi_head(func, args, kwargs)
        if func in _SOFTMAXES:
            out = func(*args, **kwargs)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if isinstance(out, Tensor) and out.ndim == 4 and dim in (-1, 3):
                self._record(out, tuple(out.shape), "softmax")
            return out
        if func in _DROPOUTS and args and any(args[0] is t for t in self.tensors):
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            default = args[2] if len(args) > 2 else True
            training = kwargs.get("training", kwargs.get("train", default))
            if training and p > 0:
                raise UnsupportedModelError(
                    f"attention dropout is active (p={p}); attention weights under dropout are "
                    "random. Put the model in eval mode (camlens.explain does)"
                )
        return func(*args, **kwargs)

    def _multi_head(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``F.multi_head_attention_forward`` through its explicit branch (need_weights=True).

        There torch computes P = softmax(Q K^T / sqrt(E) + mask) as a (B * heads, L, S) tensor,
        multiplies it with V and returns a (B, heads, L, S) view of it; the view's ``_base`` is
        that P, the tensor of the graph, which is what is recorded.
        """
        given = inspect.signature(func).bind(*args, **kwargs).arguments
        num_heads, dropout_p = given["num_heads"], given["dropout_p"]
        if given.get("training", True) and dropout_p > 0:
            raise UnsupportedModelError(
                f"nn.MultiheadAttention dropout is active (dropout={dropout_p}); attention "
                "weights under dropout are random. Put the model in eval mode (camlens.explain "
                "does)"
            )
        if given.get("is_causal", False):
            raise UnsupportedModelError(
                "causal nn.MultiheadAttention is not supported by attention capture; the "
                "attention methods are for encoders (ViT) with full self-attention"
            )
        need = given.get("need_weights", True)
        average = given.get("average_attn_weights", True)
        explicit = {**kwargs, "need_weights": True, "average_attn_weights": False}
        out, weights = func(*args, **explicit)
        probs = weights._base if weights is not None else None
        if probs is None or probs.ndim != 3 or probs.shape[0] % num_heads:
            raise UnsupportedModelError(
                "could not read the attention probabilities of nn.MultiheadAttention in this "
                f"torch version ({torch.__version__}); use a model built on "
                "F.scaled_dot_product_attention"
            )
        self._record(probs, (-1, num_heads, *probs.shape[1:]), "mha")
        if not need:
            return out, None
        return out, weights.mean(dim=-3) if average else weights


def _check_attentions(attentions: Sequence[Tensor], batch: int) -> int:
    """The token count N shared by every (B, H, N, N) map; a clear error otherwise."""
    if not attentions:
        raise UnsupportedModelError(
            "the model ran no attention (no scaled_dot_product_attention, "
            "nn.MultiheadAttention or softmax over a 4-D tensor): the attention methods are for "
            "vision transformers; use a layer method such as 'gradcam' instead"
        )
    shapes = [tuple(a.shape) for a in attentions]
    n = shapes[0][-1]
    if any(len(s) != 4 or s[0] != batch or s[2] != n or s[3] != n for s in shapes):
        raise UnsupportedModelError(
            f"the attention maps have shapes {shapes}; the attention methods need global "
            f"self-attention over the same tokens in every layer, (B={batch}, heads, N, N) "
            "(ViT, DeiT, EVA); windowed (Swin) or cross-attention models are not supported, "
            "use a layer method such as 'gradcam' or 'layercam'"
        )
    return n


@full_precision
def gae_relevance(attentions: Sequence[Tensor], gradients: Sequence[Tensor]) -> Tensor:
    """Chefer, Gur & Wolf (ICCV 2021), self-attention rules, eqs. (5)-(6).

        Abar_b = E_h[(grad_{A_b} S  ⊙  A_b)^+]           (mean over heads of the positive part)
        R_0 = I,    R_b = R_{b-1} + Abar_b R_{b-1}         (b = 1..L, in forward order)

    attentions[b], gradients[b]: (..., H, N, N), broadcastable against each other (a leading
    target dimension on the gradients only is fine) -> R: (..., N, N), row i = the relevance of
    every input token for output token i. Computed in float32 whatever the model's precision.
    """
    relevance: Tensor | None = None
    for attn, grad in zip(attentions, gradients, strict=True):
        abar = (grad * attn).clamp(min=0).mean(dim=-3)
        if relevance is None:
            eye = torch.eye(abar.shape[-1], dtype=abar.dtype, device=abar.device)
            relevance = eye.expand_as(abar)
        relevance = relevance + abar @ relevance
    if relevance is None:
        raise UnsupportedModelError("gae needs at least one attention layer")
    return relevance


@full_precision
def rollout_relevance(attentions: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout, Abnar & Zuidema (ACL 2020), Sec. 3, with the residual connection.

        Ahat_b = rownorm(residual * I + (1 - residual) * E_h[A_b])
        R = Ahat_L Ahat_{L-1} ... Ahat_1

    rownorm divides each row by its sum (a no-op when the rows of A sum to 1). Class-agnostic.
    attentions[b]: (..., H, N, N) -> R: (..., N, N), in float32 whatever the model's precision.
    """
    if not 0.0 <= residual <= 1.0:
        raise InputError(f"residual must be in [0, 1], got {residual}")
    relevance: Tensor | None = None
    for attn in attentions:
        mean = attn.mean(dim=-3)
        eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
        ahat = residual * eye + (1.0 - residual) * mean
        ahat = ahat / ahat.sum(dim=-1, keepdim=True)
        relevance = ahat if relevance is None else ahat @ relevance
    if relevance is None:
        raise UnsupportedModelError("rollout needs at least one attention layer")
    return relevance


def token_relevance(relevance: Tensor, num_prefix: int, rows: str | int | Sequence[int]) -> Tensor:
    """The relevance of each input token for the output: a mean of rows of R.

    R: (..., N, N) -> (..., N). ``rows``: ``"auto"`` is the class token's row, row 0 (timm,
    torchvision and HF put it first), when the model has prefix tokens (``num_prefix > 0``),
    and the mean of all rows otherwise (a model that pools all tokens); ``"all"`` the mean of
    all rows; an int or a sequence of ints those rows (e.g. ``(0, 1)`` for a distilled DeiT,
    whose output averages the class and distillation heads).
    """
    n = relevance.shape[-1]
    if rows == "auto":
        rows = [0] if num_prefix > 0 else "all"
    if rows == "all":
        return relevance.mean(dim=-2)
    index = [rows] if isinstance(rows, int) else list(rows)
    if (
        not index
        or isinstance(rows, str)
        or not all(isinstance(i, int) and -n <= i < n for i in index)
    ):
        raise InputError(
            f"rows must be 'auto', 'all', a token index or a list of them in [0, {n}), got {rows!r}"
        )
    return relevance[..., index, :].mean(dim=-2)


def _to_grid(call: ModelCall, tokens: Tensor) -> Tensor:
    """(..., N) token values -> (..., h, w) with ``call.to_grid`` (prefix tokens dropped).

    Without ``to_grid``: the N - num_prefix patch tokens must form a square grid.
    """
    lead, n = tokens.shape[:-1], tokens.shape[-1]
    flat = tokens.reshape(-1, n)
    if call.to_grid is not None:
        grid = call.to_grid(flat)
    else:
        side = math.isqrt(n - call.num_prefix) if n > call.num_prefix else 0
        if side * side != n - call.num_prefix or side == 0:
            raise UnsupportedModelError(
                f"cannot place {n} tokens ({call.num_prefix} prefix tokens) on a patch grid: "
                "the token layout is unknown; the engine passes ModelCall.to_grid for "
                "transformers it recognises"
            )
        grid = flat[:, call.num_prefix :].reshape(-1, side, side)
    return grid.reshape(*lead, *grid.shape[-2:])


def _forward_with_attention(
    call: ModelCall, grads: bool
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor] | None]:
    """One forward under :class:`AttentionCapture`: scores (B,) or (B, T), class ids, the
    attention maps (B, H, N, N) and, with ``grads``, dS/dP: (B, H, N, N) for scores (B,),
    (B, T, H, N, N) for (B, T) (one batched backward, ``is_grads_batched``)."""
    x = call.images.detach()
    if grads:  # the attention must sit in a graph even when every parameter is frozen
        x = x.requires_grad_(True)
    with torch.set_grad_enabled(grads):
        with AttentionCapture() as capture:
            output = call.model(x)
        scores, ids = call.score(output)
        attentions = [a.detach() for a in capture.attentions()]
        _check_attentions(attentions, x.shape[0])
        if not grads:
            return scores.detach(), ids, attentions, None
        if scores.ndim == 1:
            raw = torch.autograd.grad(scores.sum(), capture.tensors, allow_unused=True)
            shapes = [a.shape for a in attentions]
        elif scores.ndim == 2:
            n_targets = scores.shape[1]
            eye = torch.eye(n_targets, dtype=scores.dtype, device=scores.device)
            seeds = eye[:, None, :].expand(n_targets, *scores.shape)  # (T, B, T)
            raw = torch.autograd.grad(
                scores, capture.tensors, seeds, is_grads_batched=True, allow_unused=True
            )
            shapes = [(n_targets, *a.shape) for a in attentions]
        else:
            raise InputError(f"scores must be (B,) or (B, T), got {tuple(scores.shape)}")
    gradients = []
    for g, t, shape in zip(raw, capture.tensors, shapes, strict=True):
        g = torch.zeros(shape[:-4] + t.shape, dtype=t.dtype, device=t.device) if g is None else g
        g = g.reshape(shape)
        gradients.append(g.movedim(0, 1) if scores.ndim == 2 else g)
    return scores.detach(), ids, attentions, gradients


@register(
    "gae",
    inputs="model",
    tokens=True,
    paper="Chefer, Gur & Wolf, Generic Attention-model Explainability for Interpreting "
    "Bi-Modal and Encoder-Decoder Transformers, ICCV 2021, arXiv:2103.15679",
)
def gae(call: ModelCall, rows: str | int | Sequence[int] = "auto") -> ModelResult:
    """Generic attention explainability (self-attention rules), class-specific.

        Abar_b = E_h[(grad_{A_b} S  ⊙  A_b)^+],   R <- R + Abar_b R   from R = I   (eqs. 5-6)
        raw = R[cls, patches]                      on the patch grid

    A_b: the attention probabilities of self-attention layer b, (B, heads, N, N) over all N
    tokens, in forward order, read by :class:`AttentionCapture` (fused SDPA included); S the
    explained score. The explained row is the class token's (``rows="auto"``; the mean of all
    rows for a model without prefix tokens; see :func:`token_relevance`). One forward, one
    backward; several targets per image (scores (B, T)) share them (batched backward) and give
    raw (B, T, h, w). ``raw["attention"]``, ``extras["tokens"]``: the relevance of every token,
    prefix tokens included.
    """
    scores, ids, attentions, gradients = _forward_with_attention(call, grads=True)
    assert gradients is not None
    if scores.ndim == 2:
        attentions = [a.unsqueeze(1) for a in attentions]
    tokens = token_relevance(gae_relevance(attentions, gradients), call.num_prefix, rows)
    return ModelResult(
        raw={"attention": _to_grid(call, tokens)},
        maps=None,
        scores=scores,
        class_ids=ids,
        extras={"tokens": tokens},
    )


@register(
    "rollout",
    inputs="model",
    tokens=True,
    paper="Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020, arXiv:2005.00928",
)
def rollout(
    call: ModelCall, residual: float = 0.5, rows: str | int | Sequence[int] = "auto"
) -> ModelResult:
    """Attention rollout: a class-agnostic baseline (the same map for every target).

        Ahat_b = rownorm(0.5 I + 0.5 E_h[A_b]),   R = Ahat_L ... Ahat_1,   raw = R[cls, patches]

    One forward without gradients. ``residual`` is the weight of the identity (0.5 in the
    paper); ``rows`` as in :func:`gae`. Scores (B, T) give raw (B, T, h, w), T equal maps.
    """
    scores, ids, attentions, _ = _forward_with_attention(call, grads=False)
    tokens = token_relevance(rollout_relevance(attentions, residual), call.num_prefix, rows)
    if scores.ndim == 2:
        tokens = tokens.unsqueeze(1).expand(-1, scores.shape[1], -1)
    return ModelResult(
        raw={"attention": _to_grid(call, tokens)},
        maps=None,
        scores=scores,
        class_ids=ids,
        extras={"tokens": tokens},
    )
