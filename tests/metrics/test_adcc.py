"""ADCC and coherency (Poppi et al., CVPRW 2021) on maps and models that can be written down."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens.errors import InputError
from camlens.metrics import Adcc, adcc, adcc_parts, coherency
from camlens.metrics.adcc import pearson
from tests.conftest import hook_count


class SumNet(nn.Module):
    """Logits (sum of channel 0, 0): probabilities written down by hand."""

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, 0].flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def first_channel(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
    """A 'method' whose map is the image's first channel: L(x) = x_0."""
    return images[:, 0].clamp(0, 1)


def _data(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 6, 6, generator=g)
    return x, x[:, 0].clone()


def _np_pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_pearson_by_hand_and_constant_maps() -> None:
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    b = torch.tensor([[[2.0, 1.0], [4.0, 3.0]]])
    # centred: (-1.5, -.5, .5, 1.5) and (-.5, -1.5, 1.5, .5): 3.5 / 5 = 0.6
    assert pearson(a, b).tolist() == pytest.approx([0.6], abs=1e-7)
    assert pearson(a, -a).tolist() == pytest.approx([-1.0], abs=1e-7)
    assert pearson(a, torch.ones_like(a)).tolist() == [0.0]


def test_coherency_is_the_correlation_with_the_map_of_the_masked_image() -> None:
    x, maps = _data()
    out = coherency(SumNet(), x, maps, first_channel, 0)
    # the masked image's first channel is L * x_0 = L^2
    want = [(_np_pearson(m.numpy() ** 2, m.numpy()) + 1) / 2 for m in maps.double()]
    assert out.tolist() == pytest.approx(want, abs=1e-6)
    assert 0.5 < min(want) and max(want) < 1  # not a trivial value


def test_coherency_hides_towards_the_baseline() -> None:
    x, maps = _data(1)
    out = coherency(SumNet(), x, maps, first_channel, 0, baseline=1.0)
    # baseline + L (x - baseline) = 1 + L (L - 1)
    want = [(_np_pearson(1 + m * (m - 1), m) + 1) / 2 for m in maps.double().numpy()]
    assert out.tolist() == pytest.approx(want, abs=1e-6)


def test_coherency_re_explains_the_explained_class() -> None:
    seen: list[Tensor] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append(ids.clone())
        return images[:, 0]

    x, maps = _data()
    coherency(SumNet(), x, maps, spy, torch.tensor([1, 0, 1]))
    assert seen[0].tolist() == [1, 0, 1]
    coherency(SumNet(), x, maps, spy)  # None: the top class, 0 here (the sums are positive)
    assert seen[1].tolist() == [0, 0, 0]


def test_harmonic_mean_by_hand() -> None:
    def parts(coh, com, drop):
        t = torch.tensor
        return Adcc(t([coh]), t([com]), t([drop]), t([0])).adcc.item()

    assert parts(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert parts(1.0, 0.25, 0.0) == pytest.approx(3 / (1 + 4 / 3 + 1))
    assert parts(0.8, 0.1, 0.3) == pytest.approx(3 / (1 / 0.8 + 1 / 0.9 + 1 / 0.7))
    assert parts(0.9, 1.0, 0.2) == 0.0  # a map that lights up everything scores 0
    assert parts(0.9, 0.2, 1.0) == 0.0


def test_adcc_by_hand() -> None:
    x, maps = _data(2)
    model = SumNet()
    parts = adcc_parts(model, x, maps, first_channel, 0)
    xd, md = x.double(), maps.double()
    y = torch.sigmoid(xd[:, 0].sum(dim=(1, 2)))  # softmax of (s, 0) for class 0
    o = torch.sigmoid((md * xd[:, 0]).sum(dim=(1, 2)))
    drop = (y - o).clamp(min=0) / y
    com = md.mean(dim=(1, 2))
    coh = torch.tensor([(_np_pearson(m**2, m) + 1) / 2 for m in md.numpy()], dtype=torch.float64)
    want = 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop))
    assert parts.drop.tolist() == pytest.approx(drop.tolist(), abs=1e-6)
    assert parts.complexity.tolist() == pytest.approx(com.tolist(), abs=1e-6)
    assert parts.coherency.tolist() == pytest.approx(coh.tolist(), abs=1e-6)
    assert adcc(model, x, maps, first_channel, 0).tolist() == pytest.approx(want.tolist(), abs=1e-6)


def test_a_registered_method_and_the_model_left_as_it_came(gapnet, images) -> None:
    gapnet.train()
    flags = [p.requires_grad for p in gapnet.parameters()]
    ex = camlens.explain(gapnet, images, "gradcam", "features.3")
    out = adcc_parts(gapnet, images, ex.maps, "gradcam", layer="features.3")
    assert out.adcc.shape == (4,) and bool(((out.adcc >= 0) & (out.adcc <= 1)).all())
    assert out.targets.tolist() == ex.targets.tolist()
    # the map of a deterministic method is reproduced: coherency of the same maps twice
    same = coherency(gapnet, images, ex.maps, lambda m, x, i: ex.maps, layer="features.3")
    assert same.tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert gapnet.training and hook_count(gapnet) == 0
    assert [p.requires_grad for p in gapnet.parameters()] == flags


def test_bad_maps_are_refused(gapnet, images) -> None:
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        adcc(gapnet, images, torch.randn(4, 16, 16), "gradcam")
    with pytest.raises(InputError, match="one per image"):
        coherency(gapnet, images, torch.rand(3, 16, 16), "gradcam")
