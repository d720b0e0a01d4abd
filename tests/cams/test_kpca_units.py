"""KPCA-CAM's feature-space centring with kernels whose Gram matrix is far from centred, batches
of images on different scales, half-precision activations, Seg-Eigen-CAM's sign rule at a tie,
and Random-CAM's default seed."""

from __future__ import annotations

import pytest
import torch

from camlens.cams import kpcacam, randomcam, segeigencam
from camlens.cams.eigen import positive_peak
from tests.cams.test_kpca import reference_kpca


@pytest.fixture(scope="module")
def acts():
    """Two images of 6 channels on 4 x 5 positions; the second on a 4x larger scale, so that
    the two Gram matrices have very different means."""
    torch.manual_seed(12)
    a = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    a[1] *= 4
    return a


@pytest.mark.parametrize(
    ("kernel", "options"),
    [
        ("sigmoid", {"coef0": -2.0}),  # G ~ tanh(-2) < 0 everywhere: a large negative mean
        ("sigmoid", {"coef0": 2.0, "gamma": 0.3}),
        ("poly", {"coef0": -1.0, "degree": 3}),
        ("poly", {"coef0": 2.0, "degree": 2, "gamma": 0.5}),
    ],
)
def test_kpcacam_centres_gram_matrices_with_large_means(acts, kernel: str, options) -> None:
    """The centring removes the mean of the rows, of the columns and adds back the overall
    mean, per image: with Gram matrices far from centred, any other combination (or a mean
    over the batch) puts the constant vector on top or tilts the component."""
    got = kpcacam(acts, kernel=kernel, **options)
    ref = reference_kpca(acts, kernel, **options)
    assert torch.allclose(got, ref, atol=1e-8)
    one = torch.cat([kpcacam(a[None], kernel=kernel, **options) for a in acts])
    assert torch.allclose(got, one, atol=1e-10)  # each image on its own


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_are_decomposed_in_float32(dtype) -> None:
    torch.manual_seed(13)
    a = torch.randn(2, 5, 4, 4).to(dtype)
    g = torch.randn(2, 5, 4, 4).to(dtype)
    got = kpcacam(a)
    assert got.dtype == torch.float32 and torch.allclose(got, kpcacam(a.float()), atol=1e-5)
    # |g| * A is formed in the activations' dtype, then decomposed in float32
    got = segeigencam(a, g)
    ref = segeigencam((g.abs() * a).float(), torch.ones(2, 5, 4, 4))
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5)


def test_positive_peak_flips_only_when_the_negative_peak_is_larger() -> None:
    proj = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 1.0, 0.0], [2.0, -1.0, 0.0], [-3.0, -1.0, 0.0]])
    expected = torch.tensor(
        [[1.0, -1.0, 0.5], [2.0, -1.0, -0.0], [2.0, -1.0, 0.0], [3.0, 1.0, -0.0]]
    )
    assert torch.equal(positive_peak(proj), expected)  # a tie (|1| = |-1|) is kept as it is


def test_randomcam_default_seed_is_zero() -> None:
    a = torch.rand(2, 4, 3, 3)
    assert torch.equal(randomcam(a), randomcam(a, seed=0))
    assert not torch.equal(randomcam(a), randomcam(a, seed=1))
