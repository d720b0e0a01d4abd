"""Grad-CAM, Grad-CAM++ and LayerCAM: hand-computed values, identities and properties."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import camlens
from camlens.cams import cam, gradcam, gradcampp, layercam
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


def test_gap_linear_identities_on_gapnet() -> None:
    """For GAP + linear: gradcam = cam / Z and layercam = sum_k ReLU(w_k) A^k / Z."""
    torch.manual_seed(3)
    model = GapNet(channels=7, classes=4).eval()
    x = torch.randn(5, 3, 12, 12)
    target = [0, 1, 2, 3, 1]
    acts = capture(model, model.features, x)
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
