"""LeGrad's parts on a tiny 2-block torchvision ViT in float64: the class decided on the model's
output and read at every block, every token's relevance, the scores, blocks whose readout does
not reach their attention, and each error by its whole message."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from camlens.cams.legrad import legrad, legrad_relevance
from camlens.cams.model_based import ModelCall
from camlens.errors import InputError, LayerError, UnsupportedModelError
from tests.cams.test_attention import grid_of, picker
from tests.cams.test_legrad import MODELS, reference_legrad, tv_hidden
from tests.conftest import tiny_tv, whole

READ = MODELS["torchvision"][2]  # heads(encoder.ln(mean_t z_t)): the readout legrad uses


def setup(seed: int = 0, layers: int = 2) -> tuple[nn.Module, Tensor]:
    model = tiny_tv(layers=layers).double().eval()
    torch.manual_seed(seed)
    return model, torch.randn(3, 3, 32, 32, dtype=torch.float64)


def call_of(model: nn.Module, x: Tensor, ids: Tensor, **kw) -> ModelCall:
    kw.setdefault("layer_auto", True)
    return ModelCall(
        model, x, ids, picker(ids), kw.pop("layers", []), to_grid=grid_of(4, 1), num_prefix=1, **kw
    )


def token_reference(model: nn.Module, x: Tensor, ids: Tensor, blocks: list[int]) -> Tensor:
    """sum_l mean_{h,i} ReLU(d s_l / d A_l) over ALL 17 tokens (class token first), s_l the
    logit of ``ids`` read from block l by the readout; one forward and backward per block."""
    total = torch.zeros(x.shape[0], 17, dtype=torch.float64)
    for layer in blocks:
        store: list[Tensor] = []
        s = READ(model, tv_hidden(model, x, layer, store)).gather(1, ids[:, None]).sum()
        (g,) = torch.autograd.grad(s, store[layer])
        total = total + g.clamp(min=0).mean(dim=(1, 2))
    return total


def test_every_token_the_scores_and_the_layers() -> None:
    model, x = setup()
    ids = torch.tensor([4, 1, 0])
    result = legrad(call_of(model, x, ids))
    tokens = token_reference(model, x, ids, [0, 1])
    assert result.extras["tokens"].shape == (3, 17)
    assert torch.allclose(result.extras["tokens"], tokens, atol=1e-12)
    assert bool((tokens[:, 0] > 0).any())  # the class token's column is kept in "tokens"
    assert torch.allclose(result.raw["legrad"], tokens[:, 1:].reshape(3, 4, 4), atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(result.scores, model(x).gather(1, ids[:, None])[:, 0], atol=1e-12)
    assert not result.scores.requires_grad and torch.equal(result.class_ids, ids)
    assert result.maps is None and set(result.extras) == {"tokens", "layers"}


class TopClass:
    """A target decided on the output it is given: each image's highest logit."""

    def __call__(self, out: Tensor) -> tuple[Tensor, Tensor]:
        ids = out.argmax(dim=1)
        return out.gather(1, ids[:, None])[:, 0], ids


def test_the_class_decided_on_the_model_output_is_read_at_every_block() -> None:
    """s^l is the logit of the class chosen on the MODEL's output, gathered from block l's
    readout; re-deciding the target on each block's readout would explain other classes."""
    model, x = setup()
    ids = model(x).argmax(dim=1)
    assert ids.tolist() == [3, 0, 0]  # class 0 among them
    for layer in (0, 1):  # each block's own top class differs from the model's somewhere
        assert not torch.equal(READ(model, tv_hidden(model, x, layer, [])).argmax(1), ids)
    result = legrad(
        ModelCall(model, x, None, TopClass(), [], to_grid=grid_of(4, 1), num_prefix=1,
                  layer_auto=True)
    )  # fmt: skip
    assert torch.equal(result.class_ids, ids)
    expected = reference_legrad("torchvision", model, x, ids, [0, 1])
    assert torch.allclose(result.raw["legrad"], expected, atol=1e-12)


class SkipFirst:
    """A readout that does not reach block 0's attention (its tokens detached there)."""

    def __init__(self, model: nn.Module):
        self.model, self.calls = model, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return READ(self.model, z.detach() if self.calls == 1 else z)


@pytest.mark.parametrize("several", [False, True])
def test_a_block_whose_attention_the_readout_does_not_reach_adds_zero(several: bool) -> None:
    model, x = setup()
    ids = torch.tensor([4, 1, 0])
    both = torch.stack([ids, torch.tensor([2, 2, 3])], dim=1)
    result = legrad(call_of(model, x, both if several else ids), readout=SkipFirst(model))
    layers = result.extras["layers"]
    assert layers.shape == ((3, 2, 2, 4, 4) if several else (3, 2, 4, 4))
    assert result.raw["legrad"].dtype == torch.float64
    for t, target in enumerate(both.T if several else [ids]):
        got = layers[:, t] if several else layers
        assert torch.equal(got[:, 0], torch.zeros(3, 4, 4, dtype=torch.float64))
        expected = reference_legrad("torchvision", model, x, target, [1])
        assert torch.allclose(got[:, 1], expected, atol=1e-12)
        raw = result.raw["legrad"][:, t] if several else result.raw["legrad"]
        assert torch.allclose(raw, expected, atol=1e-12)


def test_the_maps_keep_the_attention_dtype_where_a_block_is_not_reached() -> None:
    """bfloat16: block 0's zeros are made in the attention's dtype (float32 zeros would turn
    the stacked maps to float32)."""
    model = tiny_tv().to(torch.bfloat16).eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.bfloat16)
    for ids in (torch.tensor([0, 1, 2]), torch.tensor([[0, 1], [1, 1], [2, 2]])):
        result = legrad(call_of(model, x, ids), readout=SkipFirst(model))
        assert result.raw["legrad"].dtype == result.extras["layers"].dtype == torch.bfloat16
        assert not bool((result.extras["layers"].select(-3, 0) != 0).any())
        assert bool((result.extras["layers"].select(-3, 1) > 0).any())


def test_legrad_relevance_needs_a_block() -> None:
    msg = "legrad needs at least one transformer block"
    with pytest.raises(UnsupportedModelError, match=whole(msg)):
        legrad_relevance([])


def test_a_layer_that_is_not_a_block() -> None:
    model, x = setup(layers=3)
    call = call_of(model, x, torch.tensor([0, 1, 2]), layers=[("encoder.ln", model.encoder.ln)],
                   layer_auto=False)  # fmt: skip
    msg = (
        "legrad explains transformer blocks; ['encoder.ln'] is not one. Pass layer=None (all "
        "blocks) or a list of blocks, e.g. ['encoder.layers.encoder_layer_1', "
        "'encoder.layers.encoder_layer_2'] (blocks: encoder.layers.encoder_layer_0 .. "
        "encoder.layers.encoder_layer_2)"
    )
    with pytest.raises(LayerError, match=whole(msg)):
        legrad(call)


def test_readout_errors() -> None:
    model, x = setup()
    ids = torch.tensor([0, 1, 2])
    msg = "readout must be a callable tokens (B, N, C) -> output, got 'heads'"
    with pytest.raises(InputError, match=whole(msg)):
        legrad(call_of(model, x, ids), readout="heads")  # type: ignore[arg-type]
    msg = "the blocks' readout scores do not depend on their attention; check readout="
    for several in (False, True):  # the parameters need grad: the scores do, not via attention
        target = torch.stack([ids, ids.flip(0)], dim=1) if several else ids
        with pytest.raises(UnsupportedModelError, match=whole(msg)):
            legrad(call_of(model, x, target), readout=lambda z: READ(model, z.detach()))
    model.requires_grad_(False)  # a frozen model: the scores need no grad at all
    with pytest.raises(UnsupportedModelError, match=whole(msg)):
        legrad(call_of(model, x, ids), readout=lambda z: READ(model, z.detach()))
    assert not any(p.requires_grad for p in model.parameters())


class NoAttention(nn.Module):
    """Stands for a block's self-attention without computing any: (x, None)."""

    def forward(self, q: Tensor, *_a, **_k) -> tuple[Tensor, None]:
        return q, None


def test_a_block_without_self_attention() -> None:
    model, x = setup()
    model.encoder.layers[1].self_attention = NoAttention()
    msg = (
        "VisionTransformer ran 1 attention maps in 2 blocks; legrad needs one self-attention "
        "per block"
    )
    with pytest.raises(UnsupportedModelError, match=whole(msg)):
        legrad(call_of(model, x, torch.tensor([0, 1, 2])))
