"""Occlusion and RISE: Captum's Occlusion, a float64 RISE reference, any target, any model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.cams.occlusion import rise_masks, window_indicators
from camlens.errors import InputError
from tests.conftest import GapNet, hook_count


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(11)
    model = GapNet(channels=5, classes=4).eval()
    x = torch.randn(2, 3, 12, 12)
    return model, x


@pytest.mark.parametrize(("window", "stride", "baseline"), [(4, 2, 0.0), (4, 3, 0.5), (5, 5, -1.0)])
def test_occlusion_equals_captum(setup, window: int, stride: int, baseline: float) -> None:
    attr = pytest.importorskip("captum.attr")
    model, x = setup
    target = torch.tensor([1, 3])
    theirs = attr.Occlusion(model).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline,
        target=target,
        perturbations_per_eval=7,
    )
    ex = camlens.explain(
        model,
        x,
        "occlusion",
        target=target,
        window=window,
        stride=stride,
        baseline=baseline,
        batch_size=5,
    )
    assert ex.raw["input"].shape == (2, 12, 12)
    assert torch.allclose(ex.raw["input"], theirs[:, 0], atol=1e-5)
    assert torch.allclose(theirs[:, 0], theirs[:, 2])  # the window covers every channel
    assert ex.layers == ["input"] and torch.equal(ex.targets, target)


def test_occlusion_by_hand_on_a_linear_model() -> None:
    # score = sum_ij w_ij x_ij: a window's drop is sum over it of w (x - b); one row, width 4
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w[None])
    x = torch.ones(1, 1, 1, 4)
    ex = camlens.explain(model, x, "occlusion", target=0, window=(1, 2), stride=1)
    # windows [0,1], [1,2], [2,3]: drops 3, 5, 7; pixel means 3, (3+5)/2, (5+7)/2, 7
    assert torch.allclose(ex.raw["input"][0, 0], torch.tensor([3.0, 4.0, 6.0, 7.0]))


def test_window_positions_cover_every_pixel_and_clip_at_the_border() -> None:
    rows = window_indicators(11, 4, 3, torch.device("cpu"))  # starts 0, 3, 6, 9 (cut)
    assert rows.shape == (4, 11)
    assert rows.sum(dim=1).tolist() == [4, 4, 4, 2]
    assert bool((rows.sum(dim=0) > 0).all())


def test_occlusion_several_targets_and_any_target(setup) -> None:
    model, x = setup
    one = camlens.explain(model, x, "occlusion", target=2, window=4, stride=4)
    top = camlens.explain(model, x, "occlusion", target=camlens.targets.top(2), window=4, stride=4)
    assert top.raw["input"].shape == (2, 2, 12, 12) and top.maps.shape == (2, 2, 12, 12)
    for t in range(2):
        col = camlens.explain(model, x, "occlusion", target=top.targets[:, t], window=4, stride=4)
        assert torch.allclose(top.raw["input"][:, t], col.raw["input"], atol=1e-6)
    # a callable target goes through the generic path: same maps as the class ids
    fn = camlens.explain(
        model,
        x,
        "occlusion",
        target=lambda out: out[:, 2],
        window=4,
        stride=4,
        batch_size=6,
    )
    assert torch.allclose(fn.raw["input"], one.raw["input"], atol=1e-5)


def test_occlusion_on_a_model_without_any_spatial_layer_leaves_it_as_it_came() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).train()
    model[1].weight.requires_grad_(False)
    ex = camlens.explain(model, torch.randn(2, 3, 4, 4), "occlusion", window=2, stride=2)
    assert ex.maps.shape == (2, 4, 4)
    assert model.training and not model[1].weight.requires_grad and hook_count(model) == 0


def test_occlusion_errors(setup) -> None:
    model, x = setup
    with pytest.raises(InputError, match="stride"):
        camlens.explain(model, x, "occlusion", window=2, stride=3)
    with pytest.raises(InputError, match="larger than the images"):
        camlens.explain(model, x, "occlusion", window=13)
    with pytest.raises(InputError, match="baseline"):
        camlens.explain(model, x, "occlusion", window=4, stride=2, baseline=torch.zeros(4, 1, 1))


def reference_rise(model, x, target, n, cells, p, seed, softmax):
    """RISE in float64, one mask at a time: the documented draws in order (grids, row shifts,
    column shifts), bilinear upsampling to (cells + 1) cells, the crop at the shift, and
    S = 1 / (N p) sum_n f(I * M_n) M_n for every image and target. target: (B, T); ``model``
    in float64."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, cells, cells, generator=gen) < p).double()
    dy = torch.randint(0, ch, (n,), generator=gen)
    dx = torch.randint(0, cw, (n,), generator=gen)
    up = F.interpolate(grids[:, None], size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear")
    sal = torch.zeros(*target.shape, h, w, dtype=torch.float64)
    rows = torch.arange(x.shape[0])[:, None]
    for i in range(n):
        mask = up[i, 0, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        with torch.no_grad():
            out = model(x.double() * mask)
        out = out.softmax(dim=1) if softmax else out
        sal += out[rows, target][:, :, None, None] * mask
    return sal / (n * p)


def test_rise_matches_a_float64_reference(setup) -> None:
    model, x = setup
    target = torch.tensor([0, 2])
    ex = camlens.explain(
        model, x, "rise", target=target, n=60, cells=3, p=0.3, seed=5, batch_size=16
    )
    try:
        ref = reference_rise(model.double(), x, target[:, None], 60, 3, 0.3, 5, True)[:, 0]
    finally:
        model.float()
    assert torch.allclose(ex.raw["input"].double(), ref, atol=1e-5)
    # a different seed draws other masks
    other = camlens.explain(model, x, "rise", target=target, n=60, cells=3, p=0.3, seed=6)
    assert not torch.allclose(other.raw["input"], ex.raw["input"])


def test_rise_masks_are_smooth_shifted_grids() -> None:
    gen = torch.Generator().manual_seed(0)
    grids = torch.rand(400, 4, 4, generator=gen) < 0.25
    shifts = torch.randint(0, 6, (400, 2), generator=gen)
    masks = rise_masks(grids, shifts, (24, 24), (6, 6))
    assert masks.shape == (400, 24, 24)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(float(masks.mean()) - 0.25) < 0.03  # density p
    # zero shift: the centre of cell (0, 0) of the upsampled grid is pixel (2.5, 2.5)..(3, 3)
    one = rise_masks(
        torch.eye(4, dtype=torch.bool)[None], torch.zeros(1, 2, dtype=torch.long), (24, 24), (6, 6)
    )
    assert one[0, 3, 3] == 1.0 and one[0, 3, 9] < 0.5  # (0,0) on, (0,1) off


def test_rise_scores_and_several_targets(setup) -> None:
    model, x = setup
    multi = camlens.explain(model, x, "rise", target=[[1, 2], [3, 0]], n=40, cells=3)
    assert multi.raw["input"].shape == (2, 2, 12, 12)
    single = camlens.explain(model, x, "rise", target=[2, 0], n=40, cells=3)
    assert torch.allclose(multi.raw["input"][:, 1], single.raw["input"], atol=1e-6)
    logits = camlens.explain(model, x, "rise", target=2, n=40, cells=3, softmax=False, batch_size=9)
    fn = camlens.explain(model, x, "rise", target=lambda o: o[:, 2], n=40, cells=3, batch_size=9)
    assert torch.allclose(fn.raw["input"], logits.raw["input"], atol=1e-5)
    with pytest.raises(InputError, match="density"):
        camlens.explain(model, x, "rise", p=0.0)
    with pytest.raises(InputError, match="images"):
        camlens.explain(model, torch.randn(1, 3, 2, 8, 8), "rise")


def test_occlusion_of_a_segmentation_target_keeps_the_clean_mask() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    target = camlens.targets.segmentation(1)
    ex = camlens.explain(model, x, "occlusion", target=target, window=4, stride=4, batch_size=4)
    with torch.no_grad():
        out = model(x)
        mask = (out.argmax(dim=1) == 1).float()  # decided on the clean images, then kept
        score = (out[:, 1] * mask).sum(dim=(1, 2))
        ref = torch.zeros(2, 8, 8)
        for i in range(0, 8, 4):
            for j in range(0, 8, 4):
                occluded = x.clone()
                occluded[:, :, i : i + 4, j : j + 4] = 0
                drop = score - (model(occluded)[:, 1] * mask).sum(dim=(1, 2))
                ref[:, i : i + 4, j : j + 4] = drop[:, None, None]
    assert torch.allclose(ex.raw["input"], ref, atol=1e-5)
    assert torch.allclose(ex.scores, score, atol=1e-5)
