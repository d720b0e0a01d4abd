"""Complexity (entropy) and sparseness (Gini index): hand-computed values and Quantus."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from camlens.errors import InputError
from camlens.metrics import complexity, sparseness


def test_entropy_by_hand() -> None:
    # fractions 1/2, 1/4, 1/4, 0: H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    maps = torch.tensor([[[2.0, 1.0], [1.0, 0.0]]])
    assert complexity(maps).tolist() == pytest.approx([1.5 * math.log(2)], abs=1e-7)


def test_entropy_uses_magnitudes_and_is_scale_free() -> None:
    maps = torch.tensor([[[2.0, -1.0], [1.0, 0.0]], [[20.0, 10.0], [-10.0, 0.0]]])
    assert complexity(maps).tolist() == pytest.approx([1.5 * math.log(2)] * 2, abs=1e-7)


def test_entropy_extremes() -> None:
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 3.0
    uniform = torch.full((1, 4, 4), 0.3)
    zero = torch.zeros(1, 4, 4)
    out = complexity(torch.cat([one_hot, uniform, zero]))
    assert out.tolist() == pytest.approx([0.0, math.log(16), math.log(16)], abs=1e-6)


def test_gini_by_hand() -> None:
    # sorted 0, 1, 1, 2 (N=4, sum 4): (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4) = 6/16
    maps = torch.tensor([[[2.0, 1.0], [1.0, 0.0]]])
    assert sparseness(maps).tolist() == pytest.approx([0.375], abs=1e-7)
    # Hurley & Rickard's own form: 1 - 2 sum (a_k / |a|_1) (N - k + 1/2) / N
    a = [0.0, 1.0, 1.0, 2.0]
    hr = 1 - 2 * sum(v / 4 * (4 - k + 0.5) / 4 for k, v in enumerate(a, start=1))
    assert hr == pytest.approx(0.375)


def test_gini_extremes_signs_and_order() -> None:
    one_hot = torch.zeros(1, 5, 5)
    one_hot[0, 4, 0] = -2.0  # the magnitude counts
    flat = torch.full((1, 5, 5), 0.7)
    zero = torch.zeros(1, 5, 5)
    out = sparseness(torch.cat([one_hot, flat, zero]))
    assert out.tolist() == pytest.approx([1 - 1 / 25, 0.0, 0.0], abs=1e-6)
    # the pixels' order does not matter, only their values
    x = torch.rand(1, 6, 6)
    perm = x.flatten(1)[:, torch.randperm(36)].view(1, 6, 6)
    assert sparseness(perm).item() == pytest.approx(sparseness(x).item(), abs=1e-6)


def test_any_spatial_rank_and_one_value_per_image() -> None:
    maps = torch.rand(3, 2, 5, 7)  # volumes
    assert complexity(maps).shape == sparseness(maps).shape == (3,)
    assert complexity(maps).dtype == torch.float32


@pytest.mark.parametrize("fn", [complexity, sparseness])
def test_bad_maps(fn) -> None:
    with pytest.raises(InputError, match="maps"):
        fn(torch.rand(7))
    with pytest.raises(InputError, match="NaN"):
        fn(torch.tensor([[[float("nan"), 1.0]]]))


def test_agrees_with_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    maps = torch.rand(4, 12, 12) ** 3  # peaked, non-negative, like CAMs
    maps[1] = torch.randn(12, 12)  # signed
    maps[2, :6] = 0.0  # zeros
    a = maps.numpy()[:, None].astype(np.float64)
    x = np.zeros((4, 3, 12, 12), dtype=np.float32)
    y = np.zeros(4, dtype=int)
    kw = {"model": None, "x_batch": x, "y_batch": y}
    q_c = quantus.Complexity(disable_warnings=True)(a_batch=a.copy(), **kw)
    q_s = quantus.Sparseness(disable_warnings=True)(a_batch=a.copy(), **kw)
    assert complexity(maps).tolist() == pytest.approx(list(q_c), abs=1e-5)
    assert sparseness(maps).tolist() == pytest.approx(list(q_s), abs=1e-5)


def test_maps_of_small_total_mass_are_not_taken_for_zero_maps() -> None:
    # the same maps as in the hand-computed tests, with a total mass below 1: scale-free
    maps = torch.tensor([[[2.0, 1.0], [1.0, 0.0]]]) / 100
    assert complexity(maps).tolist() == pytest.approx([1.5 * math.log(2)], abs=1e-7)
    assert sparseness(maps).tolist() == pytest.approx([0.375], abs=1e-7)
    one_hot = torch.zeros(1, 3, 3)
    one_hot[0, 2, 1] = 1.0  # a total of exactly 1
    assert complexity(one_hot).tolist() == [0.0]
    assert sparseness(one_hot).tolist() == pytest.approx([1 - 1 / 9], abs=1e-7)


def test_one_dimensional_and_one_pixel_maps() -> None:
    # (B, N): one spatial axis; (B, 1, 1): a single pixel, all its mass in one place
    row = torch.tensor([[2.0, 1.0, 1.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    assert complexity(row).tolist() == pytest.approx([1.5 * math.log(2), 0.0], abs=1e-7)
    assert sparseness(row).tolist() == pytest.approx([0.375, 0.75], abs=1e-7)
    pixel = torch.tensor([[[3.0]], [[0.0]]])
    assert complexity(pixel).tolist() == [0.0, 0.0]
    assert sparseness(pixel).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("fn", [complexity, sparseness])
@pytest.mark.parametrize(
    ("maps", "got"),
    [
        (torch.rand(7), "(7,)"),
        (torch.zeros(0, 4, 4), "(0, 4, 4)"),
        (torch.zeros(2, 0, 3), "(2, 0, 3)"),
        ([[0.5, 1.0]], "list"),
    ],
)
def test_bad_maps_by_their_whole_message(fn, maps, got: str) -> None:
    name = fn.__name__
    msg = (
        f"{name} takes maps (B, H, W) (or (B, *spatial)) with at least one image, got {got}; "
        "pass Explanation.maps or a raw map"
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        fn(maps)
    msg = f"{name}: maps contain NaN or infinite values"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        fn(torch.tensor([[[1.0, float("inf")]]]))
