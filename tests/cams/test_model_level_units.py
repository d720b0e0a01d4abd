"""The pieces of the model-level methods: FullGrad's bias and post-processing, and the
capture of nn.MultiheadAttention's probabilities through F.multi_head_attention_forward."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.cams.attention import AttentionCapture
from camlens.cams.model_based import _effective_bias, _psi
from camlens.errors import UnsupportedModelError


def test_effective_bias_of_batch_norm_conv_and_linear() -> None:
    bn = nn.BatchNorm2d(3, eps=0.5).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 3.5]))
        bn.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    # beta - gamma mu / sqrt(var + eps): sqrt(2), 1, 2
    expected = torch.tensor([0.1 - 2.0 * 1.0 / 2**0.5, 0.2 - 2.0, -0.3 - 0.5 * 0.5 / 2])
    assert torch.allclose(_effective_bias(bn), expected)
    plain = nn.BatchNorm2d(2, affine=False, eps=0.0).eval()  # gamma = 1, beta = 0
    with torch.no_grad():
        plain.running_mean.copy_(torch.tensor([3.0, -1.0]))
        plain.running_var.copy_(torch.tensor([4.0, 0.25]))
    assert torch.allclose(_effective_bias(plain), torch.tensor([-1.5, 2.0]))
    assert _effective_bias(nn.BatchNorm2d(2, track_running_stats=False)) is None
    conv = nn.Conv2d(2, 3, 1)
    assert torch.equal(_effective_bias(conv), conv.bias.detach())
    assert _effective_bias(nn.Conv2d(2, 3, 1, bias=False)) is None
    lin = nn.Linear(2, 3)
    assert torch.equal(_effective_bias(lin), lin.bias.detach())
    assert _effective_bias(nn.ReLU()) is None and _effective_bias(nn.LayerNorm(3)) is None


def test_psi_rescales_each_channel_of_each_image_then_sums() -> None:
    """psi = |.| rescaled to [0, 1] per image and channel (a constant channel gives 0), summed
    over channels, upsampled bilinearly."""
    a = torch.tensor([[-2.0, 2.5], [3.0, -2.25]])  # |a| in [2, 3], span 1: (|a| - 2) / 1
    b = torch.tensor([[0.5, -0.7], [0.6, 0.5]])  # span 0.2 < 1
    c = torch.full((2, 2), -4.0)  # constant: 0
    d = torch.tensor([[10.0, 0.0], [-5.0, 20.0]])  # span 20 > 1
    term = torch.stack([torch.stack([a, b]), torch.stack([c, d])])  # (2, 2, 2, 2)
    want = torch.stack(
        [
            (a.abs() - 2) / 1 + (b.abs() - 0.5) / 0.2,
            torch.zeros(2, 2) + d.abs() / 20,
        ]
    )
    assert torch.allclose(_psi(term, (2, 2)), want, atol=1e-6)
    up = F.interpolate(want[:, None], size=(4, 6), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(_psi(term, (4, 6)), up, atol=1e-6)
    rows = torch.tensor([[[[1.0, 2.0], [5.0, 9.0]]]])  # one channel: min 1 max 9 over all pixels
    assert torch.allclose(_psi(rows, (2, 2))[0], torch.tensor([[0.0, 1 / 8], [0.5, 1.0]]))


def mha_args(dropout: float = 0.0):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(5, 3, 8)  # (L, N, E)
    return (
        x, x, x, 8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None, False, dropout,
        mha.out_proj.weight, mha.out_proj.bias,
    )  # fmt: skip


def test_functional_mha_defaults_are_read_as_torch_reads_them() -> None:
    args = mha_args()
    with torch.no_grad():
        plain_out, plain_w = F.multi_head_attention_forward(*args)  # averaged by default
        heads = F.multi_head_attention_forward(*args, average_attn_weights=False)[1]
        with AttentionCapture() as cap:
            out, w = F.multi_head_attention_forward(*args)
            out2, none = F.multi_head_attention_forward(*args, need_weights=False)
            _, w_heads = F.multi_head_attention_forward(*args, average_attn_weights=False)
    assert cap.sources == ["mha"] * 3 and cap.shapes[0] == (-1, 2, 5, 5)
    assert torch.allclose(cap.attentions()[0], heads, atol=1e-6)
    assert torch.allclose(out, plain_out, atol=1e-6) and torch.allclose(w, plain_w, atol=1e-6)
    assert torch.allclose(out2, plain_out, atol=1e-6) and none is None
    assert torch.allclose(w_heads, heads, atol=1e-6)


def test_functional_mha_dropout_and_causal_are_refused_with_their_reason() -> None:
    args = mha_args(dropout=0.25)
    with AttentionCapture():  # training defaults to True in F.multi_head_attention_forward
        with pytest.raises(UnsupportedModelError) as err:
            F.multi_head_attention_forward(*args)
    assert str(err.value) == (
        "nn.MultiheadAttention dropout is active (dropout=0.25); attention weights under "
        "dropout are random. Put the model in eval mode (camlens.explain does)"
    )
    with torch.no_grad(), AttentionCapture() as cap:
        F.multi_head_attention_forward(*args, training=False)  # eval: dropout is off
    assert len(cap.tensors) == 1
    mask = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    with AttentionCapture():
        with pytest.raises(UnsupportedModelError) as err:
            F.multi_head_attention_forward(*mha_args(), attn_mask=mask, is_causal=True)
    assert str(err.value) == (
        "causal nn.MultiheadAttention is not supported by attention capture; the attention "
        "methods are for encoders (ViT) with full self-attention"
    )


def test_functional_mha_weights_that_are_not_a_view_of_the_heads_probabilities_are_refused() -> (
    None
):
    """The torch-version guard: a F.multi_head_attention_forward whose weights are not a view
    of the (B * heads, L, S) P (none, a tensor of their own, a view of a tensor of another
    rank, of a first dimension that the heads do not divide) is refused, nothing recorded."""
    real = F.multi_head_attention_forward

    def returning(change):
        @functools.wraps(real)  # the same signature, which _multi_head binds the arguments to
        def fake(*args, **kwargs):
            out, weights = real(*args, **kwargs)
            return out, change(weights)

        return fake

    changes = (
        lambda w: None,
        lambda w: w.clone(),
        lambda w: torch.zeros(2, *w.shape)[0],  # base (2, 3, 2, 5, 5): 2 heads divide 2
        lambda w: torch.zeros(3, 5, 5)[None],  # base (3, 5, 5): 2 heads do not divide 3
    )
    for change in changes:
        capture = AttentionCapture()
        with torch.no_grad(), pytest.raises(UnsupportedModelError) as err:
            capture._multi_head(returning(change), mha_args(), {})
        assert str(err.value) == (
            "could not read the attention probabilities of nn.MultiheadAttention in this torch "
            f"version ({torch.__version__}); use a model built on "
            "F.scaled_dot_product_attention"
        )
        assert capture.tensors == []
    capture = AttentionCapture()  # the real function through the same door: recorded
    with torch.no_grad():
        capture._multi_head(returning(lambda w: w), mha_args(), {})
    assert capture.shapes == [(-1, 2, 5, 5)]


class ChannelsLastNet(nn.Module):
    """conv (bias) -> ReLU -> a Linear over channels-last (B, h, w, C) with a bias -> ReLU ->
    GAP -> Linear; plus a biased branch whose output is not used (no gradient reaches it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unused = nn.Conv2d(3, 2, 1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Linear(4, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        self.unused(x)
        a = torch.relu(self.conv(x))
        b = torch.relu(self.mix(a.permute(0, 2, 3, 1)))  # (B, h, w, 5)
        return self.fc(b.mean(dim=(1, 2)))


def test_fullgrad_by_hand_on_non_square_images_with_a_channels_last_linear() -> None:
    import camlens

    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 6, 10)
    target = torch.tensor([0, 2])
    ex = camlens.explain(model, x, method="fullgrad", target=target)
    # the reference: gradients of the score w.r.t. the input and every biased output
    xg = x.clone().requires_grad_(True)
    z_conv = model.conv(xg)
    z_mix = model.mix(torch.relu(z_conv).permute(0, 2, 3, 1))
    z_fc = model.fc(torch.relu(z_mix).mean(dim=(1, 2)))
    score = z_fc.gather(1, target[:, None]).sum()
    g_x, g_conv, g_mix, g_fc = torch.autograd.grad(score, [xg, z_conv, z_mix, z_fc])
    conv_term = g_conv * model.conv.bias.detach().view(1, -1, 1, 1)
    mix_term = (g_mix * model.mix.bias.detach()).permute(0, 3, 1, 2)
    expected = _psi(g_x * x, (6, 10)) + _psi(conv_term, (6, 10)) + _psi(mix_term, (6, 10))
    assert ex.raw["input"].shape == (2, 6, 10)
    assert torch.allclose(ex.raw["input"], expected, atol=1e-5)
    total = sum(t.flatten(1).sum(1) for t in (g_x * x, conv_term, mix_term))
    total = total + (g_fc * model.fc.bias.detach()).sum(1)
    assert torch.allclose(ex.extras["completeness"][:, 0], total.detach(), atol=1e-5)
    # the explained scores are the model's logits of the targets, the targets those asked for
    logits = z_fc.gather(1, target[:, None])[:, 0].detach()
    assert torch.allclose(ex.scores, logits, atol=1e-6)
    assert torch.allclose(ex.extras["completeness"][:, 1], logits, atol=1e-6)
    assert torch.equal(ex.targets, target)


def test_fullgrad_refuses_volumes_naming_the_methods_that_work() -> None:
    import camlens
    from camlens.cams.model_based import ModelCall, fullgrad
    from camlens.errors import InputError

    call = ModelCall(nn.Identity(), torch.zeros(1, 1, 2, 4, 4), 0, lambda o: (o, o), [])
    with pytest.raises(InputError) as err:
        fullgrad(call)
    assert str(err.value) == (
        "fullgrad is defined here for images (B, C, H, W), got (1, 1, 2, 4, 4); for volumes "
        "use gradcam, gradcampp, layercam, hirescam, xgradcam, cam or scorecam"
    )
    assert camlens.method_info("fullgrad").inputs == "model"


def test_guided_gradcam_without_the_engines_callback_is_refused() -> None:
    from camlens.cams.model_based import ModelCall, guided_gradcam

    call = ModelCall(nn.Identity(), torch.zeros(1, 1, 2, 2), 0, lambda o: (o, o), [])
    with pytest.raises(ValueError) as err:
        guided_gradcam(call)
    assert str(err.value) == (
        "guided_gradcam needs the engine's explain callback (ModelCall.explain)"
    )


def test_guided_relu_forward_and_backward() -> None:
    from camlens.cams.model_based import _GuidedBackprop, _GuidedReLU

    x = torch.tensor([-1.0, 0.0, 0.5, 2.0], requires_grad=True)
    out = _GuidedReLU.apply(x)
    assert torch.equal(out.detach(), torch.tensor([0.0, 0.0, 0.5, 2.0]))
    (g,) = torch.autograd.grad(out, x, torch.tensor([3.0, 3.0, 0.5, -2.0]))
    assert torch.equal(g, torch.tensor([0.0, 0.0, 0.5, 0.0]))  # ReLU(grad) where out > 0
    # other functions keep their keyword arguments under the mode
    y = torch.arange(6.0).view(2, 3)
    with _GuidedBackprop():
        assert torch.equal(torch.sum(y, dim=1), torch.tensor([3.0, 12.0]))
        assert torch.equal(y.flatten(start_dim=0), torch.arange(6.0))
        assert torch.equal(F.relu(y - 2), (y - 2).clamp(min=0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_fullgrad_sums_in_float32_at_least(dtype: torch.dtype) -> None:
    """A bfloat16 model's terms are cast up to float32 before they are multiplied and summed;
    a float64 model's stay float64 (completeness then holds to 1e-10, not float32's 1e-6)."""
    from camlens.cams.model_based import ModelCall, fullgrad
    from tests.cams.test_attention import picker
    from tests.conftest import GapNet

    torch.manual_seed(0)
    model = GapNet(last_relu=False).to(dtype).eval()
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    ids = torch.tensor([1, 3])
    result = fullgrad(ModelCall(model, x, ids, picker(ids), []))
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert result.raw["input"].dtype == result.extras["completeness"].dtype == want
    total, scores = result.extras["completeness"].unbind(dim=1)
    assert torch.allclose(total, scores, atol=1e-10 if dtype == torch.float64 else 0.1)
