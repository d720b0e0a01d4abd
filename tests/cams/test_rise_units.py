"""RISE: the Monte-Carlo estimate against a float64 reference and against the masks the model
actually saw, non-square images, several targets, the paper's defaults, the mask-density edge
p = 1, the chunked accumulation, and every refusal by its message."""

from __future__ import annotations

import importlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.cams.occlusion import rise_masks
from camlens.errors import InputError
from camlens.maps import minmax
from tests.cams.test_occlusion import reference_rise
from tests.conftest import GapNet


def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(31)
    return GapNet(channels=5, classes=4, last_relu=False).double().eval()


@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize(("size", "cells"), [((10, 14), 3), ((9, 6), 4)])
def test_rise_matches_a_float64_reference_on_non_square_images(
    model64, size, cells: int, softmax: bool
) -> None:
    """Cells of 4 x 5 (10 x 14 in 3 cells) and 3 x 2 (9 x 6 in 4): the row and column cell
    sizes and shifts differ; two different images with two targets each."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    target = torch.tensor([[1, 3], [2, 0]])
    ex = camlens.explain(
        model64,
        x,
        "rise",
        target=target,
        n=30,
        cells=cells,
        p=0.4,
        seed=7,
        softmax=softmax,
        batch_size=16,
    )
    ref = reference_rise(model64, x, target, 30, cells, 0.4, 7, softmax)
    assert ex.raw["input"].shape == (2, 2, *size)
    assert torch.allclose(ex.raw["input"].double(), ref, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(ex.scores, model64(x).gather(1, target))
    relu = ex.raw["input"].clamp(min=0).flatten(0, 1)
    assert torch.allclose(ex.maps, minmax(relu).view(2, 2, *size), atol=1e-6)
    assert ex.extras == {} and ex.layers == ["input"] and torch.equal(ex.targets, target)


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def test_rise_is_the_monte_carlo_estimate_over_the_masks_the_model_saw() -> None:
    """Positive images: each copy the model scored is I_b * M_n, so M_n = copy / I_b. From the
    recorded copies alone: every mask is shared by the images and channels, lies in [0, 1],
    and the map is 1 / (N p) sum_n softmax(f(I_b * M_n))_t M_n."""
    torch.manual_seed(3)
    inner = GapNet(channels=4, classes=3).eval()
    model = _Recorder(inner)
    x = 1 + torch.rand(2, 3, 6, 10)
    target = torch.tensor([[2, 0], [1, 2]])
    n, p = 12, 0.5
    ex = camlens.explain(model, x, "rise", target=target, n=n, cells=3, p=p, seed=2, batch_size=5)
    copies = torch.cat(model.inputs)[-n * 2 :]  # after the clean pass(es): mask-major, 2 images
    masks = (copies / x.repeat(n, 1, 1, 1)).view(n, 2, 3, 6, 10)
    assert torch.allclose(masks, masks[:, :1, :1].expand_as(masks), atol=1e-6)
    masks = masks[:, 0, 0]  # (N, H, W)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6 and masks.std() > 0.1
    with torch.no_grad():
        probs = inner(copies).softmax(dim=1).view(n, 2, 3)
    picked = probs.gather(2, target[None].expand(n, 2, 2))  # (N, B, T)
    expected = torch.einsum("nbt,nhw->bthw", picked, masks) / (n * p)
    assert torch.allclose(ex.raw["input"], expected, atol=1e-5)


def test_rise_with_density_one_is_the_clean_score_everywhere() -> None:
    """p = 1: every grid cell is on, every mask is 1, and S = (1 / N) sum_n f(I) = f(I)."""
    torch.manual_seed(4)
    model = GapNet(channels=4, classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    ex = camlens.explain(model, x, "rise", target=[0, 2], n=7, cells=2, p=1.0)
    with torch.no_grad():
        prob = model(x).softmax(dim=1)[[0, 1], [0, 2]]
    assert torch.allclose(ex.raw["input"], prob[:, None, None].expand(2, 8, 8), atol=1e-6)


def test_rise_defaults_are_the_papers() -> None:
    """N = 4000 masks of 7 x 7 cells (one pass: a linear model on 7 x 7 images)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(49, 3)).eval()
    x = torch.randn(1, 1, 7, 7)
    options = {"target": 1, "batch_size": 4001}
    default = camlens.explain(model, x, "rise", **options)
    assert torch.equal(
        default.raw["input"],
        camlens.explain(model, x, "rise", n=4000, cells=7, **options).raw["input"],
    )
    for other in ({"n": 4001}, {"cells": 8}):
        changed = camlens.explain(model, x, "rise", **options, **other)
        assert not torch.allclose(changed.raw["input"], default.raw["input"])


class _Constant(nn.Module):
    """Logits (1, 3) whatever the input: RISE's map is then 3 / (N p) sum_n M_n."""

    def forward(self, x):
        return torch.tensor([[1.0, 3.0, 0.0]]).expand(x.shape[0], 3) + 0 * x.mean()


def test_the_masks_are_accumulated_in_chunks_of_about_64_mb(monkeypatch) -> None:
    """256 x 64 images: 2**24 / (256 * 64) = 1024 masks per chunk, so 1025 masks are summed in
    chunks of 1024 and 1; with p = 1 every mask is 1 and the map is the constant score."""
    sizes: list[int] = []

    def recording(grids, shifts, size, cell):
        sizes.append(int(grids.shape[0]))
        return rise_masks(grids, shifts, size, cell)

    module = importlib.import_module("camlens.cams.occlusion")  # the package shadows the name
    monkeypatch.setattr(module, "rise_masks", recording)
    x = torch.ones(1, 1, 256, 64)
    ex = camlens.explain(
        _Constant(), x, "rise", target=1, n=1025, cells=64, p=1.0, softmax=False, batch_size=2048
    )
    assert sizes == [1025, 1024, 1]  # the copies in one pass, then the two chunks
    assert torch.allclose(ex.raw["input"], torch.full((1, 256, 64), 3.0), atol=1e-5)


def test_the_generic_path_scores_several_targets_per_image(model64) -> None:
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    options = {"n": 9, "cells": 2, "seed": 1, "softmax": False}
    ids = camlens.explain(model64, x, "rise", target=[[0, 2], [0, 2]], **options)
    fn = camlens.explain(model64, x, "rise", target=lambda o: o[:, [0, 2]], batch_size=5, **options)
    assert fn.raw["input"].shape == (2, 2, 6, 10)
    assert torch.allclose(fn.raw["input"], ids.raw["input"], atol=1e-5)


def test_rise_masks_by_hand_on_a_non_square_crop() -> None:
    """A 2 x 2 grid with cells of 2 x 3 is upsampled to 6 x 9 and cropped to 3 x 5 at (1, 2)."""
    grid = torch.tensor([[[True, False], [False, True]]])
    up = F.interpolate(grid[:, None].float(), size=(6, 9), mode="bilinear", align_corners=False)
    got = rise_masks(grid, torch.tensor([[1, 2]]), (3, 5), (2, 3))
    assert got.shape == (1, 3, 5)
    assert torch.equal(got[0], up[0, 0, 1:4, 2:7])
    # and another shift of the same grid
    assert torch.equal(
        rise_masks(grid, torch.tensor([[0, 0]]), (3, 5), (2, 3))[0], up[0, 0, :3, :5]
    )


def test_rise_accepts_one_mask_of_one_cell(model64) -> None:
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    ex = camlens.explain(model64, x, "rise", target=[[1]], n=1, cells=1, p=0.5, seed=0)
    ref = reference_rise(model64, x, torch.tensor([[1]]), 1, 1, 0.5, 0, True)
    assert torch.allclose(ex.raw["input"].double(), ref, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "msg"),
    [
        ({"n": 0}, "rise needs positive ints n and cells, got n=0, cells=7"),
        ({"n": -3}, "rise needs positive ints n and cells, got n=-3, cells=7"),
        ({"n": 2.5}, "rise needs positive ints n and cells, got n=2.5, cells=7"),
        ({"cells": 0}, "rise needs positive ints n and cells, got n=4000, cells=0"),
        ({"cells": 2.5}, "rise needs positive ints n and cells, got n=4000, cells=2.5"),
        ({"n": 0, "cells": 3}, "rise needs positive ints n and cells, got n=0, cells=3"),
        ({"p": 0.0}, "rise needs a mask density p in (0, 1], got 0.0"),
        ({"p": -0.5}, "rise needs a mask density p in (0, 1], got -0.5"),
        ({"p": 1.5}, "rise needs a mask density p in (0, 1], got 1.5"),
    ],
)
def test_rise_refusals(model64, options, msg: str) -> None:
    with pytest.raises(InputError, match=_exact(msg)):
        camlens.explain(model64, torch.randn(1, 3, 6, 6, dtype=torch.float64), "rise", **options)
