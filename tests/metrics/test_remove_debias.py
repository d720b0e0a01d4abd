"""ROAD: the imputation solves the paper's system; the metric removes the right pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from camlens.errors import InputError
from camlens.metrics import noisy_linear_impute, road
from tests.conftest import GapNet


def _reference(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The paper's system, written out pixel by pixel and solved by a sparse LU (scipy)."""
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    c, h, w = img.shape
    missing = np.flatnonzero(~keep.reshape(-1))
    where = {int(p): i for i, p in enumerate(missing)}
    a = sparse.lil_matrix((len(missing), len(missing)))
    b = np.zeros((len(missing), c))
    flat = img.reshape(c, -1)
    for i, p in enumerate(missing):
        y, x = divmod(int(p), w)
        total = 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                    continue
                weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                total += weight
                q = yy * w + xx
                if keep.reshape(-1)[q]:
                    b[i] += weight * flat[:, q]
                else:
                    a[i, where[q]] = -weight
        a[i, i] = total
    out = flat.copy()
    out[:, missing] = linalg.spsolve(a.tocsc(), b).reshape(len(missing), c).T
    return out.reshape(c, h, w)


def test_imputation_solves_the_papers_system() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 20, 24, generator=gen, dtype=torch.float64)
    keep = torch.rand(2, 20, 24, generator=gen) > 0.6
    keep[1, 3:15, 4:20] = False  # one large hole
    out = noisy_linear_impute(images, keep, noise=0.0, tol=1e-12)
    out32 = noisy_linear_impute(images.float(), keep, noise=0.0)
    for i in range(2):
        ref = _reference(images[i].numpy(), keep[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-8)
        np.testing.assert_allclose(out32[i].numpy(), ref, atol=1e-4)
    assert torch.equal(out[keep[:, None].expand_as(out)], images[keep[:, None].expand_as(images)])


@settings(max_examples=30, deadline=None)
@given(
    value=st.floats(-3, 3),
    seed=st.integers(0, 1000),
    size=st.sampled_from([(5, 7), (17, 16), (33, 40)]),
)
def test_imputation_fills_a_constant_image_with_that_constant(value, seed, size) -> None:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(2, *size, generator=gen) > torch.rand(1, generator=gen)
    keep[:, 0, 0] = True  # at least one pixel is known
    images = torch.full((2, 3, *size), value)
    torch.testing.assert_close(
        noisy_linear_impute(images, keep, noise=0.0), images, atol=1e-5, rtol=1e-5
    )


def test_a_hole_inside_a_linear_ramp_is_filled_by_the_ramp() -> None:
    axes = torch.arange(30, dtype=torch.float64), torch.arange(40, dtype=torch.float64)
    yy, xx = torch.meshgrid(*axes, indexing="ij")
    ramp = (0.02 * yy - 0.01 * xx + 0.3)[None, None].double()
    keep = torch.ones(1, 30, 40, dtype=torch.bool)
    keep[0, 5:25, 6:33] = False
    out = noisy_linear_impute(ramp, keep, noise=0.0, tol=1e-12)
    torch.testing.assert_close(out, ramp, atol=1e-9, rtol=0)


def test_noise_touches_only_the_imputed_pixels_with_the_given_std() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 32, 32, generator=gen)
    keep = torch.rand(4, 32, 32, generator=gen) > 0.5
    clean = noisy_linear_impute(images, keep, noise=0.0)
    noisy = noisy_linear_impute(images, keep, noise=0.05, generator=gen)
    diff = noisy - clean
    kept = keep[:, None].expand_as(diff)
    assert bool((diff[kept] == 0).all())
    assert diff[~kept].std().item() == pytest.approx(0.05, rel=0.05)


def test_everything_removed_gives_zeros_not_nan() -> None:
    out = noisy_linear_impute(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool), 0.0)
    assert torch.equal(out, torch.zeros(1, 3, 8, 8))


class SumNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_road_removes_the_most_and_the_least_relevant_pixels() -> None:
    """An image that is 1 on a 4 x 4 square and 0 elsewhere, a map equal to it: removing the
    top 6.25% (16 px) removes the square, which is imputed from its zero border (score 0);
    removing the bottom 6.25% leaves the square (score >= 16)."""
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 6:10, 6:10] = 1.0
    out = road(SumNet(), image, image[:, 0], 0, percentages=[6.25], noise=0.0, score="logit")
    assert out.morf.shape == out.lerf.shape == (1, 1)
    assert out.morf.item() == pytest.approx(0.0, abs=1e-4)
    assert out.lerf.item() >= 16.0 - 1e-4
    assert out.combined.item() == pytest.approx((out.lerf.item() - out.morf.item()) / 2)


def test_road_batches_are_invisible_and_the_constant_image_keeps_its_score() -> None:
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.randn(3, 3, 16, 16)
    maps = torch.rand(3, 16, 16)
    a = road(model, images, maps, 1, percentages=(20, 70), noise=0.0, batch_size=1)
    b = road(model, images, maps, 1, percentages=(20, 70), noise=0.0, batch_size=64)
    torch.testing.assert_close(a.morf, b.morf)
    torch.testing.assert_close(a.lerf, b.lerf)
    flat = torch.full((2, 3, 16, 16), 0.7)
    out = road(model, flat, maps[:2], 1, noise=0.0)
    with torch.no_grad():
        full = model(flat).softmax(1)[:, 1]
    torch.testing.assert_close(out.morf, full[:, None].expand(2, 9), atol=1e-5, rtol=0)
    assert out.percentages.tolist() == [10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_road_rejects_bad_percentages_and_shapes() -> None:
    images, maps = torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8)
    with pytest.raises(InputError, match=r"\[0, 100\]"):
        road(SumNet(), images, maps, 0, percentages=[120])
    with pytest.raises(InputError, match="keep"):
        noisy_linear_impute(images, torch.ones(8, 8, dtype=torch.bool))
