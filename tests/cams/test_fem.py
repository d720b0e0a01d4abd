"""FEM and Random-CAM: hand-computed maps, the paper's form against pytorch-grad-cam's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from camlens.cams import fem, randomcam
from tests.conftest import GapNet, capture


def test_fem_by_hand() -> None:
    # channel 0: values 0,0,0,4 -> mu 1, sigma sqrt(3), threshold (k=1) 2.73: only the 4 is in
    # channel 1: values 1,1,1,1 -> sigma 0: nothing is strictly above the mean
    # channel 2: values 0,2,0,-2 -> mu 0, sigma sqrt(2), threshold 1.41: only the 2 is in
    acts = torch.tensor(
        [[[[0.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, -2.0]]]]
    )
    # paper: sum_k mu_k B^k = 1 * [[0,0],[0,1]] + 1 * 0 + 0 * [[0,1],[0,0]]
    assert torch.equal(fem(acts, k=1.0), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))
    # pytorch-grad-cam: sum_k mean(B^k) A^k = 1/4 * A^0 + 0 + 1/4 * A^2
    expected = (acts[0, 0] + acts[0, 2]) / 4
    assert torch.equal(fem(acts, k=1.0, weighting="fraction")[0], expected)
    # k = 2: channel 0's 4 is at mu + sqrt(3) < mu + 2 sigma: nothing passes
    assert torch.equal(fem(acts, k=2.0), torch.zeros(1, 2, 2))


def test_fem_uses_the_population_std_and_a_strict_threshold() -> None:
    # values 0, 0, 3: mu 1, population sigma sqrt(2) (sample sigma sqrt(3)); with k = 1 the
    # threshold is 2.414 (2.732 with the sample std): 3 passes either way, so use k = 1.4:
    # 1 + 1.4 sqrt(2) = 2.98 < 3 (passes), 1 + 1.4 sqrt(3) = 3.42 (would not)
    acts = torch.tensor([0.0, 0.0, 3.0]).view(1, 1, 1, 3)
    assert torch.equal(fem(acts, k=1.4), torch.tensor([[[0.0, 0.0, 1.0]]]))
    # strict: a value exactly at the threshold is out (k = 0: threshold = mean = 1)
    acts = torch.tensor([1.0, 1.0, 0.0, 2.0]).view(1, 1, 2, 2)
    assert torch.equal(fem(acts, k=0.0), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_fem_volumes_and_validation() -> None:
    acts = torch.rand(2, 3, 4, 5, 6)
    assert fem(acts).shape == (2, 4, 5, 6)
    with pytest.raises(ValueError, match="weighting"):
        fem(acts, weighting="mean")


def test_fem_fraction_agrees_with_pytorch_grad_cam_and_paper_differs() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(1)
    model = GapNet(channels=6, classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    acts = capture(model, model.features, x)
    theirs = pgc.FEM(model, [model.features]).get_cam_image(
        None, None, None, acts.double().numpy(), None, False
    )
    ours = fem(acts.double(), weighting="fraction")
    assert np.allclose(ours.numpy(), theirs, atol=1e-12)
    assert not torch.allclose(fem(acts.double()), ours)  # the paper's form is another map


def test_fem_through_explain_is_class_agnostic() -> None:
    torch.manual_seed(2)
    model = GapNet(channels=6, classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    acts = capture(model, model.features, x)
    ex = camlens.explain(model, x, "fem", layer="features", target=camlens.targets.top(2), k=1.5)
    assert ex.raw["features"].shape == (2, 2, 8, 8)
    expected = fem(acts, k=1.5)
    assert torch.allclose(ex.raw["features"][:, 0], expected)
    assert torch.allclose(ex.raw["features"][:, 1], expected)


def test_randomcam_weights_are_uniform_in_minus_one_one_from_the_seed() -> None:
    acts = torch.zeros(3, 4, 5, 5)
    for k in range(4):  # one-hot channels: the map at position k is w_k
        acts[:, k, 0, k] = 1.0
    raw = randomcam(acts, seed=7)
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(3, 4, generator=gen) * 2 - 1
    assert torch.equal(raw[:, 0, :4], w)
    assert torch.equal(randomcam(acts, seed=7), raw)
    assert not torch.equal(randomcam(acts, seed=8), raw)
    big = randomcam(torch.eye(64).view(1, 64, 8, 8).repeat(50, 1, 1, 1), seed=0)
    assert big.min() < -0.95 and big.max() > 0.95 and big.abs().max() <= 1.0
    assert abs(float(big.mean())) < 0.05  # centred on 0: both signs


def test_randomcam_through_explain_draws_from_the_explainer_seed() -> None:
    torch.manual_seed(3)
    model = GapNet(channels=6, classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    acts = capture(model, model.features, x)
    ex = camlens.explain(model, x, "randomcam", layer="features", seed=4)
    assert torch.allclose(ex.raw["features"], randomcam(acts, seed=4))
    assert not torch.allclose(
        camlens.explain(model, x, "randomcam", layer="features", seed=5).raw["features"],
        ex.raw["features"],
    )
