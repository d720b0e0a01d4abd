"""Transformer methods: attention capture, GAE and rollout, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camlens
from camlens.cams.attention import (
    AttentionCapture,
    explicit_attention,
    gae,
    gae_relevance,
    rollout,
    rollout_relevance,
    token_relevance,
)
from camlens.cams.model_based import ModelCall
from camlens.errors import InputError, UnsupportedModelError
from camlens.registry import get_method
from tests.conftest import tiny_tv

# -- the pure maths, by hand ------------------------------------------------------------------


def test_gae_relevance_by_hand() -> None:
    """Two layers, N = 2, one head: every number below is worked out on paper."""
    a1 = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    g1 = torch.tensor([[2.0, -2.0], [0.0, 4.0]])  # g1 * a1 = [[1, -1], [0, 3]], + [[1, 0], [0, 3]]
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    g2 = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # g2 * a2 = [[1, 0], [1, 1]]
    # R1 = I + [[1, 0], [0, 3]] = [[2, 0], [0, 4]]
    # R2 = R1 + [[1, 0], [1, 1]] @ R1 = [[2, 0], [0, 4]] + [[2, 0], [2, 4]] = [[4, 0], [2, 8]]
    r = gae_relevance([a1[None, None], a2[None, None]], [g1[None, None], g2[None, None]])
    assert torch.equal(r, torch.tensor([[[4.0, 0.0], [2.0, 8.0]]]))


def test_gae_relevance_averages_heads_after_the_positive_part() -> None:
    """Head 1 contributes +2 at (0, 1), head 2 contributes -2 there: mean of the positive
    parts is 1, not 0 (the ReLU comes before the mean over heads)."""
    a = torch.full((1, 2, 2, 2), 0.5)
    g = torch.zeros(1, 2, 2, 2)
    g[0, 0, 0, 1] = 4.0
    g[0, 1, 0, 1] = -4.0
    r = gae_relevance([a], [g])
    assert torch.equal(r[0], torch.tensor([[1.0, 1.0], [0.0, 1.0]]))


def test_rollout_relevance_by_hand() -> None:
    """A1 = [[1, 0], [1, 0]] -> Ahat1 = [[1, 0], [.5, .5]]; A2 = [[0, 1], [0, 1]] ->
    Ahat2 = [[.5, .5], [0, 1]]; R = Ahat2 Ahat1 = [[.75, .25], [.5, .5]]."""
    a1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])[None, None]
    a2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])[None, None]
    r = rollout_relevance([a1, a2])
    assert torch.allclose(r[0], torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    # two heads whose mean is a1: the same first step
    heads = torch.stack([torch.tensor([[1.0, 0.0], [2.0, -1.0]]), torch.tensor([[1.0, 0], [0, 1]])])
    assert torch.allclose(rollout_relevance([heads[None]]), rollout_relevance([a1]))
    with pytest.raises(InputError, match="residual"):
        rollout_relevance([a1], residual=1.5)


def test_token_relevance_rows() -> None:
    r = torch.arange(9.0).view(1, 3, 3)
    assert torch.equal(token_relevance(r, 1, "auto"), r[:, 0])
    assert torch.equal(token_relevance(r, 0, "auto"), r.mean(dim=1))
    assert torch.equal(token_relevance(r, 2, (0, 1)), r[:, :2].mean(dim=1))
    with pytest.raises(InputError, match="rows"):
        token_relevance(r, 1, 5)


def test_explicit_attention_matches_sdpa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 3, dtype=torch.float64) for _ in range(3))
    bool_mask = torch.rand(5, 5) > 0.3
    bool_mask[:, 0] = True  # no query without keys
    cases = [
        {},
        {"scale": 0.7},
        {"attn_mask": torch.randn(2, 1, 5, 5, dtype=torch.float64)},
        {"attn_mask": bool_mask},
        {"is_causal": True},
    ]
    for kwargs in cases:
        out, probs = explicit_attention(q, k, v, **kwargs)
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, **kwargs)), kwargs
        assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64))
    no_keys = torch.ones(5, 5, dtype=torch.bool)
    no_keys[2] = False  # query 2 may attend nothing: P = 0 there, as in SDPA
    out, probs = explicit_attention(q, k, v, attn_mask=no_keys)
    assert torch.equal(probs[:, :, 2], torch.zeros(2, 4, 5, dtype=torch.float64))
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=no_keys))
    kv = torch.randn(2, 2, 5, 3, dtype=torch.float64)
    out, probs = explicit_attention(q, kv, kv, enable_gqa=True)
    assert probs.shape == (2, 4, 5, 5)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True))
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        explicit_attention(q, k, v, dropout_p=0.1)


# -- a tiny attention model whose A and dS/dA are written by hand ------------------------------


class TinyAttention(nn.Module):
    """Tokens = [cls, the 4 pixels of a (B, D, 2, 2) image]; two single-head SDPA layers with
    residuals, X_b = X_{b-1} + A_b V_b; score = X_2[cls] @ head. Layer 2 has W_q = W_k = 0, so
    its attention is uniform (1/N) and does not depend on X_1: dS/dA_1 stays a closed form."""

    def __init__(self, dim: int = 3, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.cls = nn.Parameter(torch.randn(1, 1, dim, generator=g, dtype=torch.float64))
        self.wq1, self.wk1, self.wv1, self.wv2 = (
            nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64)) for _ in range(4)
        )
        self.zero = nn.Parameter(torch.zeros(dim, dim, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(dim, classes, generator=g, dtype=torch.float64))

    def tokens(self, x: Tensor) -> Tensor:
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tokens(x)
        for wq, wk, wv in ((self.wq1, self.wk1, self.wv1), (self.zero, self.zero, self.wv2)):
            q, k, v = ((h @ w)[:, None] for w in (wq, wk, wv))
            h = h + F.scaled_dot_product_attention(q, k, v)[:, 0]
        return h[:, 0] @ self.head


def picker(ids: Tensor):
    """score(output) -> (the logits of ``ids``, ids); (B,) or (B, T) ids."""

    def score(out) -> tuple[Tensor, Tensor]:
        logits = getattr(out, "logits", out)
        if ids.ndim == 2:
            return logits.gather(1, ids), ids
        return logits.gather(1, ids[:, None])[:, 0], ids

    return score


def grid_of(side: int, prefix: int):
    return lambda t: t[:, prefix:].reshape(t.shape[0], side, side)


def test_gae_on_a_hand_computed_model() -> None:
    model = TinyAttention()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    ids = torch.tensor([1, 3])
    call = ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1)
    result = gae(call)

    with torch.no_grad():
        x0 = model.tokens(x)  # (B, N, D)
        n, d = x0.shape[1], x0.shape[2]
        a1 = torch.softmax(x0 @ model.wq1 @ (x0 @ model.wk1).transpose(1, 2) / math.sqrt(d), -1)
        v1 = x0 @ model.wv1
        x1 = x0 + a1 @ v1
        v2 = x1 @ model.wv2
        a2 = torch.full((2, n, n), 1.0 / n, dtype=torch.float64)
        w = model.head[:, ids].T  # (B, D): the explained class's column
        # S = w . X2[0],  X2[0] = X1[0] + (1/N) sum_j V2_j
        g2 = torch.zeros(2, n, n, dtype=torch.float64)
        g2[:, 0, :] = torch.einsum("bjd,bd->bj", v2, w)  # dS/dA2[0, j] = w . V2_j
        # dS/dX1_j = (1/N) W_v2 w for every token j, + w for the class token
        ds_dx1 = (w @ model.wv2.T)[:, None, :].repeat(1, n, 1) / n
        ds_dx1[:, 0] += w
        g1 = torch.einsum("bid,bjd->bij", ds_dx1, v1)  # dS/dA1[i, j] = dS/dX1_i . V1_j
        eye = torch.eye(n, dtype=torch.float64)
        r = eye + (g1 * a1).clamp(min=0) @ eye
        r = r + (g2 * a2).clamp(min=0) @ r
        expected = r[:, 0, 1:].reshape(2, 2, 2)
        logits = x1[:, 0] @ model.head + (v2.mean(dim=1)) @ model.head

    assert torch.allclose(result.scores, logits.gather(1, ids[:, None])[:, 0])
    assert result.maps is None
    assert torch.allclose(result.raw["attention"], expected, atol=1e-12)
    assert torch.allclose(result.extras["tokens"], r[:, 0], atol=1e-12)
    assert torch.equal(result.class_ids, ids)


def test_several_targets_per_image_equal_separate_calls() -> None:
    model = TinyAttention()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    ids = torch.tensor([[0, 2, 3], [1, 1, 0]])
    grid = grid_of(2, 1)
    many = gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid, num_prefix=1))
    assert many.raw["attention"].shape == (2, 3, 2, 2)
    assert many.scores.shape == (2, 3)
    for t in range(3):
        one = gae(ModelCall(model, x, ids[:, t], picker(ids[:, t]), [], to_grid=grid, num_prefix=1))
        assert torch.allclose(many.raw["attention"][:, t], one.raw["attention"], atol=1e-12)
        assert torch.allclose(many.scores[:, t], one.scores)
    assert torch.equal(many.class_ids, ids)
    agnostic = rollout(ModelCall(model, x, ids, picker(ids), [], to_grid=grid, num_prefix=1))
    assert agnostic.raw["attention"].shape == (2, 3, 2, 2)
    assert torch.equal(agnostic.raw["attention"][:, 0], agnostic.raw["attention"][:, 2])
    one = rollout(ModelCall(model, x, ids[:, 0], picker(ids[:, 0]), [], to_grid=grid, num_prefix=1))
    assert agnostic.extras["tokens"].shape == (2, 3, 5)  # (B, T, N): every target, every token
    assert torch.equal(agnostic.extras["tokens"], one.extras["tokens"][:, None].expand(-1, 3, -1))
    assert torch.allclose(agnostic.scores, many.scores) and torch.equal(agnostic.class_ids, ids)


def test_rollout_on_the_tiny_model() -> None:
    model = TinyAttention()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    ids = torch.tensor([0, 1])
    result = rollout(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1))
    with torch.no_grad():
        x0 = model.tokens(x)
        n = x0.shape[1]
        a1 = torch.softmax(x0 @ model.wq1 @ (x0 @ model.wk1).transpose(1, 2) / math.sqrt(3), -1)
        eye = torch.eye(n, dtype=torch.float64)
        r = (0.5 * eye + 0.5 * torch.full((n, n), 1.0 / n, dtype=torch.float64)) @ (
            0.5 * eye + 0.5 * a1
        )
    assert torch.allclose(result.raw["attention"], r[:, 0, 1:].reshape(2, 2, 2), atol=1e-12)
    # the class token's row of R over every token (prefix included), the model's logits of
    # the targets, the targets
    assert result.extras["tokens"].shape == (2, n)
    assert torch.allclose(result.extras["tokens"], r[:, 0], atol=1e-12)
    with torch.no_grad():
        logits = model(x).gather(1, ids[:, None])[:, 0]
    assert torch.allclose(result.scores, logits, atol=1e-12)
    assert torch.equal(result.class_ids, ids)


def test_without_to_grid_a_square_grid_after_the_prefix_tokens() -> None:
    model = TinyAttention()
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    ids = torch.tensor([0])
    with_grid = gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(2, 1), num_prefix=1))
    fallback = gae(ModelCall(model, x, ids, picker(ids), [], num_prefix=1))
    assert torch.equal(fallback.raw["attention"], with_grid.raw["attention"])
    with pytest.raises(UnsupportedModelError, match="to_grid"):
        gae(ModelCall(model, x, ids, picker(ids), []))  # 5 tokens, no prefix: no square grid


def test_registered_as_model_level_methods() -> None:
    assert get_method("gae").inputs == "model"
    assert get_method("rollout").inputs == "model"
    assert "2103.15679" in get_method("gae").paper


# -- real transformer implementations against hand-written float64 references -----------------


def attend(q: Tensor, k: Tensor, v: Tensor, store: list[Tensor]) -> Tensor:
    """(B, H, N, d) -> (B, N, H*d), written out; keeps A in ``store``."""
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    store.append(a)
    return (a @ v).transpose(1, 2).flatten(2)


def heads(t: Tensor, h: int) -> Tensor:
    return t.unflatten(-1, (h, -1)).transpose(1, 2)


def tv_reference(model, x: Tensor, store: list[Tensor]) -> Tensor:
    h = model._process_input(x)
    h = torch.cat([model.class_token.expand(x.shape[0], -1, -1), h], dim=1)
    h = h + model.encoder.pos_embedding
    for layer in model.encoder.layers:
        mha = layer.self_attention
        y = layer.ln_1(h)
        q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        y = attend(*(heads(t, mha.num_heads) for t in (q, k, v)), store)
        h = h + mha.out_proj(y)
        h = h + layer.mlp(layer.ln_2(h))
    return model.heads(model.encoder.ln(h)[:, 0])


def timm_reference(model, x: Tensor, store: list[Tensor]) -> Tensor:
    h = model._pos_embed(model.patch_embed(x))
    for block in model.blocks:
        y = block.norm1(h)
        q, k, v = block.attn.qkv(y).chunk(3, dim=-1)
        y = attend(*(heads(t, block.attn.num_heads) for t in (q, k, v)), store)
        h = h + block.attn.proj(y)
        h = h + block.mlp(block.norm2(h))
    return model.forward_head(model.norm(h))


def hf_reference(model, x: Tensor, store: list[Tensor]) -> Tensor:
    h = model.vit.embeddings(x)
    layers = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
    n_heads = model.config.num_attention_heads
    for layer in layers:
        att = layer.attention
        y = layer.layernorm_before(h)
        if hasattr(att, "q_proj"):
            projections, out = (att.q_proj, att.k_proj, att.v_proj), att.o_proj
        else:  # transformers < 5
            sa = att.attention
            projections, out = (sa.query, sa.key, sa.value), att.output.dense
        y = attend(*(heads(p(y), n_heads) for p in projections), store)
        h = h + out(y)
        h = h + layer.mlp(layer.layernorm_after(h))
    return model.classifier(model.vit.layernorm(h)[:, 0])


def tiny_timm(**kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        embed_dim=16, num_heads=2, num_classes=5, **kwargs,
    )  # fmt: skip


def tiny_hf(impl: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, num_labels=5, attn_implementation=impl,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


MODELS = {  # name: (build, reference forward, how the capture reads the attention)
    "torchvision": (tiny_tv, tv_reference, "mha"),
    "timm": (tiny_timm, timm_reference, "sdpa"),
    "timm-unfused": (tiny_timm, timm_reference, "softmax"),  # fused_attn switched off below
    "timm-registers": (lambda: tiny_timm(reg_tokens=2), timm_reference, "sdpa"),  # 3 prefix
    "hf-sdpa": (lambda: tiny_hf("sdpa"), hf_reference, "sdpa"),
    "hf-eager": (lambda: tiny_hf("eager"), hf_reference, "softmax"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_gae_matches_a_hand_written_reference(name: str) -> None:
    build, reference, source = MODELS[name]
    model = build().double().eval()
    if name == "timm-unfused":
        for block in model.blocks:
            block.attn.fused_attn = False
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad(), AttentionCapture() as cap:
        model(x)
    assert cap.sources == [source, source]
    ids = torch.tensor([4, 1])
    prefix = 3 if name == "timm-registers" else 1  # class token first, then the registers
    n = 16 + prefix
    call = ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(4, prefix), num_prefix=prefix)
    result = gae(call)

    store: list[Tensor] = []
    logits = reference(model, x, store)
    assert torch.allclose(logits, getattr(model(x), "logits", model(x)), atol=1e-10)
    score = logits.gather(1, ids[:, None]).sum()
    grads = torch.autograd.grad(score, store)
    r = torch.eye(n, dtype=torch.float64).expand(2, n, n)
    for a, g in zip(store, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    expected = r[:, 0, prefix:].reshape(2, 4, 4).detach()
    assert (expected.flatten(1) > 0).sum(dim=1).min() >= 4  # not a vacuous all-zero map

    # HF's eager attention takes its softmax in float32 even in a float64 model
    tol = 1e-6 if name == "hf-eager" else 1e-10
    assert torch.allclose(result.scores, logits.gather(1, ids[:, None])[:, 0].detach())
    assert torch.allclose(result.raw["attention"].double(), expected, atol=tol)
    assert all(p.grad is None for p in model.parameters())

    # two targets per image, one batched backward: the first is the call above
    both = torch.stack([ids, torch.tensor([0, 2])], dim=1)
    many = gae(
        ModelCall(model, x, both, picker(both), [], to_grid=grid_of(4, prefix), num_prefix=prefix)
    )
    assert torch.allclose(many.raw["attention"][:, 0], result.raw["attention"], atol=1e-12)
    assert not torch.allclose(many.raw["attention"][:, 1], result.raw["attention"])

    agnostic = rollout(call)
    eye = torch.eye(n, dtype=torch.float64)
    r = eye.expand(2, n, n)
    for a in store:
        r = (0.5 * eye + 0.5 * a.detach().mean(dim=1)) @ r
    expected = r[:, 0, prefix:].reshape(2, 4, 4)
    assert torch.allclose(agnostic.raw["attention"].double(), expected, atol=tol)


def test_multihead_attention_fast_path_is_bypassed_and_the_caller_gets_what_it_asked() -> None:
    """In eval mode under no_grad nn.MultiheadAttention would take its fused fast path; while
    the capture is active it runs the explicit branch, and returns what the caller asked for."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        plain_out, plain_w = mha(x, x, x)  # averaged weights
        per_head = mha(x, x, x, average_attn_weights=False)[1]
        with AttentionCapture() as cap:
            out, w = mha(x, x, x)
            out2, none = mha(x, x, x, need_weights=False)
            _, w_heads = mha(x, x, x, average_attn_weights=False)
    assert cap.sources == ["mha"] * 3
    assert all(a.shape == (3, 2, 5, 5) for a in cap.attentions())
    assert torch.allclose(cap.attentions()[0], per_head, atol=1e-6)
    assert torch.allclose(out, plain_out, atol=1e-6) and torch.allclose(out2, plain_out, atol=1e-6)
    assert torch.allclose(w, plain_w, atol=1e-6) and none is None
    assert torch.allclose(w_heads, per_head, atol=1e-6)


def test_torchvision_vit_capture_under_no_grad_matches_the_model() -> None:
    model = tiny_tv().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with AttentionCapture() as cap:
            captured = model(x)
    assert len(cap.tensors) == 2  # one per encoder layer: the fast path did not run
    assert torch.allclose(captured, plain, atol=1e-5)


# -- errors, and the model leaves as it came ----------------------------------------------------


def state(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ],
    )


def test_the_model_leaves_as_it_came_also_after_an_exception() -> None:
    model = tiny_tv()
    model.train()
    model.encoder.layers[0].eval()  # mixed modes
    model.conv_proj.weight.requires_grad_(False)
    before = state(model)
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([0, 1])
    gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(4, 1), num_prefix=1))
    assert state(model) == before

    def broken(_out):
        raise RuntimeError("score failed")

    with pytest.raises(RuntimeError, match="score failed"):
        gae(ModelCall(model, x, ids, broken, [], to_grid=grid_of(4, 1), num_prefix=1))
    assert state(model) == before
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_attention_dropout_in_training_mode_is_refused() -> None:
    model = tiny_timm(attn_drop_rate=0.1).train()
    before = state(model)
    x = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([0])
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(4, 1), num_prefix=1))
    assert state(model) == before
    assert not torch.overrides._is_torch_function_mode_enabled()
    model = tiny_tv()
    model.encoder.layers[0].self_attention.dropout = 0.2
    model.train()
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(4, 1), num_prefix=1))


def test_a_model_without_attention_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(1, 3, 8, 8)
    ids = torch.tensor([0])
    with pytest.raises(UnsupportedModelError, match="gradcam"):
        gae(ModelCall(model, x, ids, picker(ids), []))


def test_windowed_attention_is_refused() -> None:
    """Attention maps whose batch is not the image batch (Swin's windows) are refused."""

    class Windows(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            t = x.flatten(2).transpose(1, 2)  # (B, 16, C)
            w = t.reshape(-1, 1, 4, t.shape[-1])  # 4 windows of 4 tokens per image
            return F.scaled_dot_product_attention(w, w, w).reshape(x.shape[0], -1).sum(1)[:, None]

    x = torch.randn(2, 3, 4, 4)
    ids = torch.tensor([0, 0])
    with pytest.raises(UnsupportedModelError, match="Swin"):
        gae(ModelCall(Windows(), x, ids, picker(ids), []))


def test_through_camlens_explain_on_a_model_without_prefix_tokens() -> None:
    """A timm ViT without class token (average pooling): the mean of R's rows, on a 4 x 4 grid;
    the model stays in training mode as it came."""
    model = tiny_timm(class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 32, 32)
    ex = camlens.explain(model, x, method="gae", target=[1, 2])
    ids = torch.tensor([1, 2])
    model.eval()
    direct = gae(ModelCall(model, x, ids, picker(ids), [], to_grid=grid_of(4, 0)))
    assert ex.layers == ["attention"] and ex.maps.shape == (2, 32, 32)
    assert torch.allclose(ex.raw["attention"], direct.raw["attention"], atol=1e-6)
    model.train()
    before = state(model)
    camlens.explain(model, x, method="rollout")
    assert state(model) == before
