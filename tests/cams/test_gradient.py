"""Grad-CAM, Grad-CAM++ and LayerCAM: hand-computed values, identities and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import camlens
from camlens.cams import (
    cam,
    gradcam,
    gradcam_elementwise,
    gradcampp,
    hirescam,
    layercam,
    xgradcam,
)
from tests.conftest import GapNet, HandNet, capture

# Two channels of 3x3 that one can compute on paper; w = (1, -1) for class 0.
A1 = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3]])
A2 = torch.ones(3, 3)
ACTS = torch.stack([A1, A2])[None]  # (1, 2, 3, 3)
W = torch.tensor([[1.0, -1.0], [0.5, 2.0]])


def test_hand_computed_tiny_model() -> None:
    model = HandNet(W)
    # dS0/dA = w_k / Z everywhere, Z = 9.
    ex = camlens.explain(model, ACTS, method="gradcam", layer="features", target=0)
    assert torch.allclose(ex.raw["features"][0], (A1 - A2) / 9)
    ex = camlens.explain(model, ACTS, method="cam", layer="features", target=0)
    assert torch.allclose(ex.raw["features"][0], A1 - A2)
    ex = camlens.explain(model, ACTS, method="layercam", layer="features", target=0)
    assert torch.allclose(ex.raw["features"][0], A1 / 9)
    # Grad-CAM++: channel 1, g = 1/9, sum A1 = 6: a = (1/81) / (2/81 + 6/729) = 3/8,
    # w1 = 9 * 3/8 * 1/9 = 3/8. Channel 2: g = -1/9, ReLU(g) = 0, so w2 = 0.
    ex = camlens.explain(model, ACTS, method="gradcampp", layer="features", target=0)
    assert torch.allclose(ex.raw["features"][0], 3 / 8 * A1)
    # The displayed map: ReLU, (no upsampling at 3x3), min-max.
    assert torch.allclose(ex.maps[0], A1 / 3)


def test_gradcampp_zero_denominator_gives_zero_weight() -> None:
    acts = torch.zeros(1, 1, 2, 2)
    grads = torch.zeros(1, 1, 2, 2)
    out = gradcampp(acts, grads)
    assert torch.equal(out, torch.zeros(1, 2, 2))
    assert not out.isnan().any()


def test_gradcampp_zero_denominator_with_positive_gradients() -> None:
    """2 g^2 + sum A g^3 = g^2 (2 + sum A g) vanishes for sum A = -2, g = 1 (A < 0 is possible
    before a ReLU): that channel's weight is 0 although ReLU(g) > 0, the other channel's is
    the closed form, and nothing is NaN."""
    zero = torch.tensor([[-1.0, -1.5], [0.5, 0.0]])  # sum -2
    other = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # sum 4: a = 1 / (2 + 4) per position
    acts = torch.stack([zero, other])[None]
    out = gradcampp(acts, torch.ones_like(acts))
    assert torch.allclose(out[0], 4 * (1 / 6) * other)
    # d1, d2, d3 given separately: where the denominator is 0 the weight is 0 whatever d2 is
    from camlens.cams.gradient import _gradcampp_map

    d2 = torch.full_like(acts, 3.0)
    d3 = torch.full_like(acts, 3.0)  # 2 * 3 + (-2) * 3 = 0 for the first channel
    got = _gradcampp_map(acts, torch.ones_like(acts), d2, d3)
    assert torch.allclose(got[0], 4 * (3 / (6 + 4 * 3)) * other)


# Signed activations (a layer before its ReLU) and a bias: every method's hand-computed map.
S1 = torch.tensor([[1.0, 0, 0], [0, -2, 0], [0, 0, 3]])  # sum 2
S2 = torch.tensor([[1.0, 1, 1], [1, -1, 1], [1, 1, 1]])  # sum 7
S3 = torch.tensor([[1.0, -1, 0], [2, 0, -2], [0, 0, 0]])  # sum 0
SIGNED = torch.stack([S1, S2, S3])[None]  # (1, 3, 3, 3)
W3 = torch.tensor([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]])
B3 = torch.tensor([0.25, -0.5])


def test_hand_computed_signed_activations_with_a_bias() -> None:
    model = HandNet(W3, B3)

    def raw(method: str) -> torch.Tensor:
        ex = camlens.explain(
            model, SIGNED, method=method, layer="features", target=0, layout="nchw"
        )
        return ex.raw["features"][0]

    # g^k = w_k / 9 everywhere.
    assert torch.allclose(raw("gradcam"), (S1 - S2 + 0.5 * S3) / 9)
    assert torch.allclose(raw("hirescam"), (S1 - S2 + 0.5 * S3) / 9)
    assert torch.allclose(raw("cam"), S1 - S2 + 0.5 * S3)
    # LayerCAM: ReLU(g) A keeps the negative activations of the channels with g > 0.
    assert torch.allclose(raw("layercam"), (S1 + 0.5 * S3) / 9)
    # Element-wise: ReLU(g A) per channel, then the sum.
    expected = (S1.clamp(min=0) + (-S2).clamp(min=0) + (0.5 * S3).clamp(min=0)) / 9
    assert torch.allclose(raw("gradcam_elementwise"), expected)
    # XGrad-CAM: w_k = sum_ij A_ij g_ij / sum A = 1/9 and -1/9; channel 3 sums to 0: w_3 = 0.
    assert torch.allclose(raw("xgradcam"), (S1 - S2) / 9)
    # Grad-CAM++: channel 1: a = (1/81) / (2/81 + 2/729) = 9/20, w_1 = 9 * 9/20 * 1/9 = 9/20.
    # Channel 2: ReLU(g) = 0. Channel 3: sum A = 0, so a = 1/2, w_3 = 9 * 1/2 * 1/18 = 1/4.
    assert torch.allclose(raw("gradcampp"), 9 / 20 * S1 + 1 / 4 * S3)
    # The logit: sum_ij HiResCAM + b = S.
    logit = model(SIGNED)[0, 0].detach()
    assert torch.allclose(raw("hirescam").sum() + B3[0], logit)


def test_pure_functions_on_signed_random_tensors() -> None:
    """Each formula against its definition written with explicit loops over channels."""
    gen = torch.Generator().manual_seed(5)
    acts = torch.randn(2, 3, 4, 5, generator=gen)
    grads = torch.randn(2, 3, 4, 5, generator=gen)
    z = 20
    lay = torch.zeros(2, 4, 5)
    elem = torch.zeros(2, 4, 5)
    hires = torch.zeros(2, 4, 5)
    grad = torch.zeros(2, 4, 5)
    xgrad = torch.zeros(2, 4, 5)
    for k in range(3):
        a, g = acts[:, k], grads[:, k]
        lay += g.clamp(min=0) * a
        elem += (g * a).clamp(min=0)
        hires += g * a
        grad += g.sum(dim=(1, 2), keepdim=True) / z * a
        xgrad += (a * g).sum(dim=(1, 2), keepdim=True) / a.sum(dim=(1, 2), keepdim=True) * a
    assert torch.allclose(layercam(acts, grads), lay, atol=1e-6)
    assert torch.allclose(gradcam_elementwise(acts, grads), elem, atol=1e-6)
    assert torch.allclose(hirescam(acts, grads), hires, atol=1e-6)
    assert torch.allclose(gradcam(acts, grads), grad, atol=1e-6)
    assert torch.allclose(xgradcam(acts, grads), xgrad, atol=1e-5)
    assert not torch.allclose(layercam(acts, grads), gradcam_elementwise(acts, grads))


def test_gradcampp_equals_gradcam_up_to_scale_for_constant_gradients() -> None:
    # With g constant per channel and g > 0: a = 1 / (2 + sum A * g), w_k = Z a g.
    torch.manual_seed(0)
    acts = torch.rand(2, 3, 4, 4)
    g = torch.rand(2, 3, 1, 1)
    grads = g.expand(2, 3, 4, 4)
    z = 16
    expected_w = z * g / (2 + acts.sum(dim=(2, 3), keepdim=True) * g)
    assert torch.allclose(gradcampp(acts, grads), (expected_w * acts).sum(1), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    k=st.integers(1, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_properties_on_random_tensors(b: int, k: int, h: int, w: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.rand(b, k, h, w, generator=gen)
    grads = torch.randn(b, k, h, w, generator=gen)
    for fn in (gradcam, gradcampp, layercam):
        out = fn(acts, grads)
        assert out.shape == (b, h, w)
        assert torch.isfinite(out).all()
    # Grad-CAM is linear in the gradients; LayerCAM ignores negative gradients.
    assert torch.allclose(gradcam(acts, 2 * grads), 2 * gradcam(acts, grads), atol=1e-5)
    assert torch.allclose(layercam(acts, grads), layercam(acts, grads.clamp(min=0)))
    # Grad-CAM++ weights are non-negative, so with A >= 0 the raw map is >= 0.
    assert (gradcampp(acts, grads) >= -1e-6).all()
    # Grad-CAM's weight is the mean gradient: with grads = c (per channel), raw = sum_k c_k A^k.
    c = torch.randn(b, k, 1, 1, generator=gen)
    assert torch.allclose(gradcam(acts, c.expand_as(acts)), cam(acts, c[:, :, 0, 0]), atol=1e-5)


@pytest.mark.parametrize("last_relu", [True, False], ids=["post-relu", "signed"])
def test_gap_linear_identities_on_gapnet(last_relu: bool) -> None:
    """For GAP + linear: gradcam = cam / Z and layercam = sum_k ReLU(w_k) A^k / Z, for
    non-negative and for signed activations."""
    torch.manual_seed(3)
    model = GapNet(channels=7, classes=4, last_relu=last_relu).eval()
    x = torch.randn(5, 3, 12, 12)
    target = [0, 1, 2, 3, 1]
    acts = capture(model, model.features, x)
    assert bool((acts < 0).any()) is not last_relu
    z = acts.shape[-1] * acts.shape[-2]
    raw = {
        m: camlens.explain(model, x, method=m, layer="features", target=target).raw["features"]
        for m in ("cam", "gradcam", "layercam")
    }
    assert torch.allclose(raw["gradcam"], raw["cam"] / z, atol=1e-6)
    w = model.fc.weight.detach()[target]  # (B, K)
    expected = torch.einsum("bk,bkhw->bhw", w.clamp(min=0), acts) / z
    assert torch.allclose(raw["layercam"], expected, atol=1e-6)
    assert torch.allclose(raw["cam"], torch.einsum("bk,bkhw->bhw", w, acts), atol=1e-5)
