"""ADCC and coherency (Poppi et al., CVPRW 2021) on maps and models that can be written down."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


class SizedSumNet(SumNet):
    """SumNet that records the batch size of every forward pass, scaled so that the
    probabilities are not all 1."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        return self.scale * super().forward(x)


MSG_UNIT = (
    "maps must lie in [0, 1] (they multiply the image); pass Explanation.maps (normalised), "
    "not the raw maps"
)


@pytest.mark.parametrize(("where", "value"), [((1, 2, 3), -0.1), ((0, 0, 0), 1.5)])
def test_maps_outside_the_unit_interval_by_the_whole_message(where, value) -> None:
    x, maps = _data()
    maps[where] = value  # one pixel below 0, or one in (1, 2]: the others are in [0, 1]
    for fn in (coherency, adcc, adcc_parts):
        with pytest.raises(InputError, match="^" + re.escape(MSG_UNIT) + "$"):
            fn(SumNet(), x, maps, first_channel, 0)


def test_the_default_batch_is_64_images() -> None:
    x = torch.rand(65, 1, 2, 2)
    sizes: list[int] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        sizes.append(images.shape[0])
        return images[:, 0]

    model = SizedSumNet()
    coherency(model, x, x[:, 0], spy, 0)
    assert sizes == [64, 1] and model.sizes == [64, 1]
    sizes.clear()
    model.sizes.clear()
    adcc_parts(model, x, x[:, 0], spy, 0)
    assert sizes == [64, 1] and max(model.sizes) == 64 and set(model.sizes) == {64, 1}


def test_every_pass_keeps_to_batch_size() -> None:
    x, maps = _data()
    model = SizedSumNet()
    adcc(model, x, maps, first_channel, 0, batch_size=2)
    assert max(model.sizes) == 2 and set(model.sizes) == {2, 1}
    model.sizes.clear()
    coherency(model, x, maps, first_channel, 0, batch_size=1)
    assert model.sizes == [1, 1, 1]


def test_low_resolution_maps_of_the_masked_image_are_upsampled() -> None:
    def pooled(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        return F.avg_pool2d(images[:, :1], 2)[:, 0].clamp(0, 1)  # (B, 3, 3) for 6 x 6 images

    x, maps = _data(3)
    low = F.avg_pool2d((maps * x[:, 0])[:, None], 2)  # the masked image's first channel: L x_0
    again = F.interpolate(low, size=(6, 6), mode="bilinear", align_corners=False)[:, 0]
    want = [(_np_pearson(a, m) + 1) / 2 for a, m in zip(again.numpy(), maps.numpy(), strict=True)]
    assert coherency(SumNet(), x, maps, pooled, 0).tolist() == pytest.approx(want, abs=1e-6)
    parts = adcc_parts(SumNet(), x, maps, pooled, 0)
    assert parts.coherency.tolist() == pytest.approx(want, abs=1e-6)


def _by_hand(x: Tensor, maps: Tensor, ids: Tensor, baseline: float, scale: float, logit: bool):
    """Coherency, complexity and drop of SizedSumNet(scale) with first_channel, in float64."""
    xd, md = x.double(), maps.double()
    seen = baseline + md * (xd[:, 0] - baseline)
    coh = [(_np_pearson(s.clip(0, 1), m) + 1) / 2 for s, m in zip(seen.numpy(), md.numpy())]  # noqa: B905
    sign = torch.where(ids == 0, 1.0, -1.0).double()  # class 1's logit is 0: softmax(-s, 0)
    s_full = scale * xd[:, 0].sum(dim=(1, 2))
    s_seen = scale * seen.sum(dim=(1, 2))
    if logit:
        y = torch.where(ids == 0, s_full, 0.0)
        o = torch.where(ids == 0, s_seen, 0.0)
    else:
        y, o = torch.sigmoid(sign * s_full), torch.sigmoid(sign * s_seen)
    drop = torch.where(y > 0, (y - o).clamp(min=0) / y, 0.0)
    com = md.mean(dim=(1, 2))
    return torch.tensor(coh, dtype=torch.float64), com, drop


@pytest.mark.parametrize(("baseline", "score"), [(0.0, "prob"), (0.2, "prob"), (0.2, "logit")])
def test_parts_by_hand_with_targets_baseline_and_score(baseline: float, score: str) -> None:
    x, maps = _data(4)
    ids = torch.tensor([1, 0, 0])  # image 0 is explained for class 1, not its top class 0
    model = SizedSumNet(scale=0.1)  # probabilities well inside (0, 1): the drop is not tiny
    coh, com, drop = _by_hand(x, maps, ids, baseline, 0.1, score == "logit")
    assert float(drop[1:].min()) > 0.01  # not a trivial drop
    kw = {"baseline": baseline, "score": score}
    parts = adcc_parts(model, x, maps, first_channel, ids, **kw)
    assert parts.targets.tolist() == [1, 0, 0]
    assert parts.coherency.tolist() == pytest.approx(coh.tolist(), abs=1e-6)
    assert parts.complexity.tolist() == pytest.approx(com.tolist(), abs=1e-6)
    assert parts.drop.tolist() == pytest.approx(drop.tolist(), abs=1e-6)
    want = 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop))
    got = adcc(model, x, maps, first_channel, ids, **kw)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6)


@pytest.mark.filterwarnings("ignore:the gradcam raw map")
def test_the_layer_reaches_the_registered_method(gapnet, images) -> None:
    ids = torch.tensor([0, 2, 4, 1])
    maps = camlens.explain(gapnet, images, "gradcam", "features.0", ids).maps
    seen = maps[:, None] * images
    again = camlens.explain(gapnet, seen, "gradcam", "features.0", ids).maps
    auto = camlens.explain(gapnet, seen, "gradcam", None, ids).maps
    want = (pearson(again, maps) + 1) / 2
    assert (want - (pearson(auto, maps) + 1) / 2).abs().max() > 1e-3  # the layer matters
    got = coherency(gapnet, images, maps, "gradcam", ids, "features.0")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    parts = adcc_parts(gapnet, images, maps, "gradcam", ids, "features.0")
    torch.testing.assert_close(parts.coherency, want, atol=1e-6, rtol=0)
    assert parts.targets.tolist() == ids.tolist()
    got = adcc(gapnet, images, maps, "gradcam", ids, "features.0")
    torch.testing.assert_close(got, parts.adcc, atol=1e-6, rtol=0)
    with_auto = adcc(gapnet, images, maps, "gradcam", ids)
    assert (got - with_auto).abs().max() > 1e-4


def test_adcc_runs_the_model_once_on_the_images_and_once_on_the_masked_images() -> None:
    x, maps = _data()
    model = SizedSumNet(scale=0.5)
    parts = adcc_parts(model, x, maps, first_channel, None, batch_size=64)
    assert model.sizes == [x.shape[0], x.shape[0]]  # first_channel itself runs no model
    assert parts.targets.tolist() == SumNet()(x).argmax(dim=1).tolist()  # the top classes
