"""LeGrad against float64 hand-written references, TorchCAM, and hand-computed numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import camlens
from camlens.blocks import find_blocks
from camlens.cams.legrad import legrad, legrad_relevance
from camlens.cams.model_based import ModelCall
from camlens.errors import LayerError
from camlens.registry import get_method
from tests.cams.test_attention import attend, grid_of, heads, picker, state, tiny_hf, tiny_timm
from tests.conftest import tiny_tv

# -- the pure maths, by hand ------------------------------------------------------------------


def test_legrad_relevance_by_hand() -> None:
    """Two layers, two heads, N = 2. ReLU first, then the mean over heads and query rows, then
    the sum over layers: every number worked out on paper."""
    g1 = torch.tensor([[[1.0, -2.0], [3.0, 4.0]], [[-1.0, 2.0], [1.0, 0.0]]])[None]
    # ReLU: head 0 [[1, 0], [3, 4]], head 1 [[0, 2], [1, 0]]; mean over heads and rows:
    # column 0: (1 + 3 + 0 + 1) / 4 = 1.25, column 1: (0 + 4 + 2 + 0) / 4 = 1.5
    g2 = torch.full((1, 2, 2, 2), -1.0)
    g2[0, 0, 0, 1] = 8.0  # column 1: 8 / 4 = 2
    e = legrad_relevance([g1, g2])
    assert torch.equal(e, torch.tensor([[1.25, 3.5]]))
    # without the ReLU the first layer's negative entries would lower column 0
    assert not torch.equal(e, torch.stack([g1.mean((1, 2)), g2.mean((1, 2))]).sum(0))


def test_registered() -> None:
    info = get_method("legrad")
    assert info.inputs == "model" and info.uses_tokens and "2404.03214" in info.paper


# -- real ViTs against float64 references -------------------------------------------------------


def tv_hidden(model, x: Tensor, upto: int, store: list[Tensor]) -> Tensor:
    h = model._process_input(x)
    h = torch.cat([model.class_token.expand(x.shape[0], -1, -1), h], dim=1)
    h = h + model.encoder.pos_embedding
    for layer in list(model.encoder.layers)[: upto + 1]:
        mha = layer.self_attention
        q, k, v = F.linear(layer.ln_1(h), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        h = h + mha.out_proj(attend(*(heads(t, mha.num_heads) for t in (q, k, v)), store))
        h = h + layer.mlp(layer.ln_2(h))
    return h


def timm_hidden(model, x: Tensor, upto: int, store: list[Tensor]) -> Tensor:
    h = model._pos_embed(model.patch_embed(x))
    for block in list(model.blocks)[: upto + 1]:
        q, k, v = block.attn.qkv(block.norm1(h)).chunk(3, dim=-1)
        h = h + block.attn.proj(attend(*(heads(t, block.attn.num_heads) for t in (q, k, v)), store))
        h = h + block.mlp(block.norm2(h))
    return h


def hf_hidden(model, x: Tensor, upto: int, store: list[Tensor]) -> Tensor:
    h = model.vit.embeddings(x)
    layers = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
    n_heads = model.config.num_attention_heads
    for layer in list(layers)[: upto + 1]:
        att = layer.attention
        if hasattr(att, "q_proj"):
            projections, out = (att.q_proj, att.k_proj, att.v_proj), att.o_proj
        else:  # transformers < 5
            sa = att.attention
            projections, out = (sa.query, sa.key, sa.value), att.output.dense
        y = layer.layernorm_before(h)
        h = h + out(attend(*(heads(p(y), n_heads) for p in projections), store))
        h = h + layer.mlp(layer.layernorm_after(h))
    return h


MODELS = {  # name: (build, hidden states, readout written by hand, prefix tokens, depth)
    "torchvision": (
        tiny_tv,
        tv_hidden,
        lambda m, h: m.heads(m.encoder.ln(h.mean(dim=1))),  # the paper's code, TorchCAM
        1,
    ),
    "timm": (tiny_timm, timm_hidden, lambda m, h: m.head(m.norm(h)[:, 0]), 1),
    "timm-registers": (
        lambda: tiny_timm(reg_tokens=2),
        timm_hidden,
        lambda m, h: m.head(m.norm(h)[:, 0]),
        3,
    ),
    "timm-avgpool": (
        lambda: tiny_timm(class_token=False, global_pool="avg"),
        timm_hidden,
        lambda m, h: m.head(m.fc_norm(m.norm(h).mean(dim=1))),
        0,
    ),
    "hf-sdpa": (
        lambda: tiny_hf("sdpa"),
        hf_hidden,
        lambda m, h: m.classifier(m.vit.layernorm(h)[:, 0]),
        1,
    ),
}


def reference_legrad(name: str, model, x: Tensor, ids: Tensor, blocks: list[int]) -> Tensor:
    """sum over the given blocks of mean_{h,i} ReLU(d s_l / d A_l) over the patch tokens: one
    separate forward and backward per block, so nothing is shared with the implementation."""
    _, hidden, read, prefix = MODELS[name]
    total = torch.zeros(x.shape[0], 16, dtype=torch.float64)
    for layer in blocks:
        store: list[Tensor] = []
        s = read(model, hidden(model, x, layer, store)).gather(1, ids[:, None]).sum()
        (g,) = torch.autograd.grad(s, store[layer])
        total = total + g.clamp(min=0).mean(dim=(1, 2))[:, prefix:]
    return total.reshape(-1, 4, 4)


@pytest.mark.parametrize("name", list(MODELS))
def test_legrad_matches_a_float64_reference(name: str) -> None:
    build, hidden, read, prefix = MODELS[name]
    model = build().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    store: list[Tensor] = []
    full = read(model, hidden(model, x, 1, store))
    if prefix == 1 and name != "torchvision":  # the hand-written readout is the model's head
        assert torch.allclose(full, getattr(model(x), "logits", model(x)), atol=1e-10)
    ids = torch.tensor([4, 1])
    call = ModelCall(
        model, x, ids, picker(ids), [], to_grid=grid_of(4, prefix), num_prefix=prefix,
        layer_auto=True,
    )  # fmt: skip
    before = state(model)
    result = legrad(call)
    assert state(model) == before  # no hooks left, no .grad, flags as they came
    expected = reference_legrad(name, model, x, ids, [0, 1])
    assert (expected.flatten(1) > 0).sum(dim=1).min() >= 4  # not a vacuous all-zero map
    assert torch.allclose(result.raw["legrad"], expected, atol=1e-10)
    for layer in (0, 1):
        one = reference_legrad(name, model, x, ids, [layer])
        assert torch.allclose(result.extras["layers"][:, layer], one, atol=1e-10)
    # a single block: layer=[block] restricts the sum
    block = find_blocks(model)[1]
    last = legrad(
        ModelCall(model, x, ids, picker(ids), [block], to_grid=grid_of(4, prefix),
                  num_prefix=prefix)
    )  # fmt: skip
    assert torch.allclose(last.raw["legrad"], reference_legrad(name, model, x, ids, [1]))
    # two targets per image in one batched backward: column 0 is the call above
    both = torch.stack([ids, torch.tensor([0, 2])], dim=1)
    many = legrad(
        ModelCall(model, x, both, picker(both), [], to_grid=grid_of(4, prefix),
                  num_prefix=prefix, layer_auto=True)
    )  # fmt: skip
    assert many.raw["legrad"].shape == (2, 2, 4, 4)
    assert torch.allclose(many.raw["legrad"][:, 0], result.raw["legrad"], atol=1e-12)
    second = reference_legrad(name, model, x, torch.tensor([0, 2]), [0, 1])
    assert torch.allclose(many.raw["legrad"][:, 1], second, atol=1e-10)


def test_the_block_cut_matters() -> None:
    """Without cutting the graph between blocks, d(s_1 + s_2)/dA_1 would also hold ds_2/dA_1:
    the reference with that leak differs from LeGrad, so the cut is what the test pins."""
    model = tiny_tv().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ids = torch.tensor([4, 1])
    store: list[Tensor] = []
    read = MODELS["torchvision"][2]
    s = [read(model, tv_hidden(model, x, layer, store)) for layer in (0, 1)]
    # store holds A_0 (from the first forward), then A_0', A_1 of the second
    leak = torch.autograd.grad(s[1].gather(1, ids[:, None]).sum(), store[1])[0]
    assert leak.abs().max() > 1e-6  # s_2 does depend on A_1 through block 2


def test_agrees_with_torchcam() -> None:
    """TorchCAM's LeGrad (torchvision ViT) averages the layers: ours / L is its raw map."""
    methods = pytest.importorskip("torchcam.methods")
    if not hasattr(methods, "LeGrad"):
        pytest.skip("this torchcam has no LeGrad")
    model = tiny_tv(layers=3).eval()
    x = torch.randn(2, 3, 32, 32)
    ex = camlens.explain(model, x, "legrad", target=[3, 0])
    blocks = list(model.encoder.layers)
    theirs = []
    for i, cls in enumerate([3, 0]):
        with methods.LeGrad(model, blocks) as extractor:
            scores = model(x[i : i + 1])
            theirs.append(extractor(cls, scores, normalized=False)[0][0])
    theirs = torch.stack(theirs)
    assert torch.allclose(ex.raw["legrad"] / 3, theirs, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_through_explain_on_the_demo_vit_and_layer_errors() -> None:
    from camlens.demo import load_model, shapes

    vit = load_model("vit")
    images, labels, _ = shapes(4, seed=0, size=96, instances=1)
    ex = camlens.explain(vit, images, "legrad", target=labels)
    assert ex.maps.shape == (4, 96, 96) and ex.raw["legrad"].shape == (4, 12, 12)
    assert ex.extras["layers"].shape == (4, 2, 12, 12)
    assert torch.allclose(ex.raw["legrad"], ex.extras["layers"].sum(1))
    last = camlens.explain(vit, images, "legrad", layer=["blocks.1"], target=labels)
    assert torch.allclose(last.raw["legrad"], ex.extras["layers"][:, 1], atol=1e-6)
    top = camlens.explain(vit, images, "legrad", target=camlens.targets.top(2))
    assert top.maps.shape == (4, 2, 96, 96)
    assert torch.equal(top.targets[:, 0], vit(images).argmax(1))
    with pytest.raises(LayerError, match="blocks"):
        camlens.explain(vit, images, "legrad", layer="blocks.1.norm1")


# -- CLIP vision towers: the readout is the image projection, the target a similarity ----------


def clip_reference(model, hidden, read, x: Tensor, ref: Tensor, depth: int, prefix: int = 1):
    total = torch.zeros(x.shape[0], 16, dtype=torch.float64)
    for layer in range(depth):
        store: list[Tensor] = []
        emb = read(hidden(model, x, layer, store))
        s = F.cosine_similarity(emb, ref, dim=1).sum()
        (g,) = torch.autograd.grad(s, store[layer])
        total = total + g.clamp(min=0).mean(dim=(1, 2))[:, prefix:]
    return total.reshape(-1, 4, 4)


def test_open_clip_vision_tower_with_a_similarity_target() -> None:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    visual = open_clip.transformer.VisionTransformer(
        image_size=32, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=2.0, output_dim=8
    ).double().eval()  # fmt: skip

    def hidden(m, x, upto, store):
        h = m._embeds(x)
        for block in list(m.transformer.resblocks)[: upto + 1]:
            mha = block.attn
            y = block.ln_1(h)
            q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
            y = attend(*(heads(t, mha.num_heads) for t in (q, k, v)), store)
            h = h + block.ls_1(mha.out_proj(y))
            h = h + block.ls_2(block.mlp(block.ln_2(h)))
        return h

    def read(h):  # class token ("tok" pooling), ln_post, projection
        return visual.ln_post(h[:, 0]) @ visual.proj

    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.allclose(read(hidden(visual, x, 1, [])), visual(x), atol=1e-10)
    ref = torch.randn(8, dtype=torch.float64)
    ex = camlens.explain(visual, x, "legrad", target=camlens.targets.similarity(ref))
    expected = clip_reference(visual, hidden, read, x, ref.expand(2, -1), 2)
    assert torch.allclose(ex.raw["legrad"].double(), expected, atol=1e-6)
    # pool="mean": the authors' CLIP code, ln_post(mean over all tokens) @ proj
    mean = camlens.explain(visual, x, "legrad", target=camlens.targets.similarity(ref), pool="mean")
    expected = clip_reference(
        visual, hidden, lambda h: visual.ln_post(h.mean(1)) @ visual.proj, x, ref.expand(2, -1), 2
    )
    assert torch.allclose(mean.raw["legrad"].double(), expected, atol=1e-6)


def test_hf_clip_vision_tower_with_a_similarity_target() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=8, attn_implementation="sdpa",
    )  # fmt: skip
    model = transformers.CLIPVisionModelWithProjection(config).double().eval()
    vm = model.vision_model

    def hidden(m, x, upto, store):
        h = vm.pre_layrnorm(vm.embeddings(x))
        for layer in list(vm.encoder.layers)[: upto + 1]:
            att = layer.self_attn
            y = layer.layer_norm1(h)
            q, k, v = (heads(p(y), 2) for p in (att.q_proj, att.k_proj, att.v_proj))
            h = h + att.out_proj(attend(q, k, v, store))
            h = h + layer.mlp(layer.layer_norm2(h))
        return h

    def read(h):
        return model.visual_projection(vm.post_layernorm(h[:, 0]))

    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.allclose(read(hidden(model, x, 1, [])), model(pixel_values=x).image_embeds)
    ref = torch.randn(2, 8, dtype=torch.float64)
    ex = camlens.explain(model, x, "legrad", target=camlens.targets.similarity(ref))
    expected = clip_reference(model, hidden, read, x, ref, 2)
    assert torch.allclose(ex.raw["legrad"].double(), expected, atol=1e-6)
