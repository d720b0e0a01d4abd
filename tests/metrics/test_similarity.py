"""Spearman and SSIM agree with scipy and scikit-image."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from camlens.errors import InputError
from camlens.metrics import spearman, ssim
from camlens.metrics.similarity import average_ranks


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), zeros=st.floats(0.0, 0.9))
def test_spearman_matches_scipy_with_ties(seed: int, zeros: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 9, 11, generator=gen)
    b = 0.5 * a + torch.rand(3, 9, 11, generator=gen)
    a = torch.where(a < zeros, 0.0, a)  # a ReLU'd map: many tied zeros
    b = torch.round(b * 4) / 4  # heavy ties
    ours = spearman(a, b)
    for i in range(3):
        ref = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        expected = 0.0 if np.isnan(ref) else ref
        assert ours[i].item() == pytest.approx(expected, abs=1e-5)


def test_average_ranks_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    x = torch.tensor([[3.0, 1.0, 3.0, 0.0, 3.0, 1.0]])
    assert average_ranks(x)[0].tolist() == stats.rankdata(x[0].numpy()).tolist()


def test_spearman_identities() -> None:
    a = torch.rand(2, 6, 6)
    torch.testing.assert_close(spearman(a, a), torch.ones(2))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(2))
    torch.testing.assert_close(spearman(a, a**3 + 5), torch.ones(2))  # monotone: rank-only
    assert spearman(a, torch.zeros(2, 6, 6)).tolist() == [0.0, 0.0]  # constant: undefined -> 0


@pytest.mark.parametrize("shape", [(2, 11, 11), (3, 24, 31), (1, 64, 48)])
def test_ssim_matches_scikit_image(shape) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(*shape, generator=gen)
    b = (a + 0.3 * torch.rand(*shape, generator=gen)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(shape[0]):
        ref = metrics.structural_similarity(
            a[i].numpy().astype(np.float64),
            b[i].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_of_a_map_with_itself_is_one_and_small_maps_are_refused() -> None:
    a = torch.rand(2, 20, 20)
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    assert ssim(a, 1 - a).mean() < 0.5
    with pytest.raises(InputError, match="at least 11 x 11"):
        ssim(torch.rand(1, 7, 7), torch.rand(1, 7, 7))
    with pytest.raises(InputError, match="one shape"):
        spearman(torch.rand(1, 7, 7), torch.rand(2, 7, 7))


def test_spearman_of_two_pixel_maps() -> None:
    # centred ranks (-1/2, 1/2): their norms multiply to 1/2, below 1, and still count
    a = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[3.0, 3.0]]])
    b = torch.tensor([[[0.0, 2.0]], [[2.0, 0.0]], [[1.0, 2.0]]])
    assert spearman(a, b).tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    ("data_range", "k1", "k2", "scale"), [(1.0, 0.01, 0.03, 0.02), (255.0, 0.01, 0.03, 5.0),
                                          (4.0, 0.05, 0.1, 1.0)]
)  # fmt: skip
def test_ssim_constants_match_scikit_image(data_range, k1, k2, scale) -> None:
    # dark, smooth maps: the constants C1 = (k1 L)^2 and C2 = (k2 L)^2 weigh in
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(2, 16, 18, generator=gen) * scale
    b = (a + 0.2 * scale * torch.rand(2, 16, 18, generator=gen)).clamp(0, scale)
    ours = ssim(a, b, data_range=data_range, k1=k1, k2=k2)
    for i in range(2):
        ref = metrics.structural_similarity(
            a[i].numpy().astype(np.float64),
            b[i].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
            K1=k1,
            K2=k2,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    # the constants matter here: ten times smaller ones give another value
    small = ssim(a, b, data_range=data_range, k1=k1 / 10, k2=k2 / 10)
    assert (ours - small).abs().max() > 1e-3


@pytest.mark.parametrize("shape", [(1, 7, 20), (1, 20, 7), (2, 10, 10)])
def test_small_maps_are_refused_by_the_whole_message(shape) -> None:
    msg = (
        f"SSIM needs maps of at least 11 x 11 pixels, got {shape[1:]}; "
        "compare the upsampled maps (Explanation.maps)"
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        ssim(torch.rand(*shape), torch.rand(*shape))
    msg = f"both map sets must be (B, H, W) of one shape, got {shape} and (3, 11, 11)"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        ssim(torch.rand(*shape), torch.rand(3, 11, 11))
    msg = "both map sets must be (B, H, W) of one shape, got (11, 11) and (11, 11)"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        spearman(torch.rand(11, 11), torch.rand(11, 11))
