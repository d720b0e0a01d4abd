"""Sanity checks: a method that ignores the model fails them, Grad-CAM passes them."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

from camlens.demo import load_model, shapes
from camlens.errors import LayerNotFoundError, MethodNotFoundError
from camlens.metrics import randomization_units, sanity_random_logit, sanity_randomization
from tests.conftest import hook_count


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, Tensor, Tensor]:
    images, labels, _ = shapes(12, seed=7)
    return load_model(), images, labels


def fixed_map(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
    """A 'method' that ignores the model: a diagonal ramp."""
    h, w = images.shape[-2:]
    ramp = torch.linspace(0, 1, h)[:, None] + torch.linspace(0, 1, w)[None, :]
    return (ramp / 2).expand(len(images), h, w)


def test_a_method_that_ignores_the_model_fails_both_checks(demo) -> None:
    model, images, labels = demo
    mprt = sanity_randomization(model, images, fixed_map, labels)
    assert not mprt.passed
    torch.testing.assert_close(mprt.spearman, torch.ones_like(mprt.spearman))
    torch.testing.assert_close(mprt.ssim, torch.ones_like(mprt.ssim))
    logit = sanity_random_logit(model, images, fixed_map, labels)
    assert not logit.passed and logit.steps == ["random logit"]


def test_gradcam_passes_both_checks_and_the_model_is_untouched(demo) -> None:
    model, images, labels = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mprt = sanity_randomization(model, images, "gradcam", labels, "features")
    assert mprt.passed, mprt.spearman.mean(dim=1)
    assert mprt.steps[0] == "fc" and mprt.steps[-1] == "features.0"  # top down
    assert mprt.spearman.shape == mprt.ssim.shape == (len(mprt.steps), len(images))
    assert sanity_random_logit(model, images, "gradcam", labels, "features").passed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and hook_count(model) == 0


def test_eigencam_is_class_agnostic_so_it_fails_the_random_logit_check(demo) -> None:
    model, images, labels = demo
    check = sanity_random_logit(model, images, "eigencam", labels, "features")
    assert not check.passed
    assert check.final_spearman == pytest.approx(1.0, abs=1e-5)


def test_randomisation_changes_only_the_listed_modules_of_a_copy(demo) -> None:
    model, images, labels = demo
    seen: list[dict[str, Tensor]] = []

    def spy(m: nn.Module, x: Tensor, ids: Tensor) -> Tensor:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return fixed_map(m, x, ids)

    state = torch.random.get_rng_state()
    sanity_randomization(model, images[:2], spy, labels[:2], layers=["fc"])
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    original, randomised = seen
    assert not torch.equal(original["fc.weight"], randomised["fc.weight"])
    same = [k for k in original if not k.startswith("fc.")]
    assert all(torch.equal(original[k], randomised[k]) for k in same)


def test_default_units_have_one_granularity() -> None:
    assert randomization_units(load_model()) == [
        "features.0",
        "features.1",
        "features.3",
        "features.4",
        "features.6",
        "features.7",
        "fc",
    ]
    units = randomization_units(torchvision.models.resnet18(weights=None))
    assert units[:2] == ["conv1", "bn1"] and units[-1] == "fc"
    assert "layer4.1" in units and len(units) == 11


def test_bad_names_get_clear_errors(demo) -> None:
    model, images, labels = demo
    with pytest.raises(LayerNotFoundError, match="features"):
        sanity_randomization(model, images[:1], fixed_map, labels[:1], layers=["head"])
    with pytest.raises(MethodNotFoundError):
        sanity_randomization(model, images[:1], "gradcan", labels[:1])
