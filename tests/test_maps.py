"""ReLU, upsampling and normalisation of raw maps; layer fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from camlens.fusion import fuse_layers
from camlens.maps import minmax, to_heatmap, upsample


def test_constant_maps_become_zeros_not_nan() -> None:
    maps = torch.stack([torch.full((4, 4), 3.0), torch.zeros(4, 4), torch.arange(16.0).view(4, 4)])
    out = minmax(maps)
    assert not out.isnan().any()
    assert torch.equal(out[0], torch.zeros(4, 4)) and torch.equal(out[1], torch.zeros(4, 4))
    assert out[2].min() == 0 and out[2].max() == 1


def test_tiny_but_informative_maps_still_normalise() -> None:
    maps = torch.arange(16.0).view(1, 4, 4) * 1e-20
    out = minmax(maps)
    assert out.max() == 1 and out.min() == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(0, 9999))
def test_minmax_range_and_order(b: int, h: int, w: int, seed: int) -> None:
    maps = torch.randn(b, h, w, generator=torch.Generator().manual_seed(seed)) * 100
    out = minmax(maps)
    assert ((out >= 0) & (out <= 1)).all()
    # Monotone: the order of the pixels is kept.
    flat, fo = maps.flatten(1), out.flatten(1)
    i, j = flat.argmax(1), flat.argmin(1)
    assert (fo.gather(1, i[:, None]) >= fo.gather(1, j[:, None])).all()


def test_upsample_is_bilinear_align_corners_false() -> None:
    raw = torch.rand(2, 3, 5)
    expected = F.interpolate(raw[:, None], size=(12, 20), mode="bilinear", align_corners=False)
    assert torch.equal(upsample(raw, (12, 20)), expected[:, 0])
    assert upsample(raw, (3, 5)) is raw


def test_to_heatmap_applies_relu_first() -> None:
    raw = torch.tensor([[[-5.0, 1.0], [2.0, 4.0]]])
    assert torch.allclose(to_heatmap(raw, (2, 2)), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))


def test_fusion_scales_with_tanh_and_takes_the_maximum() -> None:
    a = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])  # max 4
    b = torch.tensor([[[-1.0, 8.0], [0.0, 0.0]]])  # max 8
    fused = fuse_layers([a, b], (2, 2))
    ta, tb = torch.tanh(2 * a / 4), torch.tanh(2 * b.clamp(min=0) / 8)
    assert torch.allclose(fused, torch.maximum(ta, tb))
    assert torch.equal(fuse_layers([torch.zeros(1, 2, 2)], (4, 4)), torch.zeros(1, 4, 4))
