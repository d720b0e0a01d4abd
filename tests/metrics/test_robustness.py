"""Max-sensitivity (Yeh et al., NeurIPS 2019): hand-computed values, draws, Quantus."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens.errors import InputError
from camlens.metrics import max_sensitivity
from tests.conftest import hook_count


class Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 2, device=x.device)


def channel_sum(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
    """A 'method' whose map is the sum of the image's channels."""
    return images.sum(dim=1)


def test_by_hand_with_given_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g)
    noise = torch.rand(5, 2, 3, 4, 4, generator=g) - 0.5
    maps = x.sum(dim=1)
    out = max_sensitivity(Zero(), x, maps, channel_sum, 0, noise=noise)
    # Phi(x + u) - Phi(x) = sum_c u_c: the largest Frobenius norm over the 5 samples
    want = noise.double().sum(dim=2).flatten(2).norm(dim=2).amax(dim=0)
    assert out.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    rel = max_sensitivity(Zero(), x, maps, channel_sum, 0, noise=noise, relative=True)
    norm = maps.double().flatten(1).norm(dim=1)
    assert rel.tolist() == pytest.approx((want / norm).tolist(), abs=1e-6)
    # chunks that cut across samples give the same maximum
    small = max_sensitivity(Zero(), x, maps, channel_sum, 0, noise=noise, batch_size=3)
    assert small.tolist() == pytest.approx(out.tolist(), abs=1e-6)


def test_draws_are_uniform_in_the_ball_and_seeded() -> None:
    seen: list[Tensor] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append(images.clone())
        return images.sum(dim=1)

    x = torch.zeros(2, 3, 8, 8)
    a = max_sensitivity(Zero(), x, x.sum(1), spy, 0, radius=0.3, samples=40, seed=1)
    u = torch.cat(seen)
    assert u.shape == (80, 3, 8, 8)
    assert float(u.abs().max()) <= 0.3 and float(u.abs().max()) > 0.299
    assert abs(float(u.mean())) < 0.005  # centred
    assert float(u.std()) == pytest.approx(0.3 / 3**0.5, rel=0.02)  # uniform, not Gaussian
    b = max_sensitivity(Zero(), x, x.sum(1), channel_sum, 0, radius=0.3, samples=40, seed=1)
    c = max_sensitivity(Zero(), x, x.sum(1), channel_sum, 0, radius=0.3, samples=40, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_constant_method_is_not_sensitive_and_zero_maps_are_defined() -> None:
    x = torch.rand(2, 1, 5, 5)
    zeros = torch.zeros(2, 5, 5)

    def constant(m, images, ids):
        return torch.zeros(images.shape[0], 5, 5)

    out = max_sensitivity(Zero(), x, zeros, constant, 0, samples=3, relative=True)
    assert out.tolist() == [0.0, 0.0]
    out = max_sensitivity(Zero(), x, zeros, channel_sum, 0, samples=3, relative=True)
    assert out.tolist() == [float("inf")] * 2


def test_agrees_with_quantus_on_the_same_noise(gapnet, images) -> None:
    quantus = pytest.importorskip("quantus")
    ex = camlens.Explainer(gapnet, "gradcam", "features.3")
    y = ex(images).targets
    maps = ex(images, y).maps
    samples = 4
    noise = torch.rand(samples, *images.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    noise *= 0.2
    drawn = iter(noise)

    def perturb(arr: np.ndarray, indices=None, **kw) -> np.ndarray:
        return arr + next(drawn).numpy().reshape(arr.shape)

    def explain_func(model, inputs, targets, **kw) -> np.ndarray:
        return ex(torch.as_tensor(inputs).float(), torch.as_tensor(targets)).maps[:, None].numpy()

    metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=perturb, disable_warnings=True)
    batch = {"x_batch": images.numpy(), "y_batch": y.numpy(), "a_batch": maps[:, None].numpy()}
    want = metric(model=gapnet, explain_func=explain_func, device="cpu", **batch)
    ours = max_sensitivity(gapnet, images, maps, "gradcam", y, "features.3", noise=noise,
                           relative=True)  # fmt: skip
    assert ours.tolist() == pytest.approx(list(want), abs=1e-5)
    assert min(want) > 0.01  # the noise does move the maps


def test_registered_method_leaves_the_model_as_it_came(gapnet, images) -> None:
    gapnet.train()
    maps = camlens.explain(gapnet, images, "gradcam", "features.3").maps
    out = max_sensitivity(gapnet, images, maps, "gradcam", layer="features.3", samples=3)
    assert out.shape == (4,) and bool((out > 0).all())
    assert gapnet.training and hook_count(gapnet) == 0


def test_bad_arguments(gapnet, images) -> None:
    maps = torch.rand(4, 16, 16)
    with pytest.raises(InputError, match="noise"):
        max_sensitivity(gapnet, images, maps, "gradcam", noise=torch.rand(4, 3, 16, 16))
    with pytest.raises(InputError, match="samples"):
        max_sensitivity(gapnet, images, maps, "gradcam", samples=0)
    with pytest.raises(camlens.MethodNotFoundError):
        max_sensitivity(gapnet, images, maps, "nosuchcam")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_models_device(gapnet, images) -> None:
    model, x = gapnet.cuda(), images.cuda()
    maps = camlens.explain(model, x, "gradcam", "features.3").maps
    out = max_sensitivity(model, x, maps, "gradcam", layer="features.3", samples=3)
    assert out.device.type == "cuda" and out.shape == (4,)


class Sized(Zero):
    """Zero logits; records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        return super().forward(x)


def test_the_defaults_radius_samples_seed_and_batch() -> None:
    seen: list[Tensor] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append(images.clone())
        return images.sum(dim=1)

    x = torch.zeros(2, 1, 6, 6)
    model = Sized()
    out = max_sensitivity(model, x, x[:, 0], spy, 0)
    assert [len(u) for u in seen] == [64, 36]  # 50 samples of 2 images, 64 at a time
    assert model.sizes == [2]
    u = torch.cat(seen)
    assert 0.199 < float(u.abs().max()) <= 0.2  # radius 0.2
    assert torch.equal(out, max_sensitivity(Zero(), x, x[:, 0], channel_sum, 0, seed=0))


def test_chunks_of_one_and_every_pass_keeps_to_batch_size() -> None:
    sizes: list[int] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        sizes.append(images.shape[0])
        return images.sum(dim=1)

    x = torch.rand(3, 1, 4, 4)
    model = Sized()
    max_sensitivity(model, x, x[:, 0], spy, 0, samples=2, batch_size=1)
    assert sizes == [1] * 6 and model.sizes == [1, 1, 1]
    sizes.clear()
    max_sensitivity(Zero(), x, x[:, 0], spy, 0, samples=2, batch_size=0)  # at least one
    assert sizes == [1] * 6


def test_each_noisy_copy_is_explained_for_its_images_class() -> None:
    seen: list[list[int]] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append(ids.tolist())
        return images.sum(dim=1)

    x = torch.rand(3, 1, 4, 4)
    max_sensitivity(Zero(), x, x[:, 0], spy, torch.tensor([1, 1, 0]), samples=2, batch_size=4)
    assert seen == [[1, 1, 0, 1], [1, 0]]  # sample-major: image 0, 1, 2 of sample 0, then 1


def test_one_sample_and_a_zero_radius() -> None:
    x = torch.rand(2, 3, 4, 4)
    noise = torch.rand(1, 2, 3, 4, 4) - 0.5
    one = max_sensitivity(Zero(), x, x.sum(1), channel_sum, 0, noise=noise)
    want = noise[0].double().sum(dim=1).flatten(1).norm(dim=1)
    assert one.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert max_sensitivity(Zero(), x, x.sum(1), channel_sum, 0, samples=1).shape == (2,)
    still = max_sensitivity(Zero(), x, x.sum(1), channel_sum, 0, radius=0.0, samples=3)
    assert still.tolist() == [0.0, 0.0]


def test_relative_to_maps_of_small_norm_and_small_changes_of_zero_maps() -> None:
    x = torch.zeros(2, 1, 3, 3)
    maps = torch.full((2, 3, 3), 0.1)  # norm 0.3, below 1
    noise = torch.zeros(2, 2, 1, 3, 3)
    noise[1, :, 0, 1, 1] = torch.tensor([0.06, 0.03])

    def shifted(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        return images[:, 0] + 0.1

    rel = max_sensitivity(Zero(), x, maps, shifted, 0, noise=noise, relative=True)
    assert rel.tolist() == pytest.approx([0.06 / 0.3, 0.03 / 0.3], abs=1e-6)
    zeros = torch.zeros(2, 3, 3)  # a change below 1 of a zero map is still infinitely large
    rel = max_sensitivity(Zero(), x, zeros, channel_sum, 0, noise=noise, relative=True)
    assert rel.tolist() == [float("inf")] * 2


def test_noise_keeps_the_images_dtype() -> None:
    seen: list[torch.dtype] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append(images.dtype)
        return images.sum(dim=1)

    x = torch.rand(2, 1, 4, 4)
    noise = torch.rand(3, 2, 1, 4, 4, dtype=torch.float64) * 0.1  # given in float64
    max_sensitivity(Zero(), x, x[:, 0], spy, 0, noise=noise)
    half = x.to(torch.bfloat16)
    max_sensitivity(Zero(), half, x[:, 0], spy, 0, samples=2)  # drawn
    assert seen == [torch.float32, torch.bfloat16]


def test_the_layer_and_the_class_reach_the_registered_method(gapnet, images) -> None:
    # zero noise reproduces the maps of the same layer and class exactly
    ids = torch.tensor([0, 2, 4, 3])
    maps = camlens.explain(gapnet, images, "gradcam", "features.0", ids).maps
    zero = torch.zeros(1, *images.shape)
    same = max_sensitivity(gapnet, images, maps, "gradcam", ids, "features.0", noise=zero)
    assert same.tolist() == [0.0] * 4
    top = max_sensitivity(gapnet, images, maps, "gradcam", None, "features.0", noise=zero)
    auto = max_sensitivity(gapnet, images, maps, "gradcam", ids, noise=zero)
    assert float(top.min()) > 0.1 and float(auto.min()) > 0.1


@pytest.mark.parametrize(
    ("noise", "msg"),
    [
        (torch.rand(4, 3, 16, 16), "noise must be (S, B, C, H, W): S perturbations of each "
         "image, got (4, 3, 16, 16)"),
        ([[0.1]], "noise must be (S, B, C, H, W): S perturbations of each image, got list"),
        (torch.rand(2, 3, 3, 16, 16), "noise of shape (2, 3, 3, 16, 16) does not fit the images "
         "(4, 3, 16, 16); pass (S, B, C, H, W) perturbations"),
    ],
)  # fmt: skip
def test_bad_noise_by_the_whole_message(gapnet, images, noise, msg: str) -> None:
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        max_sensitivity(gapnet, images, torch.rand(4, 16, 16), "gradcam", noise=noise)


@pytest.mark.parametrize(("samples", "radius"), [(0, 0.2), (5, -0.1), (5, float("nan"))])
def test_bad_samples_or_radius_by_the_whole_message(gapnet, images, samples, radius) -> None:
    msg = f"samples must be >= 1 and radius >= 0, got {samples} and {radius}"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        max_sensitivity(gapnet, images, torch.rand(4, 16, 16), "gradcam", samples=samples,
                        radius=radius)  # fmt: skip
