"""ROAD: the imputation solves the paper's system; the metric removes the right pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


def _ramp(size: int, amplitude: float = 1.0) -> tuple[Tensor, Tensor]:
    axes = torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64)
    yy, xx = torch.meshgrid(*axes, indexing="ij")
    ramp = amplitude * (0.02 * yy - 0.01 * xx + 0.3)[None, None]
    keep = torch.ones(1, size, size, dtype=torch.bool)
    keep[0, 4 : size - 4, 5 : size - 3] = False  # a hole of most of the image
    return ramp, keep


def test_the_multigrid_conjugate_gradients_converge_in_twenty_iterations() -> None:
    # 64 x 64 with a 56 x 56 hole: 20 iterations reach 2e-11 (a worse preconditioner or a
    # broken conjugate-gradient step needs far more)
    ramp, keep = _ramp(64)
    out = noisy_linear_impute(ramp, keep, noise=0.0, tol=0.0, max_iter=20)
    torch.testing.assert_close(out, ramp, atol=1e-9, rtol=0)


def test_holes_on_the_border_in_float64() -> None:
    # border pixels have fewer neighbours (weights 2/3, 5/12): solved in float64 throughout
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 2, 40, 40, generator=gen, dtype=torch.float64)
    keep = torch.ones(1, 40, 40, dtype=torch.bool)
    keep[0, :25, 12:] = False
    keep[0, 32:, :8] = False
    out = noisy_linear_impute(images, keep, noise=0.0, tol=0.0, max_iter=40)
    ref = _reference(images[0].numpy(), keep[0].numpy())
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-11, rtol=0)


def test_the_tolerance_is_relative_to_the_images_scale() -> None:
    ramp, keep = _ramp(24, amplitude=1e-6)  # a faint image: its residuals are all below 1e-4
    out = noisy_linear_impute(ramp, keep, noise=0.0)
    assert float((out - ramp).abs().max()) < 1e-3 * 1e-6


def test_no_iteration_fills_the_kept_pixels_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 8, 8, generator=gen)
    keep = torch.rand(2, 8, 8, generator=gen) > 0.5
    out = noisy_linear_impute(images, keep, noise=0.0, max_iter=0)
    k = keep[:, None].expand_as(images)
    mean = (images * k).sum(dim=(2, 3), keepdim=True) / k.sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out, torch.where(k, images, mean.expand_as(images)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_noise_is_std_times_the_generators_normal_draws(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 8, 8, generator=gen, dtype=dtype)
    keep = torch.rand(2, 8, 8, generator=gen) > 0.5
    clean = noisy_linear_impute(images, keep, noise=0.0)
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    removed = ~keep[:, None]
    for std in (0.05, None):  # None: the default, 0.01
        kw = {} if std is None else {"noise": std}
        noisy = noisy_linear_impute(images, keep, generator=torch.Generator().manual_seed(5), **kw)
        want = clean + (0.01 if std is None else std) * removed * eps
        assert noisy.dtype == dtype
        torch.testing.assert_close(noisy, want, atol=1e-6, rtol=0)


def test_half_precision_images_come_back_in_half_precision() -> None:
    images = torch.rand(1, 3, 8, 8).to(torch.bfloat16)
    keep = torch.rand(1, 8, 8) > 0.5
    out = noisy_linear_impute(images, keep, noise=0.0)
    assert out.dtype == torch.bfloat16
    want = noisy_linear_impute(images.float(), keep, noise=0.0)
    torch.testing.assert_close(out.float(), want, atol=1e-2, rtol=1e-2)


class PixelNet(nn.Module):
    """Logits (x at pixel (6, 3) of channel 0, 0); records the batch size of every pass."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        v = x[:, 0, 6, 3]
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def _one_pixel(rank: int = 59) -> tuple[Tensor, Tensor]:
    """10 x 10 (n = 100) zeros with a 1 at (6, 3), given ``rank`` (0 = first) by the map."""
    image = torch.zeros(1, 1, 10, 10)
    image[0, 0, 6, 3] = 1.0
    order = torch.arange(100.0).flip(0)  # pixel i ranked i-th: values 99, 98, ...
    order[[rank, 63]] = order[[63, rank]]  # (6, 3) is pixel 63
    return image, order.view(1, 10, 10)


def test_road_removes_round_p_n_pixels_at_the_boundaries() -> None:
    """The pixel (rank 59) is removed by MoRF once k = 60 pixels go, by LeRF once
    59 >= 100 - k, i.e. k >= 41; removed, it is imputed from zeros (score 0), else kept (1)."""
    image, maps = _one_pixel()
    pct = [0, 40, 41, 59, 60, 100]
    out = road(PixelNet(), image, maps, 0, percentages=pct, noise=0.0, score="logit")
    assert out.morf[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert out.lerf[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert out.percentages.tolist() == pct and out.targets.tolist() == [0]


def test_road_counts_are_rounded_in_double_precision() -> None:
    # 29.5 % of 100 pixels: round(29.5) = 30 (float32 arithmetic would give 29.5 -> 29)
    assert round(29.5 / 100 * 100) == 30
    image, maps = _one_pixel(rank=29)
    out = road(PixelNet(), image, maps, 0, percentages=[29.5], noise=0.0, score="logit")
    assert out.morf[0].tolist() == [0.0]


def test_road_scores_the_given_class() -> None:
    image, maps = _one_pixel()
    out = road(PixelNet(), image, maps, 1, percentages=[59, 60], noise=0.0)
    # class 1's probability: 1 - sigmoid(1) with the pixel kept, 1/2 with it imputed as 0
    keep = 1 - torch.sigmoid(torch.tensor(1.0)).item()
    assert out.morf[0].tolist() == pytest.approx([keep, 0.5], abs=1e-6)
    assert out.targets.tolist() == [1]


def test_road_default_batch_and_every_pass_keeps_to_batch_size() -> None:
    images, maps = torch.rand(4, 1, 6, 6), torch.rand(4, 6, 6)
    model = PixelNet()
    model.forward = lambda x, f=model.forward: f(F.pad(x, (0, 4, 0, 4)))  # 10 x 10 for the pixel
    road(model, images, maps, 0, noise=0.0)
    assert model.sizes == [4, 64, 8]  # the classes, then 4 images x 2 x 9 percentages
    model.sizes.clear()
    road(model, images, maps, 0, percentages=[50], noise=0.0, batch_size=3)
    assert model.sizes == [3, 1, 3, 3, 2]


def test_road_noise_is_seeded_and_on_by_default() -> None:
    torch.manual_seed(0)
    images, maps = torch.rand(2, 1, 10, 10), torch.rand(2, 10, 10)
    kw = {"percentages": [30, 70], "score": "logit"}
    default = road(PixelNet(), images, maps, 0, **kw)
    torch.manual_seed(1)  # the global generator plays no part
    again = road(PixelNet(), images, maps, 0, noise=0.01, seed=0, **kw)
    torch.testing.assert_close(default.morf, again.morf, atol=0, rtol=0)
    torch.testing.assert_close(default.lerf, again.lerf, atol=0, rtol=0)
    clean = road(PixelNet(), images, maps, 0, noise=0.0, **kw)
    other = road(PixelNet(), images, maps, 0, seed=1, **kw)
    for out in (clean, other):
        diff = torch.cat([(out.morf - default.morf), (out.lerf - default.lerf)]).abs()
        assert 1e-4 < float(diff.max()) < 0.1  # noise of std 0.01 on the imputed pixel


def test_road_progress_bar_only_when_asked(capsys) -> None:
    images, maps = torch.rand(1, 1, 10, 10), torch.rand(1, 10, 10)
    road(PixelNet(), images, maps, 0, percentages=[50], noise=0.0)
    assert capsys.readouterr().err == ""
    road(PixelNet(), images, maps, 0, percentages=[50], noise=0.0, progress=True)
    assert "ROAD: " in capsys.readouterr().err


@pytest.mark.parametrize("pct", [[120], [100.5], [-1], [], [[10, 20]]])
def test_road_bad_percentages_by_the_whole_message(pct) -> None:
    images, maps = torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8)
    msg = f"percentages must be numbers in [0, 100], got {pct}"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        road(SumNet(), images, maps, 0, percentages=pct)


def test_one_kept_pixel_fills_the_image_with_its_value_exactly() -> None:
    # its value is the kept pixels' mean: the deviation to solve for is 0, so no solver error
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    keep = torch.zeros(2, 32, 32, dtype=torch.bool)
    keep[0, 5, 7] = keep[1, 31, 0] = True
    out = noisy_linear_impute(images, keep, noise=0.0)
    value = torch.stack([images[0, :, 5, 7], images[1, :, 31, 0]])[:, :, None, None]
    torch.testing.assert_close(out, value.expand_as(images), atol=1e-6, rtol=0)
