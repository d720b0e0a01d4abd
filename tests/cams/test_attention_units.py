"""Attention pieces against their definitions: non-square attention (L != S), grouped
keys, masks that empty a row, relevance rules with rows that do not sum to 1, the bounds of
every option and the whole text of every refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from camlens.cams.attention import (
    _check_attentions,
    _to_grid,
    explicit_attention,
    gae_relevance,
    rollout_relevance,
    token_relevance,
)
from camlens.cams.model_based import ModelCall
from camlens.errors import InputError, UnsupportedModelError

D = torch.float64


def qkv(lq: int = 3, s: int = 6, hq: int = 4, hk: int = 4):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, hq, lq, 5, generator=gen, dtype=D)
    k = torch.randn(2, hk, s, 5, generator=gen, dtype=D)
    v = torch.randn(2, hk, s, 2, generator=gen, dtype=D)
    return q, k, v


def test_explicit_attention_with_fewer_queries_than_keys() -> None:
    q, k, v = qkv()
    mask = torch.randn(3, 6, dtype=D)
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": mask}, {"scale": 0.3}):
        out, probs = explicit_attention(q, k, v, **kwargs)
        assert probs.shape == (2, 4, 3, 6) and out.shape == (2, 4, 3, 2)
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, **kwargs)), kwargs
    _, probs = explicit_attention(q, k, v, is_causal=True)
    assert torch.equal(probs[..., 0, 1:] == 0, torch.ones(2, 4, 5, dtype=torch.bool))
    # the default scale is 1 / sqrt(E) of the queries
    _, probs = explicit_attention(q, k, v)
    assert torch.allclose(probs, torch.softmax(q @ k.transpose(-2, -1) / 5**0.5, dim=-1))


def test_explicit_attention_groups_keys_only_when_asked() -> None:
    q, k, v = qkv(hk=2)
    out, probs = explicit_attention(q, k, v, enable_gqa=True)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    rep = k.repeat_interleave(2, dim=-3)
    assert torch.allclose(probs, torch.softmax(q @ rep.transpose(-2, -1) / 5**0.5, dim=-1))
    with pytest.raises(RuntimeError):
        explicit_attention(q, k, v)  # 4 query heads, 2 key heads, no enable_gqa: no broadcast
    q1, k1, v1 = qkv(hk=4)
    same = explicit_attention(q1, k1, v1, enable_gqa=True)[1]
    assert torch.allclose(same, explicit_attention(q1, k1, v1)[1])


def test_explicit_attention_empties_only_rows_without_keys() -> None:
    q, k, v = qkv()
    mask = torch.zeros(3, 6, dtype=D)
    mask[1] = float("-inf")  # a float mask that masks every key of query 1
    _, probs = explicit_attention(q, k, v, attn_mask=mask)
    assert torch.equal(probs[:, :, 1], torch.zeros(2, 4, 6, dtype=D))
    assert torch.allclose(probs[:, :, 0].sum(-1), torch.ones(2, 4, dtype=D))
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[2] = False
    _, probs = explicit_attention(q, k, v, attn_mask=keep)
    assert torch.equal(probs[:, :, 2], torch.zeros(2, 4, 6, dtype=D))
    assert torch.allclose(probs[:, :, :2].sum(-1), torch.ones(2, 4, 2, dtype=D))


def test_explicit_attention_refusals_are_whole() -> None:
    q, k, v = qkv()
    with pytest.raises(UnsupportedModelError) as err:
        explicit_attention(q, k, v, dropout_p=0.5)
    assert str(err.value) == (
        "attention dropout is active (dropout_p=0.5); attention weights under dropout are "
        "random. Put the model in eval mode (camlens.explain does) or set its attention "
        "dropout to 0"
    )
    with pytest.raises(InputError) as err:
        explicit_attention(q, k, v, attn_mask=torch.zeros(3, 6, dtype=D), is_causal=True)
    assert str(err.value) == ("scaled_dot_product_attention: give attn_mask or is_causal, not both")


def test_check_attentions_shapes_and_messages() -> None:
    ok = [torch.rand(2, 3, 5, 5), torch.rand(2, 1, 5, 5)]
    assert _check_attentions(ok, 2) == 5
    with pytest.raises(UnsupportedModelError) as err:
        _check_attentions([], 2)
    assert str(err.value) == (
        "the model ran no attention (no scaled_dot_product_attention, nn.MultiheadAttention or "
        "softmax over a 4-D tensor): the attention methods are for vision transformers; use a "
        "layer method such as 'gradcam' instead"
    )
    for bad in ([torch.rand(2, 3, 5, 4)], [torch.rand(2, 3, 4, 5)], [torch.rand(4, 3, 5, 5)]):
        with pytest.raises(UnsupportedModelError) as err:
            _check_attentions(ok + bad, 2)
        shapes = [tuple(a.shape) for a in ok + bad]
        assert str(err.value) == (
            f"the attention maps have shapes {shapes}; the attention methods need global "
            "self-attention over the same tokens in every layer, (B=2, heads, N, N) (ViT, DeiT, "
            "EVA); windowed (Swin) or cross-attention models are not supported, use a layer "
            "method such as 'gradcam' or 'layercam'"
        )
    with pytest.raises(UnsupportedModelError):
        _check_attentions([torch.rand(2, 5, 5)], 2)


def test_relevance_rules_on_rows_that_do_not_sum_to_one() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.rand(2, 3, 4, 4, generator=gen, dtype=D) for _ in range(2)]
    g = [torch.randn(2, 3, 4, 4, generator=gen, dtype=D) for _ in range(2)]
    r = torch.eye(4, dtype=D).expand(2, 4, 4)
    for attn, grad in zip(a, g, strict=True):
        r = r + (grad * attn).clamp(min=0).mean(dim=1) @ r
    assert torch.allclose(gae_relevance(a, g), r)
    with pytest.raises(ValueError):
        gae_relevance(a, g[:1])  # one gradient per attention map
    for residual in (0.0, 0.3, 1.0):
        r = None
        for attn in a:
            ahat = residual * torch.eye(4, dtype=D) + (1 - residual) * attn.mean(dim=1)
            ahat = ahat / ahat.sum(dim=-1, keepdim=True)
            r = ahat if r is None else ahat @ r
        assert torch.allclose(rollout_relevance(a, residual), r), residual
    assert torch.allclose(rollout_relevance(a, 1.0), torch.eye(4, dtype=D).expand(2, 4, 4))
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match=f"residual must be in \\[0, 1\\], got {bad}"):
            rollout_relevance(a, bad)
    with pytest.raises(UnsupportedModelError) as err:
        gae_relevance([], [])
    assert str(err.value) == "gae needs at least one attention layer"
    with pytest.raises(UnsupportedModelError) as err:
        rollout_relevance([])
    assert str(err.value) == "rollout needs at least one attention layer"


def test_token_relevance_row_bounds() -> None:
    rel = torch.arange(2 * 4 * 4, dtype=D).view(2, 4, 4)
    assert torch.equal(token_relevance(rel, 1, -4), rel[:, 0])
    assert torch.equal(token_relevance(rel, 1, 3), rel[:, 3])
    assert torch.equal(token_relevance(rel, 0, (0, 2)), (rel[:, 0] + rel[:, 2]) / 2)
    for bad in (4, -5, [], "first", [0, 4], [0.0]):
        with pytest.raises(InputError) as err:
            token_relevance(rel, 1, bad)
        assert str(err.value) == (
            f"rows must be 'auto', 'all', a token index or a list of them in [0, 4), got {bad!r}"
        )


def test_to_grid_without_a_layout() -> None:
    def call(prefix: int) -> ModelCall:
        return ModelCall(None, torch.zeros(1), None, None, [], num_prefix=prefix)  # type: ignore[arg-type]

    tokens = torch.arange(2 * 10, dtype=D).view(2, 10)
    assert torch.equal(_to_grid(call(1), tokens), tokens[:, 1:].reshape(2, 3, 3))
    assert torch.equal(_to_grid(call(6), tokens), tokens[:, 6:].reshape(2, 2, 2))
    assert torch.equal(_to_grid(call(9), tokens), tokens[:, 9:].reshape(2, 1, 1))
    for prefix in (0, 10, 12):  # 10 tokens; no tokens left; fewer tokens than prefixes
        with pytest.raises(UnsupportedModelError) as err:
            _to_grid(call(prefix), tokens)
        assert str(err.value) == (
            f"cannot place 10 tokens ({prefix} prefix tokens) on a patch grid: the token layout "
            "is unknown; the engine passes ModelCall.to_grid for transformers it recognises"
        )


# -- what AttentionCapture records, however the attention is called ----------------------------


def test_capture_records_sdpa_of_any_rank_with_its_batch() -> None:
    from camlens.cams.attention import AttentionCapture

    gen = torch.Generator().manual_seed(0)
    q4 = torch.randn(2, 3, 4, 5, generator=gen)
    q3 = torch.randn(6, 4, 5, generator=gen)
    q2 = torch.randn(4, 5, generator=gen)
    with torch.no_grad(), AttentionCapture() as cap:
        outs = [F.scaled_dot_product_attention(q, q, q) for q in (q4, q3, q2)]
    for q, out in zip((q4, q3, q2), outs, strict=True):
        assert torch.allclose(out, F.scaled_dot_product_attention(q, q, q), atol=1e-6)
    assert cap.shapes == [(2, -1, 4, 4), (6, -1, 4, 4), (1, -1, 4, 4)]
    assert cap.sources == ["sdpa"] * 3
    assert [tuple(a.shape) for a in cap.attentions()] == [(2, 3, 4, 4), (6, 1, 4, 4), (1, 1, 4, 4)]


def test_capture_records_softmax_over_the_last_dim_of_4d_tensors_only() -> None:
    from camlens.cams.attention import AttentionCapture

    x = torch.randn(2, 3, 4, 4)
    with AttentionCapture() as cap:
        kept = [
            torch.softmax(x, -1),
            torch.softmax(x, 3),
            x.softmax(dim=-1),
            F.softmax(x, dim=3),
            F.softmax(x, -1),
        ]
        torch.softmax(x, 2)  # over queries: not attention probabilities
        F.softmax(x, dim=1)
        torch.softmax(x[0], -1)  # 3-D
        torch.softmax(x.flatten(2), dim=-1)
    assert len(cap.tensors) == 5 and cap.sources == ["softmax"] * 5
    assert all(t is k for t, k in zip(cap.tensors, kept, strict=True))


def test_capture_refuses_dropout_on_recorded_attention_only_in_training() -> None:
    from camlens.cams.attention import AttentionCapture

    x = torch.randn(2, 3, 4, 4)
    message = (
        "attention dropout is active (p={}); attention weights under dropout are random. Put "
        "the model in eval mode (camlens.explain does)"
    )
    with AttentionCapture():
        probs = torch.softmax(x, -1)
        for call, p in (
            (lambda: torch.dropout(probs, 0.2, True), 0.2),
            (lambda: F.dropout(probs, 0.3), 0.3),  # F.dropout trains by default
            (lambda: F.dropout(probs, p=0.4, training=True), 0.4),
        ):
            with pytest.raises(UnsupportedModelError) as err:
                call()
            assert str(err.value) == message.format(p)
        assert torch.equal(torch.dropout(probs, 0.2, False), probs)  # eval
        assert torch.equal(F.dropout(probs, 0.5, training=False), probs)
        assert torch.equal(torch.dropout(probs, 0.0, True), probs)  # p = 0
        torch.dropout(x, 0.5, True)  # not an attention map: not ours to refuse


def test_attention_methods_with_frozen_parameters_unused_layers_and_float64() -> None:
    """The attention enters the graph even when every parameter is frozen; an attention map
    that does not reach the score gets a zero gradient; float64 models stay float64; (B, T)
    targets are seeded with one-hot rows of the scores' dtype."""
    from camlens.cams.attention import gae
    from tests.cams.test_attention import TinyAttention, grid_of, picker

    class WithDeadAttention(TinyAttention):
        def forward(self, x):
            t = self.tokens(x)[:, None]
            F.scaled_dot_product_attention(t, t, t)  # computed, never used
            return super().forward(x)

    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    ids = torch.tensor([1, 3])
    model = TinyAttention()
    ref = gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1))
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1))
    assert torch.allclose(frozen.raw["attention"], ref.raw["attention"])
    assert frozen.raw["attention"].dtype == torch.float64
    dead = WithDeadAttention()
    got = gae(ModelCall(dead, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1))
    assert torch.allclose(got.raw["attention"], ref.raw["attention"])
    both = torch.stack([ids, ids.flip(0)], 1)
    many = gae(ModelCall(dead, x, both, picker(both), [], to_grid=grid_of(2, 1), num_prefix=1))
    assert torch.allclose(many.raw["attention"][:, 0], ref.raw["attention"])

    def cube(out):
        return out[:, :, None], ids

    with pytest.raises(InputError) as err:
        gae(ModelCall(model, x, ids, cube, [], to_grid=grid_of(2, 1), num_prefix=1))
    assert str(err.value) == "scores must be (B,) or (B, T), got (2, 4, 1)"


def test_explicit_attention_groups_key_heads_on_dim_minus_3_whatever_the_other_sizes() -> None:
    """enable_gqa repeats the H_k key/value heads (dim -3) to the H_q query heads, as SDPA does,
    with batches other than H_k and H_q and head counts equal to the feature size, so that no
    other dimension can stand in for the heads; H_k must divide H_q."""
    gen = torch.Generator().manual_seed(2)
    for b, hq, hk, e in ((3, 4, 2, 4), (4, 4, 2, 2), (1, 6, 3, 5), (2, 4, 1, 3)):
        q = torch.randn(b, hq, 3, e, generator=gen, dtype=D)
        k = torch.randn(b, hk, 5, e, generator=gen, dtype=D)
        v = torch.randn(b, hk, 5, 2, generator=gen, dtype=D)
        out, probs = explicit_attention(q, k, v, enable_gqa=True)
        rep = k.repeat_interleave(hq // hk, dim=-3)  # query head i reads key head i // groups
        want = torch.softmax(q @ rep.transpose(-2, -1) / e**0.5, dim=-1)
        assert probs.shape == (b, hq, 3, 5) and torch.allclose(probs, want), (b, hq, hk, e)
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    for hq, hk in ((3, 2), (2, 4)):
        q = torch.randn(2, hq, 3, 4, dtype=D)
        k = v = torch.randn(2, hk, 5, 4, dtype=D)
        with pytest.raises(RuntimeError):  # SDPA refuses too
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        with pytest.raises(InputError) as err:
            explicit_attention(q, k, v, enable_gqa=True)
        assert str(err.value) == (
            f"scaled_dot_product_attention with enable_gqa: the {hk} key/value heads must divide "
            f"the {hq} query heads (dim -3); give key and value a number of heads that divides "
            "the query's"
        )


def test_explicit_attention_zeroes_exactly_the_rows_whose_logits_are_all_minus_inf() -> None:
    """P = 0 on a query row whose logits are all -inf, as SDPA's math backend (safe softmax),
    whatever empties the row: a boolean mask per head (L = 3 != S = 6) emptying a row in one
    head only, a (L, S) mask on 3-D inputs, and, with a causal mask or no mask at all, an
    infinite query. Every other row is the plain softmax."""
    q, k, v = qkv()  # (2, 4, 3, 5), (2, 4, 6, 5)
    keep = torch.ones(4, 3, 6, dtype=torch.bool)
    keep[0, 1] = False  # query 1 of head 0 attends nothing; heads 1-3 attend every key
    keep[2, 2, :4] = False  # a row partly masked
    out, probs = explicit_attention(q, k, v, attn_mask=keep)
    logits = (q @ k.transpose(-2, -1) / 5**0.5).masked_fill(~keep, float("-inf"))
    want = torch.softmax(logits, dim=-1)
    want[:, 0, 1] = 0.0
    assert torch.equal(probs[:, 0, 1], torch.zeros(2, 6, dtype=D))
    assert torch.allclose(probs, want) and torch.allclose(
        probs[:, 1:].sum(-1), torch.ones(2, 3, 3, dtype=D)
    )
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep))
    rows = torch.ones(3, 6, dtype=torch.bool)
    rows[1] = False  # 3-D inputs (B, L, E): query 1 of every batch attends nothing
    out3, probs3 = explicit_attention(q[0], k[0], v[0], attn_mask=rows)
    assert torch.equal(probs3[:, 1], torch.zeros(4, 6, dtype=D))
    assert torch.allclose(probs3[:, [0, 2]].sum(-1), torch.ones(4, 2, dtype=D))
    assert torch.allclose(out3, F.scaled_dot_product_attention(q[0], k[0], v[0], attn_mask=rows))
    k = k.clone()
    k[..., 0] = k[..., 0].abs() + 0.1  # every key > 0 on feature 0 ...
    q = q.clone()
    q[0, 2, 1, 0] = float("-inf")  # ... so query 1 of batch 0, head 2 has only -inf logits
    for kwargs in ({}, {"is_causal": True}):
        out, probs = explicit_attention(q, k, v, **kwargs)
        assert torch.equal(probs[0, 2, 1], torch.zeros(6, dtype=D)), kwargs
        sums = probs.sum(-1)
        sums[0, 2, 1] = 1.0
        assert torch.allclose(sums, torch.ones(2, 4, 3, dtype=D)), kwargs
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, **kwargs)), kwargs
